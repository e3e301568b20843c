"""Report stage: everything evaluated about a run -> `report.md`, a self-contained `report.html` and two plots.

Takes (paths in a dict, see `build_report`): `scores.json` per evaluated model (held-out benchmark, plus any other
benchmarks under "benchmarks"), predictions per model and benchmark (examples), the benchmark item stats and the
prediction manifests (provenance: sha256 of every model folder and item file), `general.json` per model
(loss/perplexity on held-out general chat), `metrics.json` per epoch (training loss), the data stats and shard
manifest, and the human-evaluation summary when sheets were imported.
Gives: the same content as Markdown and as HTML (for `snakemake --report`, which shows HTML and images inline), and
SVG plots of score and loss per epoch (matplotlib, the base model drawn at epoch 0).

The first section (title to the first `##`) and the `## Data` section hold no times, so two runs of the same
config give the same text there; timings live in `## Training`.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

from agenttune.common.atomic import read_jsonl, write_text
from agenttune.evaluate.metrics import BFCL_OUTCOMES, bootstrap_ci

SLICE_TITLES = {"template": "prompt template", "tool_format": "tool-description format", "source": "source",
                "task": "task", "kind": "item kind"}


def _load(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(pair, digits: int = 3) -> str:
    return "–" if not pair else f"[{_fmt(pair[0], digits)}, {_fmt(pair[1], digits)}]"


def _epoch_of(model: str) -> int:
    return 0 if model == "base" else int(model.split("-")[1])


# --- a tiny document model rendered to Markdown and HTML ------------------------------------------------------

class Doc:
    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]):
        self.blocks.append(("table", header, rows))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def image(self, path: str, alt: str, svg_text: str | None):
        self.blocks.append(("image", path, alt, svg_text))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "code":
                out += ["```", block[1], "```", ""]
            elif kind == "image":
                out += [f"![{block[2]}]({block[1]})", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(block[1])}</pre>")
            elif kind == "image":
                svg = block[3]
                body.append(f"<figure>{svg}<figcaption>{html.escape(block[2])}</figcaption></figure>" if svg
                            else f"<p><em>{html.escape(block[2])}: {html.escape(block[1])}</em></p>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;"
                 "text-align:left;vertical-align:top;font-size:.9em}th{background:#f3f3f3}code,pre{background:#f6f6f6}"
                 "pre{padding:.5em;white-space:pre-wrap}figure{display:inline-block;margin:0 1em 1em 0}"
                 "svg{max-width:520px;height:auto}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """The Markdown this report uses inline (`code`, **bold**) as HTML; everything else escaped."""
    parts = _CODE.split(str(text))
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            out.append(_BOLD.sub(r"<strong>\1</strong>", html.escape(part).replace("\n", "<br>")))
    return "".join(out)


# --- plots --------------------------------------------------------------------------------------------------------

def _svg_stable(fig, path) -> None:
    """Save an SVG without a date and with fixed element ids, so identical data gives identical bytes."""
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "agenttune"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": "agenttune"}, bbox_inches="tight")
    os.replace(tmp, path)


def plot_scores(models: list[str], scores: dict, out_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [_epoch_of(m) for m in models]
    series = [("held-out score", [scores[m]["summary"] for m in models], "score", "score_ci")]
    for bench, label in (("val", "val + candidates score"), ("bfcl", "BFCL AST accuracy")):
        if all(bench in scores[m].get("benchmarks", {}) for m in models):
            if bench == "bfcl":
                series.append((label, [scores[m]["benchmarks"][bench].get("bfcl", {}) for m in models],
                               "accuracy", "accuracy_ci"))
            else:
                series.append((label, [scores[m]["benchmarks"][bench]["summary"] for m in models], "score", "score_ci"))
    for label, values, key, ci_key in series:
        ys = [v.get(key) for v in values]
        if any(y is None for y in ys):
            continue
        lo = [y - (v.get(ci_key) or [y, y])[0] for y, v in zip(ys, values)]
        hi = [(v.get(ci_key) or [y, y])[1] - y for y, v in zip(ys, values)]
        ax.errorbar(epochs, ys, yerr=[lo, hi], marker="o", capsize=4, label=label)
    ax.set_xlabel("epoch (0 = base model)")
    ax.set_ylabel("score / accuracy")
    ax.set_xticks(epochs)
    ax.set_title("Tool-call score per epoch (95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _svg_stable(fig, out_path)
    plt.close(fig)


def plot_losses(models: list[str], metrics: dict, general: dict, out_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    trained = [m for m in models if m in metrics and metrics[m].get("mean_loss") is not None]
    if trained:
        ax.plot([_epoch_of(m) for m in trained], [metrics[m]["mean_loss"] for m in trained], marker="s",
                label="training loss (mean over the epoch)")
    have = [m for m in models if general.get(m, {}).get("loss") is not None]
    if have:
        ys = [general[m]["loss"] for m in have]
        lo = [y - general[m]["loss_ci"][0] for y, m in zip(ys, have)]
        hi = [general[m]["loss_ci"][1] - y for y, m in zip(ys, have)]
        ax.errorbar([_epoch_of(m) for m in have], ys, yerr=[lo, hi], marker="o", capsize=4,
                    label="held-out general chat loss (95% CI)")
    ax.set_xlabel("epoch (0 = base model)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_xticks([_epoch_of(m) for m in models])
    ax.set_title("Loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _svg_stable(fig, out_path)
    plt.close(fig)


# --- the report ---------------------------------------------------------------------------------------------------

def _summary_row(model: str, s: dict, general: dict | None, loss) -> list[str]:
    g = general or {}
    return [model, str(s.get("n", 0)), _fmt(s.get("score")), _ci(s.get("score_ci")), _fmt(s.get("em")),
            _fmt(s.get("fuzzy")), _fmt(s.get("no_call_accuracy")), _fmt(s.get("false_call_rate")),
            _fmt(s.get("missed_call_rate")), _fmt(s.get("malformed_rate")), _fmt(g.get("loss"), 4),
            _fmt(g.get("perplexity"), 2), _fmt(loss, 4)]


def _paired_rows(models: list[str], scores: dict) -> list[list[str]]:
    """Per tuned model: the mean per-item score difference to the base model with a bootstrap CI; the CI of a
    paired difference is much tighter than comparing the two models' own CIs."""
    base = {r["id"]: r["score"] for r in scores[models[0]].get("items", [])}
    rows = []
    for m in models[1:]:
        diffs = [r["score"] - base[r["id"]] for r in scores[m].get("items", []) if r["id"] in base]
        if not diffs:
            continue
        lo, hi = bootstrap_ci(diffs)
        rows.append([m, f"{sum(diffs) / len(diffs):+.3f}", f"[{lo:+.3f}, {hi:+.3f}]",
                     str(sum(d > 1e-9 for d in diffs)), str(sum(d < -1e-9 for d in diffs)),
                     str(sum(abs(d) <= 1e-9 for d in diffs))])
    return rows


