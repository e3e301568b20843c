"""The report's sections, each written into a `Doc` from the loaded evaluation outputs of a run.

Takes: the models in order (base first), their scores.json (held-out, with any other benchmark under "benchmarks"),
and per section what it shows: general.json, metrics.json, item stats, prediction manifests, predictions and items,
human ratings, the cost preflight, data stats and the shards manifest.
Gives: one function per section, in report order (`summary_section` … `data_section`), and `BENCHMARKS`: the
benchmarks besides held-out that the report knows, with their titles; `present_benchmarks` picks those every
model's scores hold.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agenttune.evaluate.metrics import BFCL_OUTCOMES, bootstrap_ci
from agenttune.report.doc import Doc

SLICE_TITLES = {"template": "prompt template", "tool_format": "tool-description format", "source": "source",
                "task": "task", "kind": "item kind"}
SUMMARY_HEADER = ["model", "items", "score", "95% CI", "EM (tool name)", "{fuzzy} (args)", "no-call acc.",
                  "false-call rate", "missed-call rate", "malformed"]


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(pair, digits: int = 3) -> str:
    return "–" if not pair else f"[{_fmt(pair[0], digits)}, {_fmt(pair[1], digits)}]"


def _short(text: str, limit: int = 240) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " …"


def _summary_header(fuzzy: str) -> list[str]:
    return [h.format(fuzzy=fuzzy) for h in SUMMARY_HEADER]


def _summary_row(model: str, s: dict, general: dict | None, loss) -> list[str]:
    g = general or {}
    return [model, str(s.get("n", 0)), _fmt(s.get("score")), _ci(s.get("score_ci")), _fmt(s.get("em")),
            _fmt(s.get("fuzzy")), _fmt(s.get("no_call_accuracy")), _fmt(s.get("false_call_rate")),
            _fmt(s.get("missed_call_rate")), _fmt(s.get("malformed_rate")), _fmt(g.get("loss"), 4),
            _fmt(g.get("perplexity"), 2), _fmt(loss, 4)]


def paired_difference(base_rows: list[dict], rows: list[dict], value: Callable[[dict], float]) -> dict | None:
    """The mean per-item difference `value(row) - value(base row)` over the items both hold (matched by id), with
    its bootstrap 95% CI and the counts of items better, worse and the same; None when no item is shared. The CI of
    a paired difference is much tighter than comparing the two models' own CIs."""
    base = {r["id"]: value(r) for r in base_rows}
    diffs = [value(r) - base[r["id"]] for r in rows if r["id"] in base]
    if not diffs:
        return None
    lo, hi = bootstrap_ci(diffs)
    return {"n": len(diffs), "mean": sum(diffs) / len(diffs), "ci": (lo, hi), "better": sum(d > 1e-9 for d in diffs),
            "worse": sum(d < -1e-9 for d in diffs), "same": sum(abs(d) <= 1e-9 for d in diffs)}


def _heldout_changes(models: list[str], scores: dict) -> dict:
    """{tuned model: its paired held-out score change from the base model (`paired_difference`)}."""
    base = scores[models[0]].get("items", [])
    changes = {m: paired_difference(base, scores[m].get("items", []), lambda r: r["score"]) for m in models[1:]}
    return {m: d for m, d in changes.items() if d}


def _paired_rows(models: list[str], scores: dict) -> list[list[str]]:
    """Per tuned model: the mean per-item score difference to the base model with a bootstrap CI."""
    return [[m, f"{d['mean']:+.3f}", f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", str(d["better"]), str(d["worse"]),
             str(d["same"])] for m, d in _heldout_changes(models, scores).items()]


def reported_checkpoint(models: list[str], scores: dict) -> tuple[str, str]:
    """(the checkpoint the report reports, the rule that chose it): the epoch with the best validation score when
    every epoch was scored on the validation split (ties go to the earlier epoch), else the last epoch."""
    epochs = models[1:]
    if not epochs:
        return models[0], "the only model evaluated"
    val = {m: scores[m].get("benchmarks", {}).get("val", {}).get("summary", {}).get("score") for m in epochs}
    if all(v is not None for v in val.values()):
        best = max(epochs, key=lambda m: (val[m], -epochs.index(m)))
        return best, f"the epoch with the best validation score ({val[best]:.3f}; ties go to the earlier epoch)"
    missing = "not every epoch has a validation score" if any(v is not None for v in val.values()) else \
        "this run has no validation scores"
    return epochs[-1], f"the last epoch, since {missing} (`evaluate.val` chooses on them)"


