"""Report stage: scores of the base model and of every epoch -> `report.md`.

Takes: `scores.json` per evaluated model, `metrics.json` per epoch, the data stats and the stage manifests.
Gives: a Markdown report with the base-vs-epoch table, training metrics and a few example predictions.
"""

from __future__ import annotations

import json
from pathlib import Path


def _load(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def build_report(run: str, models: list[str], score_paths: list, metrics_paths: list, data_stats_path,
                 shards_manifest_path, predictions_paths: list, out_path, n_examples: int = 3) -> str:
    scores = {m: _load(p) for m, p in zip(models, score_paths)}
    metrics = {m: _load(p) for m, p in zip(models[1:], metrics_paths)}
    data_stats = _load(data_stats_path)
    shards = _load(shards_manifest_path)
    first = scores[models[0]]
    lam, fuzzy = first["lambda"], first["fuzzy"]
    lines = [f"# Evaluation report: run `{run}`", ""]
    lines += [f"Score = EM(tool name) + λ·{fuzzy}(arguments), λ = {lam}; maximum {1 + lam:g}. "
              "No-tool items score the maximum when the model answers without a call, 0 otherwise.", ""]
    lines += ["| model | items | score | 95% CI | EM (tool name) | " + fuzzy + " (args) | no-call acc. | "
              "false-call rate | missed-call rate | malformed | train loss |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        s = scores[m]["summary"]
        ci = s.get("score_ci") or [None, None]
        loss = metrics[m]["mean_loss"] if m in metrics else None
        lines.append(f"| {m} | {s['n']} | {_fmt(s['score'])} | [{_fmt(ci[0])}, {_fmt(ci[1])}] | {_fmt(s['em'])} | "
                     f"{_fmt(s['fuzzy'])} | {_fmt(s.get('no_call_accuracy'))} | {_fmt(s.get('false_call_rate'))} | "
                     f"{_fmt(s.get('missed_call_rate'))} | {_fmt(s.get('malformed_rate'))} | {_fmt(loss, 4)} |")
    base, last = scores[models[0]]["summary"]["score"], scores[models[-1]]["summary"]["score"]
    lines += ["", f"Change from base to {models[-1]}: {last - base:+.3f} score.", ""]
    if metrics:
        lines += ["## Training", "", "| epoch | steps (total) | samples | tokens | trained tokens | tokens/s | wall s | "
                  "peak memory GiB |", "|---|---|---|---|---|---|---|---|"]
        for m, mt in metrics.items():
            lines.append(f"| {m} | {mt['global_step']} | {mt['samples']} | {mt['tokens']} | {mt['trained_tokens']} | "
                         f"{mt['tokens_per_s']:.1f} | {mt['wall_time_s']:.0f} | {mt['peak_memory_bytes'] / 2**30:.2f} |")
        lines.append("")
    lines += ["## Data", "", "| split | samples | tool | no-tool |", "|---|---|---|---|"]
    for split, c in data_stats["splits"].items():
        lines.append(f"| {split} | {c.get('samples', 0)} | {c.get('kind:tool', 0)} | {c.get('kind:no_tool', 0)} |")
    lines += ["", f"Train shards: {shards['splits']['train']['rows']} rows, {shards['splits']['train']['tokens']} tokens "
              f"({shards['splits']['train']['trained_tokens']} trained), {shards['splits']['train']['dropped']} "
              f"dropped as over max_len {shards['max_len']}.", ""]
    lines += ["## Example predictions", ""]
    preds = {m: {json.loads(l)["id"]: json.loads(l) for l in Path(p).read_text(encoding="utf-8").splitlines() if l}
             for m, p in zip(models, predictions_paths)}
    for item_id in sorted(preds[models[0]])[:n_examples]:
        p0 = preds[models[0]][item_id]
        lines += [f"**{item_id}** — expected: `{json.dumps(p0['expected'], ensure_ascii=False)}`", ""]
        for m in (models[0], models[-1]):
            out = preds[m][item_id]["output"].replace("\n", " ⏎ ")
            lines.append(f"- {m}: `{out[:300]}`")
        lines.append("")
    text = "\n".join(lines) + "\n"
    Path(out_path).write_text(text, encoding="utf-8")
    return text