def _short(text: str, limit: int = 240) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " …"


def _examples(models: list[str], preds: dict, scores: dict, items: dict, n: int) -> list[tuple[str, dict]]:
    """A few telling held-out items: one the last epoch gets right and the base does not, one no-tool item, one
    the last epoch still gets wrong; then the first ids, up to n."""
    first, last = models[0], models[-1]
    by_id = {m: {r["id"]: r for r in scores[m]["items"]} for m in (first, last)}
    ids = sorted(by_id[last])
    picks = []

    def add(pred, why):
        for i in ids:
            if i not in [p for p, _ in picks] and pred(i):
                picks.append((i, why))
                return

    add(lambda i: by_id[last][i]["score"] > by_id[first].get(i, {}).get("score", 0) and by_id[last][i]["kind"] == "tool",
        "improved by tuning")
    add(lambda i: by_id[last][i]["kind"] == "no_tool", "no tool needed")
    add(lambda i: by_id[last][i]["score"] < scores[last]["summary"].get("max_score", 1.5), "still wrong")
    for i in ids:
        if len(picks) >= n:
            break
        if i not in [p for p, _ in picks]:
            picks.append((i, "first by id"))
    return picks[:n]


COST_COLUMNS = (("config", "config"), ("gpus", "GPUs"), ("nodes", "nodes"), ("gpu", "device"), ("max_len", "max_len"),
                ("trainable_layers", "trained layers"), ("checkpointing", "checkpointing"), ("offload_optimizer", "offload"), ("mfu", "MFU"),
                ("mfu_source", "MFU from"), ("h_per_epoch", "h/epoch"), ("epochs", "epochs"),
                ("gpu_hours", "GPU-hours"), ("total_per_gpu_GiB", "GiB/GPU"), ("fits", "fits"))