WORSE_THAN_BASE_ADVICE = (
    "What to try: fewer epochs (`train.epochs`), a lower learning rate (`train.learning_rate`), more general data "
    "in the mix (`format.mix.eta` below 1 with a `general` source, so tuning does not drift the model), or the "
    "checkpoint chosen on the validation split (`evaluate.val`, then the report reports the epoch best there).")


def worse_than_base(models: list[str], scores: dict) -> list[str]:
    """A plain sentence for each tuned model whose held-out score is below the base model's with a paired 95% CI
    that excludes zero."""
    return [f"**{m} is worse than the base model** on the held-out items: mean score change {d['mean']:+.3f}, "
            f"95% CI [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], over the same {d['n']} items ({d['worse']} worse, "
            f"{d['better']} better); the interval excludes zero, so this is not noise."
            for m, d in _heldout_changes(models, scores).items() if d["ci"][1] < 0]


# --- held-out ---------------------------------------------------------------------------------------------------

def summary_section(doc: Doc, run: str, models: list[str], scores: dict, general: dict, metrics: dict,
                    heldout_stats: dict) -> None:
    """Title, how held-out is scored, the per-model table, the paired change from base and the general loss."""
    first = scores[models[0]]
    lam, fuzzy = first["lambda"], first["fuzzy"]
    counts = heldout_stats.get("counts", {})
    doc.h(1, f"Evaluation report: run `{run}`")
    doc.p(f"Held-out benchmark: {first['summary'].get('n', 0)} items from the test split "
          f"({counts.get('kind:tool', 0)} tool-call steps, "
          f"{counts.get('kind:no_tool', 0)} no-tool items). Score = EM(tool name) + λ·{fuzzy}"
          f"(arguments), λ = {lam}; maximum {1 + lam:g}. No-tool items score the maximum when the model answers "
          "without a call and 0 otherwise; a malformed call is a parse failure, never an abstention. "
          "CIs are 95% percentile bootstrap intervals over items (1000 resamples).")
    doc.table(_summary_header(fuzzy) + ["general loss", "general ppl", "train loss"],
              [_summary_row(m, scores[m]["summary"], general.get(m), metrics.get(m, {}).get("mean_loss"))
               for m in models])
    paired = _paired_rows(models, scores)
    if paired:
        doc.p("Change from the base model, paired by item (the same held-out items for every model): mean score "
              "difference with its 95% bootstrap CI over items, and how many items got better, worse or stayed.")
        doc.table(["model", "Δ score vs base", "95% CI", "better", "worse", "same"], paired)
    worse = worse_than_base(models, scores)
    for sentence in worse:
        doc.p(sentence)
    if worse:
        doc.p(WORSE_THAN_BASE_ADVICE)
    reported, rule = reported_checkpoint(models, scores)
    if len(models) > 1:
        doc.p(f"Reported checkpoint: {reported}, {rule}.")
    last = scores[reported]
    base_s, last_s = first["summary"].get("score"), last["summary"].get("score")
    if base_s is not None and last_s is not None:
        doc.p(f"Change from base to {reported}: {last_s - base_s:+.3f} score; "
              f"EM {_fmt(first['summary'].get('em'))} → {_fmt(last['summary'].get('em'))}. "
              "False-call rate: share of no-tool items answered with a call or a malformed output; missed-call "
              "rate: share of tool items answered without any call.")
    if general:
        g0, g1 = general.get(models[0], {}).get("loss"), general.get(reported, {}).get("loss")
        if g0 is not None and g1 is not None:
            doc.p(f"General ability: held-out general-chat loss {g0:.4f} (base) → {g1:.4f} ({reported}), "
                  f"{g1 - g0:+.4f} nats/token (perplexity ×{pow(2.718281828459045, g1 - g0):.3f}); "
                  "see *General ability* for the data.")


