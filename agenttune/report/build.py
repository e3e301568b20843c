"""Report stage: everything evaluated about a run -> `report.md`, a self-contained `report.html` and two plots.

Takes (paths in a dict, see `build_report`): `scores.json` per evaluated model (held-out benchmark, plus any other
benchmarks under "benchmarks"), predictions per model and benchmark (examples), the benchmark item stats and the
prediction manifests (provenance: sha256 of every model folder and item file), `general.json` per model
(loss/perplexity on held-out general chat), `metrics.json` per epoch (training loss), the data stats and shard
manifest, and the human-evaluation summary when sheets were imported.
Gives: the same content as Markdown and as HTML (for `snakemake --report`, which shows HTML and images inline), and
SVG plots of score and loss per epoch (`agenttune.report.plots`, the base model drawn at epoch 0). The sections are
written by `agenttune.report.sections` into an `agenttune.report.doc.Doc`.

The first section (title to the first `##`) and the `## Data` section hold no times, so two runs of the same
config give the same text there; timings live in `## Training`.
"""

from __future__ import annotations

import json
from pathlib import Path

from agenttune.common.atomic import read_jsonl, write_text
from agenttune.report import sections
from agenttune.report.doc import Doc
from agenttune.report.plots import plot_losses, plot_scores


def _load(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def build_report(run: str, models: list[str], paths: dict, out_md, out_html, plot_paths: dict,
                 n_examples: int = 3) -> str:
    """`paths`: scores (list per model), predictions {bench: [per model]}, items {bench: items stats json},
    manifests {bench: [per model prediction manifest]}, general (list per model or []), general_items (stats json
    or None), metrics (list per epoch), data_stats, shards, human (summary json or None), human_sheet (sheet
    stats json or None), cost (the preflight verdict json or None). `plot_paths`: {"score": svg, "loss": svg}
    (relative links are made from out_md)."""
    scores = {m: _load(p) for m, p in zip(models, paths["scores"])}
    metrics = {m: _load(p) for m, p in zip(models[1:], paths.get("metrics", []))}
    general = {m: _load(p) for m, p in zip(models, paths.get("general") or [])}
    items_stats = {b: _load(p) for b, p in (paths.get("items") or {}).items()}
    benchmarks = sections.present_benchmarks(models, scores)

    score_lines = [("held-out score", [scores[m]["summary"] for m in models], "score")]
    score_lines += [(bench.plot_label, [bench.headline(entries[m]) for m in models], bench.metric)
                    for bench, entries in benchmarks if bench.panel_lines is None]
    # BFCL: one line per category and figure, in a panel of its own (an average over categories hides them).
    panel = [line for bench, entries in benchmarks if bench.panel_lines for line in bench.panel_lines(models, entries)]
    plot_scores(models, score_lines, plot_paths["score"], panel or None)
    plot_losses(models, metrics, general, plot_paths["loss"])

    doc = Doc()
    sections.summary_section(doc, run, models, scores, general, metrics, items_stats.get("heldout", {}))
    sections.plots_section(doc, plot_paths, out_md)
    sections.slices_section(doc, models, scores)
    for bench, entries in benchmarks:
        sections.benchmark_section(doc, models, bench, entries, items_stats)
    sections.general_section(doc, models, general,
                             _load(paths["general_items"]) if paths.get("general_items") else None)
    sections.human_section(doc, _load(paths["human"]) if paths.get("human") else None,
                           _load(paths["human_sheet"]) if paths.get("human_sheet") else None)
    predictions = {m: {r["id"]: r for r in read_jsonl(p)} for m, p in zip(models, paths["predictions"]["heldout"])}
    items_file = paths.get("items_files", {}).get("heldout")
    items = {it["id"]: it for it in read_jsonl(items_file)} if items_file else {}
    sections.examples_section(doc, models, scores, predictions, items, n_examples)
    manifests = {b: {m: _load(p) for m, p in zip(models, ps)} for b, ps in (paths.get("manifests") or {}).items()}
    sections.provenance_section(doc, manifests, items_stats, metrics)
    if metrics:
        sections.training_section(doc, metrics)
    if paths.get("cost"):
        sections.cost_section(doc, _load(paths["cost"]), metrics)
    sections.data_section(doc, _load(paths["data_stats"]), _load(paths["shards"]))

    text = doc.markdown()
    write_text(out_md, text)
    write_text(out_html, doc.html(f"agenttune report: {run}"))
    return text