def _cost_section(doc: "Doc", preflight: dict, metrics: dict) -> None:
    """The preflight's estimate (agenttune.cluster.cost) next to what the training epochs measured."""
    doc.h(2, "Cost and memory")
    doc.p(f"Preflight, before any training job: {preflight['message']}. Time = training FLOPs (6·N·T, less "
          "with freeze tuning, plus attention at the real sample lengths, plus recompute with checkpointing) / "
          "(devices × peak × MFU); "
          "memory = DeepSpeed's ZeRO-3 model-state estimate + activations at max_len + buffers (docs/cost.md).")
    rows = preflight.get("rows", [])
    doc.table([title for _, title in COST_COLUMNS],
              [[_fmt(r.get(key), 2) if isinstance(r.get(key), float) else str(r.get(key, "")) for key, _ in COST_COLUMNS]
               for r in rows])
    plan = next((r for r in rows if r.get("config") == "plan"), None)
    measured = [(m, mt) for m, mt in metrics.items() if mt.get("wall_time_s")]
    est_s = (plan or {}).get("s_per_epoch") or (plan or {}).get("h_per_epoch", 0) * 3600
    if est_s and measured:
        doc.table(["epoch", "estimated s", "measured s", "measured / estimated", "measured MFU"],
                  [[m, _fmt(est_s, 0), _fmt(mt["wall_time_s"], 0), _fmt(mt["wall_time_s"] / est_s, 2),
                    _fmt(mt.get("mfu"), 3)] for m, mt in measured])
        doc.p("A measured MFU can replace the default for the next plan: `compute.mfu_metrics: "
              "<run>/checkpoints/epoch-1/metrics.json`, or `python -m agenttune.cluster.cost --metrics` (docs/cost.md).")