def plots_section(doc: Doc, plot_paths: dict, out_md) -> None:
    """The two SVGs: linked (relative to report.md) in Markdown, embedded in HTML."""
    doc.h(2, "Plots")
    for key, alt in (("score", "Score per epoch"), ("loss", "Loss per epoch")):
        svg_path = Path(plot_paths[key])
        rel = os.path.relpath(svg_path, Path(out_md).parent)
        svg_text = svg_path.read_text(encoding="utf-8")
        svg_text = svg_text[svg_text.find("<svg"):]
        doc.image(rel, alt, svg_text)


def slices_section(doc: Doc, models: list[str], scores: dict) -> None:
    """Held-out score per slice (template, tool format, source, task, kind) and the call / no-call rates."""
    first = scores[models[0]]
    doc.h(2, "Held-out slices")
    doc.p("Score [95% CI] per slice and model (n items per slice in the first column).")
    for key, title in SLICE_TITLES.items():
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
        doc.h(3, f"By {title}")
        doc.table([key] + models, rows)
    rates = []
    for m in models:
        sl = scores[m]["slices"].get("kind", {})
        rates.append([m, _fmt(sl.get("tool", {}).get("em")), _fmt(sl.get("tool", {}).get("missed_call_rate")),
                      _fmt(sl.get("no_tool", {}).get("false_call_rate")), _fmt(scores[m]["summary"].get("malformed_rate"))])
    doc.h(3, "Calls where none belongs, and none where one does")
    doc.table(["model", "EM on tool items", "missed-call rate", "false-call rate", "malformed rate"], rates)


# --- the other benchmarks ---------------------------------------------------------------------------------------

def val_section(doc: Doc, models: list[str], entries: dict, stats: dict) -> None:
    """The validation split plus the reviewed candidates: what went in, the summary table and the score by source."""
    st = stats.get("counts", {})
    doc.p(f"{st.get('val_items', 0)} validation items and {st.get('candidate_items', 0)} reviewed candidates "
          f"(accepted {st.get('candidates_accepted', 0)}, edited {st.get('candidates_edited', 0)}; rejected "
          f"{st.get('candidates_rejected', 0)} and pending {st.get('candidates_pending', 0)} left out); removed as "
          f"duplicates: {st.get('val_duplicates_removed', 0) + st.get('candidate_duplicates_removed', 0)}; "
          f"removed as contaminated (query or {stats['decontaminate_ngram']}-gram shared "
          "with training): "
          f"{st.get('val_contaminated_removed', 0) + st.get('candidate_contaminated_removed', 0)}.")
    doc.table(_summary_header(entries[models[0]]["fuzzy"]),
              [_summary_row(m, entries[m]["summary"], None, None)[:10] for m in models])
    by_origin = []
    for m in models:
        sl = entries[m]["slices"].get("source", {})
        by_origin.append([m] + [f"{_fmt(sl.get(k, {}).get('score'))} {_ci(sl.get(k, {}).get('score_ci'), 2)}"
                                for k in sorted(sl)])
    if by_origin and len(by_origin[0]) > 1:
        doc.p("Score [95% CI] by source (`candidate`: the reviewed candidates).")
        doc.table(["model"] + sorted(entries[models[0]]["slices"].get("source", {})), by_origin)


BFCL_CATEGORY_ORDER = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")

# The figures per BFCL category: (key in the category's scores, what it is, its value for one item row of scores.json).
BFCL_FIGURES = (
    ("name_em", "name-EM", lambda r: r["em"]),
    ("accuracy", "AST", lambda r: 1.0 if r["bfcl_correct"] else 0.0),
    ("official_accuracy", "BFCL's rule", lambda r: 0.0 if r["status"] == "call" else 1.0),
)
FIGURE_STYLE = {"name_em": "--", "accuracy": "-", "official_accuracy": ":"}


def bfcl_categories(bfcl: dict) -> list[str]:
    """The categories of one model's BFCL scores, in BFCL's order (any other after, sorted)."""
    cats = bfcl.get("categories", {})
    return [c for c in BFCL_CATEGORY_ORDER if c in cats] + sorted(c for c in cats if c not in BFCL_CATEGORY_ORDER)


def bfcl_figures(bfcl: dict) -> list[tuple[str, str, str, Callable]]:
    """(category, key, label, per-item value) for each figure one model's BFCL scores hold: name-EM and AST where the
    category expects calls; for irrelevance our no-call accuracy (a malformed reply fails) and BFCL's own rule
    (a reply its decoder cannot read counts as no call)."""
    out = []
    for c in bfcl_categories(bfcl):
        for key, what, value in BFCL_FIGURES:
            if key in bfcl["categories"][c]:
                if c == "irrelevance":
                    what = "no call, BFCL's rule" if key == "official_accuracy" else "no call (ours)"
                out.append((c, key, f"{c} {what}", value))
    return out


def bfcl_plot_lines(models: list[str], entries: dict) -> list[tuple]:
    """The score plot's BFCL panel: one line per category and figure (name-EM dashed, AST solid, BFCL's irrelevance
    rule dotted; one colour per category), each (label, one dict per model, key, style)."""
    base = entries[models[0]].get("bfcl", {})
    colours = {c: f"C{k}" for k, c in enumerate(bfcl_categories(base))}
    return [(label, [entries[m].get("bfcl", {}).get("categories", {}).get(c, {}) for m in models], key,
             {"color": colours[c], "linestyle": FIGURE_STYLE[key]})
            for c, key, label, _ in bfcl_figures(base)]


def bfcl_section(doc: Doc, models: list[str], entries: dict, stats: dict) -> None:
    """BFCL v3 under the AST rules: each category's figures per model, their paired change from the base model,
    and what each reply was."""
    bfcl = {m: entries[m].get("bfcl", {}) for m in models}
    cats = bfcl_categories(bfcl[models[0]])
    st = stats.get("counts", {})
    doc.p("BFCL questions rendered in the template and tool format the model was tuned on; a call passes when "
          "BFCL's AST rules accept it (function name, required arguments present, no unexpected arguments, "
          "types, value among the allowed ones after BFCL's string normalisation). irrelevance passes only "
          "with no call; a malformed output fails. 'category mean' is BFCL's unweighted mean. Items per "
          "category: " + ", ".join(f"{c} {st.get(f'bfcl_{c}_selected', 0)} of {st.get(f'bfcl_{c}_read', 0)}"
                                    for c in cats)
          + f"; removed as contaminated: {st.get('bfcl_contaminated_removed', 0)}. Templates that hold one call "
          "per step (react, autogpt) cannot express parallel calls in one reply, so their parallel items fail "
          "by construction.")
    doc.table(["model", "items", "accuracy [CI]", "category mean"],
              [[m, str(bfcl[m].get("n", 0)), f"{_fmt(bfcl[m].get('accuracy'))} {_ci(bfcl[m].get('accuracy_ci'), 2)}",
                _fmt(bfcl[m].get("category_mean"))] for m in models])
    figures = bfcl_figures(bfcl[models[0]])
    doc.p("Per category and model, with 95% bootstrap CIs: name-EM is the function-name exact match of the first "
          "call (a reply without a call, or a malformed one, counts as a miss): did the model pick the right "
          "function, whatever its arguments; AST is the check above. For irrelevance, 'no call (ours)' fails a "
          "malformed reply, while 'no call, BFCL's rule' is the leaderboard's figure: BFCL's checker counts a reply "
          "it cannot decode as no call, so a broken call attempt passes there.")
    doc.table(["category", "figure", "items"] + models,
              [[c, label[len(c) + 1:], str(bfcl[models[0]]["categories"][c]["n"])]
               + [f"{_fmt(cat.get(key))} {_ci(cat.get(key + '_ci'), 2)}"
                  for cat in (bfcl[m].get("categories", {}).get(c, {}) for m in models)]
               for c, key, label, _ in figures])
    items = {m: entries[m].get("items", []) for m in models}
    paired = []
    for c, key, label, value in figures:
        base_rows = [r for r in items[models[0]] if r.get("bfcl_category") == c]
        row = [c, label[len(c) + 1:]]
        for m in models[1:]:
            d = paired_difference(base_rows, [r for r in items[m] if r.get("bfcl_category") == c], value)
            verdict = "" if d is None else " worse" if d["ci"][1] < 0 else " better" if d["ci"][0] > 0 else ""
            row.append("–" if d is None else f"{d['mean']:+.3f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]{verdict}")
        paired.append(row)
    if len(models) > 1:
        doc.p("Change from the base model per category, paired by item (the same BFCL items for every model): mean "
              "difference [95% bootstrap CI]; 'worse' / 'better' where the interval excludes zero.")
        doc.table(["category", "figure"] + [f"{m} − base" for m in models[1:]], paired)
    doc.p("What each item's reply was, per model and category (counts of items): correct; no call (answered "
          "in prose where a call was due); false call (called on an irrelevance item); malformed (a call "
          "attempt that does not parse); wrong function; wrong number of calls; arguments (right function, "
          "arguments rejected by the AST rules). 'cut' counts replies stopped at max_new_tokens, among "
          "which a no-call or malformed reply may be an unfinished call.")
    doc.table(["model", "category", "items"] + [o.replace("_", " ") for o in BFCL_OUTCOMES] + ["cut"],
              [[m, c, str(cat["n"])] + [str(cat["outcomes"][o]) for o in BFCL_OUTCOMES]
               + [str(cat["cut_at_max_new_tokens"])]
               for m in models for c in cats for cat in [bfcl[m]["categories"][c]]])