def build_report(run: str, models: list[str], paths: dict, out_md, out_html, plot_paths: dict,
                 n_examples: int = 3) -> str:
    """`paths`: scores (list per model), predictions {bench: [per model]}, items {bench: items stats json},
    manifests {bench: [per model prediction manifest]}, general (list per model or []), general_items (stats json
    or None), metrics (list per epoch), data_stats, shards, human (summary json or None), human_sheet (sheet
    stats json or None), cost (the preflight verdict json or None). `plot_paths`: {"score": svg, "loss": svg}
    (relative links are made from out_md)."""
    scores = {m: _load(p) for m, p in zip(models, paths["scores"])}
    epochs = models[1:]
    metrics = {m: _load(p) for m, p in zip(epochs, paths.get("metrics", []))}
    general = {m: _load(p) for m, p in zip(models, paths.get("general") or [])}
    general_info = _load(paths["general_items"]) if paths.get("general_items") else None
    items_stats = {b: _load(p) for b, p in (paths.get("items") or {}).items()}
    manifests = {b: {m: _load(p) for m, p in zip(models, ps)} for b, ps in (paths.get("manifests") or {}).items()}
    data_stats = _load(paths["data_stats"])
    shards = _load(paths["shards"])
    first = scores[models[0]]
    lam, fuzzy = first["lambda"], first["fuzzy"]

    plot_scores(models, scores, plot_paths["score"])
    plot_losses(models, metrics, general, plot_paths["loss"])

    doc = Doc()
    doc.h(1, f"Evaluation report: run `{run}`")
    held = items_stats.get("heldout", {})
    doc.p(f"Held-out benchmark: {first['summary'].get('n', 0)} items from the test split "
          f"({held.get('counts', {}).get('kind:tool', 0)} tool-call steps, "
          f"{held.get('counts', {}).get('kind:no_tool', 0)} no-tool items). Score = EM(tool name) + λ·{fuzzy}"
          f"(arguments), λ = {lam}; maximum {1 + lam:g}. No-tool items score the maximum when the model answers "
          "without a call and 0 otherwise; a malformed call is a parse failure, never an abstention. "
          "CIs are 95% percentile bootstrap intervals over items (1000 resamples).")
    doc.table(["model", "items", "score", "95% CI", "EM (tool name)", f"{fuzzy} (args)", "no-call acc.",
               "false-call rate", "missed-call rate", "malformed", "general loss", "general ppl", "train loss"],
              [_summary_row(m, scores[m]["summary"], general.get(m), metrics.get(m, {}).get("mean_loss"))
               for m in models])
    paired = _paired_rows(models, scores)
    if paired:
        doc.p("Change from the base model, paired by item (the same held-out items for every model): mean score "
              "difference with its 95% bootstrap CI over items, and how many items got better, worse or stayed.")
        doc.table(["model", "Δ score vs base", "95% CI", "better", "worse", "same"], paired)
    base_s, last_s = first["summary"].get("score"), scores[models[-1]]["summary"].get("score")
    if base_s is not None and last_s is not None:
        doc.p(f"Change from base to {models[-1]}: {last_s - base_s:+.3f} score; "
              f"EM {_fmt(first['summary'].get('em'))} → {_fmt(scores[models[-1]]['summary'].get('em'))}. "
              "False-call rate: share of no-tool items answered with a call or a malformed output; missed-call "
              "rate: share of tool items answered without any call.")
    if general:
        g0, g1 = general.get(models[0], {}).get("loss"), general.get(models[-1], {}).get("loss")
        if g0 is not None and g1 is not None:
            doc.p(f"General ability: held-out general-chat loss {g0:.4f} (base) → {g1:.4f} ({models[-1]}), "
                  f"{g1 - g0:+.4f} nats/token (perplexity ×{pow(2.718281828459045, g1 - g0):.3f}); "
                  "see *General ability* for the data.")

    doc.h(2, "Plots")
    for key, alt in (("score", "Score per epoch"), ("loss", "Loss per epoch")):
        svg_path = Path(plot_paths[key])
        rel = os.path.relpath(svg_path, Path(out_md).parent)
        svg_text = svg_path.read_text(encoding="utf-8")
        svg_text = svg_text[svg_text.find("<svg"):]
        doc.image(rel, alt, svg_text)

    doc.h(2, "Held-out slices")
    doc.p("Score [95% CI] per slice and model (n items per slice in the first column).")
    for key in ("template", "tool_format", "source", "task", "kind"):
        names = sorted(first["slices"].get(key, {}))
        if not names:
            continue
        rows = []
        for name in names:
            row = [f"{name} (n={first['slices'][key][name]['n']})"]
            for m in models:
                s = scores[m]["slices"][key].get(name, {})
                row.append(f"{_fmt(s.get('score'))} {_ci(s.get('score_ci'), 2)}")
            rows.append(row)
        doc.h(3, f"By {SLICE_TITLES[key]}")
        doc.table([key] + models, rows)
    rates = []
    for m in models:
        sl = scores[m]["slices"].get("kind", {})
        rates.append([m, _fmt(sl.get("tool", {}).get("em")), _fmt(sl.get("tool", {}).get("missed_call_rate")),
                      _fmt(sl.get("no_tool", {}).get("false_call_rate")), _fmt(scores[m]["summary"].get("malformed_rate"))])
    doc.h(3, "Calls where none belongs, and none where one does")
    doc.table(["model", "EM on tool items", "missed-call rate", "false-call rate", "malformed rate"], rates)

    bench_scores = {b: {m: scores[m].get("benchmarks", {}).get(b) for m in models} for b in ("val", "bfcl")}
    if all(bench_scores["val"].values()):
        st = items_stats.get("val", {}).get("counts", {})
        doc.h(2, "Benchmark: validation split + reviewed candidates")
        doc.p(f"{st.get('val_items', 0)} validation items and {st.get('candidate_items', 0)} reviewed candidates "
              f"(accepted {st.get('candidates_accepted', 0)}, edited {st.get('candidates_edited', 0)}; rejected "
              f"{st.get('candidates_rejected', 0)} and pending {st.get('candidates_pending', 0)} left out); removed as "
              f"duplicates: {st.get('val_duplicates_removed', 0) + st.get('candidate_duplicates_removed', 0)}; "
              f"removed as contaminated (query or {items_stats['val'].get('decontaminate_ngram', 13)}-gram shared "
              "with training): "
              f"{st.get('val_contaminated_removed', 0) + st.get('candidate_contaminated_removed', 0)}.")
        doc.table(["model", "items", "score", "95% CI", "EM (tool name)", f"{fuzzy} (args)", "no-call acc.",
                   "false-call rate", "missed-call rate", "malformed"],
                  [_summary_row(m, bench_scores["val"][m]["summary"], None, None)[:10] for m in models])
        by_origin = []
        for m in models:
            sl = bench_scores["val"][m]["slices"].get("source", {})
            by_origin.append([m] + [f"{_fmt(sl.get(k, {}).get('score'))} {_ci(sl.get(k, {}).get('score_ci'), 2)}"
                                    for k in sorted(sl)])
        if by_origin and len(by_origin[0]) > 1:
            doc.p("Score [95% CI] by source (`candidate`: the reviewed candidates).")
            doc.table(["model"] + sorted(bench_scores["val"][models[0]]["slices"].get("source", {})), by_origin)
    if all(bench_scores["bfcl"].values()):
        cats = sorted(bench_scores["bfcl"][models[0]].get("bfcl", {}).get("categories", {}))
        doc.h(2, "Benchmark: BFCL v3 (AST)")
        st = items_stats.get("bfcl", {}).get("counts", {})
        doc.p("BFCL questions rendered in the template and tool format the model was tuned on; a call passes when "
              "BFCL's AST rules accept it (function name, required arguments present, no unexpected arguments, "
              "types, value among the allowed ones after BFCL's string normalisation). irrelevance passes only "
              "with no call; a malformed output fails. 'category mean' is BFCL's unweighted mean. Items per "
              "category: " + ", ".join(f"{c} {st.get(f'bfcl_{c}_selected', 0)} of {st.get(f'bfcl_{c}_read', 0)}"
                                        for c in cats)
              + f"; removed as contaminated: {st.get('bfcl_contaminated_removed', 0)}. Templates that hold one call "
              "per step (react, autogpt) cannot express parallel calls in one reply, so their parallel items fail "
              "by construction.")
        rows = []
        for m in models:
            b = bench_scores["bfcl"][m].get("bfcl", {})
            rows.append([m, str(b.get("n", 0)), f"{_fmt(b.get('accuracy'))} {_ci(b.get('accuracy_ci'), 2)}",
                         _fmt(b.get("category_mean"))]
                        + [f"{_fmt(b['categories'][c]['accuracy'])} {_ci(b['categories'][c]['accuracy_ci'], 2)}"
                           for c in cats])
        doc.table(["model", "items", "accuracy [CI]", "category mean"] + cats, rows)
        named = [c for c in cats if "name_em" in bench_scores["bfcl"][models[0]]["bfcl"]["categories"][c]]
        if named:
            doc.p("Function-name exact match of the first call, per category (a reply without a call, or a "
                  "malformed one, counts as a miss): did the model pick the right function, whatever its arguments.")
            doc.table(["model"] + named,
                      [[m] + [f"{_fmt(cat['name_em'])} {_ci(cat['name_em_ci'], 2)}"
                              for cat in (bench_scores["bfcl"][m]["bfcl"]["categories"][c] for c in named)]
                       for m in models])
        doc.p("What each item's reply was, per model and category (counts of items): correct; no call (answered "
              "in prose where a call was due); false call (called on an irrelevance item); malformed (a call "
              "attempt that does not parse); wrong function; wrong number of calls; arguments (right function, "
              "arguments rejected by the AST rules). 'cut' counts replies stopped at max_new_tokens, among "
              "which a no-call or malformed reply may be an unfinished call.")
        doc.table(["model", "category", "items"] + [o.replace("_", " ") for o in BFCL_OUTCOMES] + ["cut"],
                  [[m, c, str(cat["n"])] + [str(cat["outcomes"][o]) for o in BFCL_OUTCOMES]
                   + [str(cat["cut_at_max_new_tokens"])]
                   for m in models for c in cats for cat in [bench_scores["bfcl"][m]["bfcl"]["categories"][c]]])

    doc.h(2, "General ability")
    if general_info and general:
        doc.p(f"Data: {general_info['items']} conversations, {general_info['description']}. Each model's mean "
              "token loss on the final answers (the chat template's end-of-turn tokens included) under its own "
              "chat template, with no tool prompt; perplexity = exp(loss). Agent tuning that costs general "
              "ability shows up as a rising loss.")
        doc.table(["model", "items", "answer tokens", "loss", "95% CI", "perplexity"],
                  [[m, str(general[m]["items"]), str(general[m]["tokens"]), _fmt(general[m]["loss"], 4),
                    _ci(general[m]["loss_ci"], 4), _fmt(general[m]["perplexity"], 2)] for m in models if m in general])
    else:
        doc.p("Not measured in this run.")

    doc.h(2, "Human evaluation")
    if paths.get("human"):
        hs = _load(paths["human"])
        doc.p(f"Raters: {', '.join(hs['raters'])}. Rubric 1 (core information wrong) … 5 (fully correct); a policy "
              "violation scores 0. Usable = share of 4–5.")
        doc.table(["model", "ratings", "mean", "usable rate", "policy violations"],
                  [[m, str(s["n"]), _fmt(s["mean"], 2), _fmt(s["usable_rate"]), _fmt(s["policy_violation_rate"])]
                   for m, s in hs["models"].items()])
        if hs["agreement"]:
            doc.table(["raters", "items rated by both", "exact agreement", "within 1", "Cohen's κ (quadratic)"],
                      [[" / ".join(a["raters"]), str(a["n"]), _fmt(a["exact"]), _fmt(a["within_1"]),
                        _fmt(a["kappa_quadratic"])] for a in hs["agreement"]])
    elif paths.get("human_sheet"):
        sheet = _load(paths["human_sheet"])
        doc.p(f"A blind rating sheet with {sheet['rows']} responses ({sheet['items']} items × models "
              f"{', '.join(sheet['models'])}) is at `human/sheet.csv` (key: `human/key.json`). Fill in the score "
              "column (0–5) and list the filled copies under `evaluate.human.sheets` ({rater: path}) to import them.")
    else:
        doc.p("No human ratings in this run.")

    preds_held = {m: {r["id"]: r for r in read_jsonl(p)} for m, p in zip(models, paths["predictions"]["heldout"])}
    items_held = {}
    if paths.get("items_files", {}).get("heldout"):
        items_held = {it["id"]: it for it in read_jsonl(paths["items_files"]["heldout"])}
    doc.h(2, "Example predictions")
    for item_id, why in _examples(models, preds_held, scores, items_held, n_examples):
        p0 = preds_held[models[0]][item_id]
        doc.h(3, f"{item_id} ({why})")
        prompt = items_held.get(item_id, {}).get("prompt_messages", [])
        last_user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        lines = []
        if last_user:
            lines.append(f"last user turn: `{_short(last_user)}`")
        lines.append(f"expected: `{json.dumps(p0['expected'], ensure_ascii=False)}`")
        for m in (models[0], models[-1]):
            row = next(r for r in scores[m]["items"] if r["id"] == item_id)
            lines.append(f"{m} (score {row['score']:.2f}, {row['status']}): `{_short(preds_held[m][item_id]['output'], 300)}`")
        doc.ul(lines)

    doc.h(2, "Provenance")
    prov = []
    for bench, per_model in manifests.items():
        for m, man in per_model.items():
            model_in = man.get("inputs", {}).get("model", {})
            items_in = man.get("inputs", {}).get("items", {})
            prov.append([bench, m, f"`{model_in.get('path', '')}`", f"`{model_in.get('sha256', '')[:16]}`",
                         f"`{items_in.get('sha256', '')[:16]}`", str(man.get("config", {}).get("max_new_tokens", ""))])
    if prov:
        doc.p("sha256 (first 16 hex digits) of each model folder and benchmark item file that produced the "
              "predictions, from the prediction manifests; the project version is "
              f"`{next(iter(next(iter(manifests.values())).values())).get('project_version', '?')}`.")
        doc.table(["benchmark", "model", "model folder", "model sha256", "items sha256", "max new tokens"], prov)
    for bench, st in items_stats.items():
        inputs = st.get("manifest", {}).get("inputs", {})
        if inputs:
            doc.p(f"Benchmark `{bench}` built from: " + "; ".join(
                f"{name} `{v['path']}` (sha256 `{v['sha256'][:16]}`)" for name, v in sorted(inputs.items())) + ".")

    if metrics:
        doc.h(2, "Training")
        doc.table(["epoch", "steps (total)", "samples", "tokens", "trained tokens", "tokens/s", "wall s",
                   "peak memory GiB"],
                  [[m, str(mt.get("global_step", "")), str(mt.get("samples", "")), str(mt.get("tokens", "")),
                    str(mt.get("trained_tokens", "")), _fmt(mt.get("tokens_per_s"), 1), _fmt(mt.get("wall_time_s"), 0),
                    _fmt((mt.get("peak_memory_bytes") or 0) / 2**30, 2)] for m, mt in metrics.items()])

    if paths.get("cost"):
        _cost_section(doc, _load(paths["cost"]), metrics)

    doc.h(2, "Data")
    doc.table(["split", "samples", "tool", "no-tool"],
              [[split, str(c.get("samples", 0)), str(c.get("kind:tool", 0)), str(c.get("kind:no_tool", 0))]
               for split, c in data_stats.get("splits", {}).items()])
    train = shards.get("splits", {}).get("train", {})
    if train:
        doc.p(f"Train shards: {train.get('rows', 0)} rows, {train.get('tokens', 0)} tokens "
              f"({train.get('trained_tokens', 0)} trained), {train.get('dropped', 0)} dropped as over max_len "
              f"{shards.get('max_len', '?')}.")

    text = doc.markdown()
    write_text(out_md, text)
    write_text(out_html, doc.html(f"agenttune report: {run}"))
    return text