@dataclass(frozen=True)
class Benchmark:
    """A benchmark that scores.json may hold under "benchmarks" besides held-out, and how the report shows it."""

    name: str        # its key under "benchmarks", in the item stats and in the prediction manifests
    title: str       # its section heading, after "Benchmark: "
    plot_label: str  # its line in the score plot (a benchmark with panel_lines draws those instead)
    part: str        # the part of its scores that holds the headline figure ...
    metric: str      # ... under this key, with its 95% CI under metric + "_ci"
    section: Callable[[Doc, list, dict, dict], None]  # (doc, models, scores per model, item stats)
    # Lines for a panel of their own in the score plot, instead of the one headline line: (models, scores per
    # model) -> [(label, one dict per model, key, style)].
    panel_lines: Callable[[list, dict], list] | None = None

    def headline(self, entry: dict) -> dict:
        return entry.get(self.part, {})


# In report order (sections and plot lines alike).
BENCHMARKS = (
    Benchmark("val", "validation split + reviewed candidates", "val + candidates score", "summary", "score",
              val_section),
    Benchmark("bfcl", "BFCL v3 (AST)", "BFCL AST accuracy", "bfcl", "accuracy", bfcl_section, bfcl_plot_lines),
)


def present_benchmarks(models: list[str], scores: dict) -> list[tuple[Benchmark, dict]]:
    """(benchmark, its scores per model) for each of BENCHMARKS that every model was scored on."""
    found = []
    for bench in BENCHMARKS:
        entries = {m: scores[m].get("benchmarks", {}).get(bench.name) for m in models}
        if all(entries.values()):
            found.append((bench, entries))
    return found


def benchmark_section(doc: Doc, models: list[str], bench: Benchmark, entries: dict, items_stats: dict) -> None:
    doc.h(2, f"Benchmark: {bench.title}")
    bench.section(doc, models, entries, items_stats.get(bench.name, {}))


# --- beyond tool calls ------------------------------------------------------------------------------------------

def general_section(doc: Doc, models: list[str], general: dict, general_info: dict | None) -> None:
    """Each model's loss on held-out general chat, when it was measured."""
    doc.h(2, "General ability")
    if general_info and general:
        doc.p(f"Data: {general_info['items']} conversations, {general_info['description']}. Each model's mean "
              "token loss on the final answers (the chat template's end-of-turn tokens included) under its own "
              "chat template, with no tool prompt; perplexity = exp(loss). Agent tuning that costs general "
              "ability shows up as a rising loss.")
        doc.table(["model", "items", "answer tokens", "loss", "95% CI", "perplexity", "dtype · attention · devices"],
                  [[m, str(general[m]["items"]), str(general[m]["tokens"]), _fmt(general[m]["loss"], 4),
                    _ci(general[m]["loss_ci"], 4), _fmt(general[m]["perplexity"], 2),
                    _how_run(general[m].get("run"), with_engine=False)]
                   for m in models if m in general])
    else:
        doc.p("Not measured in this run.")


def human_section(doc: Doc, human: dict | None, sheet: dict | None) -> None:
    """Imported ratings and rater agreement; else where the blank rating sheet is; else that there is none."""
    doc.h(2, "Human evaluation")
    if human:
        doc.p(f"Raters: {', '.join(human['raters'])}. Rubric 1 (core information wrong) … 5 (fully correct); a policy "
              "violation scores 0. Usable = share of 4–5.")
        doc.table(["model", "ratings", "mean", "usable rate", "policy violations"],
                  [[m, str(s["n"]), _fmt(s["mean"], 2), _fmt(s["usable_rate"]), _fmt(s["policy_violation_rate"])]
                   for m, s in human["models"].items()])
        if human["agreement"]:
            doc.table(["raters", "items rated by both", "exact agreement", "within 1", "Cohen's κ (quadratic)"],
                      [[" / ".join(a["raters"]), str(a["n"]), _fmt(a["exact"]), _fmt(a["within_1"]),
                        _fmt(a["kappa_quadratic"])] for a in human["agreement"]])
    elif sheet:
        doc.p(f"A blind rating sheet with {sheet['rows']} responses ({sheet['items']} items × models "
              f"{', '.join(sheet['models'])}) is at `human/sheet.csv` (key: `human/key.json`). Fill in the score "
              "column (0–5) and list the filled copies under `evaluate.human.sheets` ({rater: path}) to import them.")
    else:
        doc.p("No human ratings in this run.")


def _pick_examples(models: list[str], scores: dict, n: int) -> list[tuple[str, str]]:
    """A few telling held-out items: one the reported checkpoint gets right and the base does not, one no-tool item,
    one it still gets wrong; then the first ids, up to n. (item id, why it was picked)"""
    first, last = models[0], reported_checkpoint(models, scores)[0]
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


def examples_section(doc: Doc, models: list[str], scores: dict, predictions: dict, items: dict, n: int) -> None:
    """`predictions`: {model: {item id: prediction row}} on held-out; `items`: {item id: item} (may be empty)."""
    doc.h(2, "Example predictions")
    for item_id, why in _pick_examples(models, scores, n):
        p0 = predictions[models[0]][item_id]
        doc.h(3, f"{item_id} ({why})")
        prompt = items.get(item_id, {}).get("prompt_messages", [])
        last_user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        lines = []
        if last_user:
            lines.append(f"last user turn: `{_short(last_user)}`")
        lines.append(f"expected: `{json.dumps(p0['expected'], ensure_ascii=False)}`")
        for m in (models[0], reported_checkpoint(models, scores)[0]):
            row = next(r for r in scores[m]["items"] if r["id"] == item_id)
            lines.append(f"{m} (score {row['score']:.2f}, {row['status']}): `{_short(predictions[m][item_id]['output'], 300)}`")
        doc.ul(lines)


# --- how the run was made ---------------------------------------------------------------------------------------

def _how_run(run: dict | None, with_engine: bool = True) -> str:
    """engine · dtype · attention · devices of a prediction job, or dtype · attention · devices of a loss job
    (placement.run_info; the server engine names its command instead of an attention implementation)."""
    if not run:
        return "—"
    attn = run.get("attn_implementation") or (f"`{run['server_command']}`" if run.get("server_command") else "—")
    where = run.get("gpu") or ", ".join(run.get("devices", [])) or (f"{run['gpus']} GPU(s)" if run.get("gpus") else "—")
    parts = ([run.get("engine", "—")] if with_engine else []) + [run.get("dtype", "—"), attn, where]
    if run.get("weights"):  # a lora/qlora epoch (agenttune.train.checkpoint): which weights were evaluated
        parts.append({"adapter": f"base + {run.get('tuning', 'lora')} adapter",
                      "merged": f"merged {run.get('tuning', 'lora')} adapter"}.get(run["weights"], run["weights"]))
    return " · ".join(str(x) for x in parts)


def provenance_section(doc: Doc, manifests: dict, items_stats: dict, metrics: dict | None = None) -> None:
    """sha256 of the model folders and item files behind every prediction, and what each benchmark was built from;
    for lora/qlora epochs, the tuning mode and the adapter's settings (metrics.json `lora`)."""
    doc.h(2, "Provenance")
    adapters = {m: mt["lora"] for m, mt in (metrics or {}).items() if mt.get("lora")}
    if adapters:
        doc.p("Tuning: " + "; ".join(
            f"{m}: {a['tuning']} rank {a['rank']}, alpha {a['alpha']}, {a['trainable_parameters']:,} trainable "
            f"parameters, targets {', '.join(a['target_modules'])}, "
            + ("merged into the base (evaluated merged)" if a.get("merged") else "evaluated as base + adapter")
            for m, a in adapters.items()) + ".")
    prov = []
    for bench, per_model in manifests.items():
        for m, man in per_model.items():
            model_in = man.get("inputs", {}).get("model", {})
            items_in = man.get("inputs", {}).get("items", {})
            prov.append([bench, m, f"`{model_in.get('path', '')}`", f"`{model_in.get('sha256', '')[:16]}`",
                         f"`{items_in.get('sha256', '')[:16]}`", str(man.get("config", {}).get("max_new_tokens", "")),
                         _how_run(man.get("outputs", {}).get("run"))])
    if prov:
        doc.p("sha256 (first 16 hex digits) of each model folder and benchmark item file that produced the "
              "predictions, from the prediction manifests; the project version is "
              f"`{next(iter(next(iter(manifests.values())).values())).get('project_version', '?')}`.")
        doc.table(["benchmark", "model", "model folder", "model sha256", "items sha256", "max new tokens",
                   "engine · dtype · attention · devices"], prov)
    for bench, st in items_stats.items():
        inputs = st.get("manifest", {}).get("inputs", {})
        if inputs:
            doc.p(f"Benchmark `{bench}` built from: " + "; ".join(
                f"{name} `{v['path']}` (sha256 `{v['sha256'][:16]}`)" for name, v in sorted(inputs.items())) + ".")


def training_section(doc: Doc, metrics: dict) -> None:
    """Per epoch: steps, samples, tokens, throughput, wall time and peak memory."""
    doc.h(2, "Training")
    doc.table(["epoch", "steps (total)", "samples", "tokens", "trained tokens", "tokens/s", "wall s",
               "peak memory GiB"],
              [[m, str(mt.get("global_step", "")), str(mt.get("samples", "")), str(mt.get("tokens", "")),
                str(mt.get("trained_tokens", "")), _fmt(mt.get("tokens_per_s"), 1), _fmt(mt.get("wall_time_s"), 0),
                _fmt((mt.get("peak_memory_bytes") or 0) / 2**30, 2)] for m, mt in metrics.items()])


COST_COLUMNS = (("config", "config"), ("gpus", "GPUs"), ("nodes", "nodes"), ("gpu", "device"), ("max_len", "max_len"),
                ("trainable_layers", "trained layers"), ("checkpointing", "checkpointing"), ("offload_optimizer", "offload"), ("mfu", "MFU"),
                ("mfu_source", "MFU from"), ("h_per_epoch", "h/epoch"), ("epochs", "epochs"),
                ("gpu_hours", "GPU-hours"), ("total_per_gpu_GiB", "GiB/GPU"), ("fits", "fits"))


def cost_section(doc: Doc, preflight: dict, metrics: dict) -> None:
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


def data_section(doc: Doc, data_stats: dict, shards: dict) -> None:
    """Samples per split and kind, and the train shards (no times: the same config gives the same text)."""
    doc.h(2, "Data")
    doc.table(["split", "samples", "tool", "no-tool"],
              [[split, str(c.get("samples", 0)), str(c.get("kind:tool", 0)), str(c.get("kind:no_tool", 0))]
               for split, c in data_stats.get("splits", {}).items()])
    train = shards.get("splits", {}).get("train", {})
    if train:
        doc.p(f"Train shards: {train.get('rows', 0)} rows, {train.get('tokens', 0)} tokens "
              f"({train.get('trained_tokens', 0)} trained), {train.get('dropped', 0)} dropped as over max_len "
              f"{shards.get('max_len', '?')}.")
