"""The report: Markdown and HTML with the base-vs-epoch table, CIs, slices, benchmarks, general loss, human ratings,
examples and provenance; deterministic plots; and, end to end on the tiny config, `snakemake --report` with every
optional evaluation input switched on, and a λ change that re-scores without regenerating."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agenttune.evaluate.score import score_predictions
from agenttune.report.build import build_report
from conftest import SHARED_DATA, planned_jobs

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
OSLO = {"name": "get_weather", "arguments": {"city": "Oslo"}}


def dump(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj))
    return str(path)


def fake_run(tmp: Path) -> tuple[list[str], dict]:
    """Two models' predictions (the epoch better than the base), scored for real, plus the other report inputs."""
    models = ["base", "epoch-1"]
    good = 'Thought: t\nAction: get_weather\nAction Input: {"city": "Oslo"}'
    outputs = {"base": ["I don't know.", "Thought: t\nAction: get_weather\nAction Input: {\"city\": \"Rome\"}",
                        "Thought: x\nFinal Answer: Paris"],
               "epoch-1": [good, good, "Thought: x\nFinal Answer: Paris"]}
    items = [{"id": f"s{k}@2", "prompt_messages": [{"role": "user", "content": f"Question {k}"}],
              "expected": None if k == 2 else OSLO, "reference": ""} for k in range(3)]
    paths = {"scores": [], "predictions": {"heldout": []}, "manifests": {"heldout": []}, "general": []}
    for m in models:
        preds = [{"id": it["id"], "template": "react", "tool_format": "react_list" if k else "json_schema",
                  "source": "demo", "task": "weather", "kind": "no_tool" if it["expected"] is None else "tool",
                  "expected": it["expected"], "reference": "", "output": outputs[m][k]}
                 for k, it in enumerate(items)]
        p = dump(tmp / m / "predictions.jsonl", preds)
        paths["predictions"]["heldout"].append(p)
        scores = score_predictions(p, 0.5, "rougeL")
        scores["benchmarks"] = {}
        paths["scores"].append(dump(tmp / m / "scores.json", scores))
        paths["manifests"]["heldout"].append(dump(tmp / m / "predict.json", {
            "inputs": {"model": {"path": f"models/{m}", "sha256": "ab" * 32}, "items": {"path": "i", "sha256": "cd" * 32}},
            "config": {"max_new_tokens": 40}, "project_version": "test"}))
        loss = 2.0 if m == "base" else 2.1
        paths["general"].append(dump(tmp / m / "general.json", {
            "items": 3, "tokens": 30, "loss": loss, "perplexity": 2.718281828 ** loss, "loss_ci": [loss - 0.1, loss + 0.1]}))
    paths["items_files"] = {"heldout": dump(tmp / "items.jsonl", items)}
    paths["items"] = {"heldout": dump(tmp / "items.json", {"counts": {"kind:tool": 2, "kind:no_tool": 1}, "manifest": {
        "inputs": {"samples": {"path": "samples/test.jsonl", "sha256": "ef" * 32}}}})}
    paths["general_items"] = dump(tmp / "general_items.json", {"items": 3, "description": "held-out no-tool answers"})
    paths["metrics"] = [dump(tmp / "epoch-1" / "metrics.json", {"mean_loss": 1.5, "global_step": 10, "samples": 5,
                                                                 "tokens": 100, "trained_tokens": 40,
                                                                 "tokens_per_s": 9.5, "wall_time_s": 12.0,
                                                                 "peak_memory_bytes": 2 ** 30, "mfu": 0.04})]
    paths["cost"] = dump(tmp / "preflight.json", {"fits": True, "message": "fits: tiny on 1 GPU", "rows": [
        {"config": "plan", "gpus": 1, "nodes": 1, "gpu": "CPU", "max_len": 512, "trainable_layers": "all",
         "checkpointing": False,
         "offload_optimizer": False, "mfu": 0.2, "mfu_source": "default", "h_per_epoch": 0.01, "s_per_epoch": 36.0, "epochs": 1,
         "gpu_hours": 0.01, "total_per_gpu_GiB": 1.5, "fits": True}]})
    paths["data_stats"] = dump(tmp / "stats.json", {"splits": {"test": {"samples": 3, "kind:tool": 2, "kind:no_tool": 1}}})
    paths["shards"] = dump(tmp / "shards.json", {"max_len": 512, "splits": {"train": {"rows": 5, "tokens": 100,
                                                                                   "trained_tokens": 40, "dropped": 0}}})
    paths["human"] = dump(tmp / "human.json", {"raters": ["alice", "bob"], "models": {
        "base": {"n": 4, "mean": 2.0, "usable_rate": 0.25, "policy_violation_rate": 0.0},
        "epoch-1": {"n": 4, "mean": 4.5, "usable_rate": 1.0, "policy_violation_rate": 0.0}},
        "agreement": [{"raters": ["alice", "bob"], "n": 8, "exact": 0.75, "within_1": 1.0, "kappa_quadratic": 0.8}]})
    return models, paths


def test_report_markdown_html_and_plots(tmp_path):
    models, paths = fake_run(tmp_path / "in")
    out = tmp_path / "out"
    plots = {"score": out / "report" / "score.svg", "loss": out / "report" / "loss.svg"}
    md = build_report("unit", models, paths, out / "report.md", out / "report" / "report.html", plots)
    first, rest = md.split("\n## ", 1)
    # base: 0 (no call) + 1.25 (right tool, ROUGE-L 0.5 on the arguments) + 1.5 (right abstention), mean 0.917
    assert "| base | 3 | 0.917 | [0.000, 1.500] | 0.500 | 0.250 |" in first and "| epoch-1 | 3 | 1.500 |" in first
    assert "Change from base to epoch-1: +0.583 score" in first
    # paired by item: 0 -> 1.5, 1.25 -> 1.5, 1.5 -> 1.5: two better, one the same
    assert "| epoch-1 | +0.583 | [" in first and "| 2 | 0 | 1 |" in first
    assert "general loss" in first and "2.1000" in first
    for title in ("## Plots", "### By prompt template", "### By tool-description format", "## General ability",
                  "## Human evaluation", "## Example predictions", "## Provenance", "## Training", "## Data"):
        assert title in "\n## " + rest, title
    assert "| json_schema (n=1) |" in md and "| alice / bob | 8 | 0.750 | 1.000 | 0.800 |" in md
    assert "`abababababababab`" in md  # model folder hash in the provenance table
    assert "improved by tuning" in md and "no tool needed" in md
    # the preflight's estimate next to the measured epoch: 0.01 h = 36 s estimated, 12 s measured
    assert "## Cost and memory" in md and "Preflight, before any training job: fits: tiny on 1 GPU." in md
    assert "| plan | 1 | 1 | CPU | 512 | all | False | False | 0.20 | default | 0.01 | 1 | 0.01 | 1.50 | True |" in md
    assert "| epoch-1 | 36 | 12 | 0.33 | 0.040 |" in md
    html = (out / "report" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 2 and "<table>" in html
    assert "<code>unit</code>" in html
    # Plots are deterministic: building again gives the same bytes.
    before = {k: p.read_bytes() for k, p in plots.items()}
    build_report("unit", models, paths, out / "report.md", out / "report" / "report.html", plots)
    assert {k: p.read_bytes() for k, p in plots.items()} == before
    assert b"<svg" in before["score"] and b"Date" not in before["score"]


OVERLAY = """
evaluate:
  val:
    candidates: {candidates}
  human:
    n_items: 3
    sheets:
      alice: {alice}
  examples: 2
"""


@pytest.mark.slow
def test_pipeline_report_with_every_evaluation_input(tmp_path):
    """The tiny config plus val + reviewed candidates, BFCL (when ../shared/data has it), an imported rating sheet;
    then `snakemake --report`, and a λ change that plans only score and report."""
    import csv

    run = "pytest-eval-report"
    out = REPO / "results" / run
    shutil.rmtree(out, ignore_errors=True)
    candidates = tmp_path / "candidates.jsonl"
    weather = {"name": "get_weather", "description": "Weather for a city.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    candidates.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "c1", "status": "accepted", "tools": [weather], "query": "Will it snow in Tromsø tonight?",
         "expected": {"name": "get_weather", "arguments": {"city": "Tromsø"}}},
        {"id": "c2", "status": "rejected", "tools": [weather], "query": "x", "expected": None}]))
    alice = tmp_path / "alice.csv"
    overlay = tmp_path / "overlay.yaml"
    text = OVERLAY.format(candidates=candidates, alice=alice)
    if (SHARED_DATA / "bfcl_v3").is_dir():
        text = text.replace("evaluate:\n", f"evaluate:\n  bfcl:\n    path: {SHARED_DATA / 'bfcl_v3'}\n"
                                           "    categories: [simple, irrelevance]\n    max_items_per_category: 2\n")
    overlay.write_text(text)
    configs = ["--configfile", "config/test/config.yaml", str(overlay)]  # --configfile takes several files

    def smk(*extra, target=()):
        return subprocess.run([SNAKEMAKE, "--cores", "2", *target, *extra, *configs, "--config", f"run={run}"],
                              cwd=REPO, capture_output=True, text=True, timeout=1500)

    # First everything up to the rating sheet, then "fill it in" as a rater would, then the rest.
    proc = smk(target=[f"results/{run}/human/sheet.csv"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = (out / "human" / "sheet.csv").read_text().splitlines(keepends=True)
    head = [line for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    for k, row in enumerate(rows):
        row["score"] = str(k % 6)
    with alice.open("w", newline="") as fh:
        fh.writelines(head)
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    proc = smk()
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = (out / "report.md").read_text()
    assert "## Benchmark: validation split + reviewed candidates" in md and "Raters: alice" in md
    scores = json.loads((out / "eval" / "epoch-2" / "scores.json").read_text())
    assert "val" in scores["benchmarks"]
    if (SHARED_DATA / "bfcl_v3").is_dir():
        assert "## Benchmark: BFCL v3 (AST)" in md and scores["benchmarks"]["bfcl"]["bfcl"]["n"] == 4
        outcomes = {c: v["outcomes"] for c, v in scores["benchmarks"]["bfcl"]["bfcl"]["categories"].items()}
        assert sum(sum(o.values()) for o in outcomes.values()) == 4
        assert "| model | category | items | correct | no call |" in md
    val_items = [json.loads(line) for line in (out / "eval" / "items" / "val.jsonl").read_text().splitlines()]
    assert [it["review"] for it in val_items if it["origin"] == "candidate"] == ["accepted"]

    html_report = tmp_path / "report.html"
    proc = smk("--report", str(html_report))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert html_report.stat().st_size > 10_000

    # (--config cannot set a nested number: Snakemake parses nested values as strings. A config file can.)
    new_lambda = tmp_path / "lambda.yaml"
    new_lambda.write_text("evaluate:\n  lambda: 0.25\n")
    dry = subprocess.run([SNAKEMAKE, "-n", *configs, str(new_lambda), "--config", f"run={run}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert planned_jobs(dry.stdout + dry.stderr) == {"score", "report"}, (dry.stdout + dry.stderr)[-3000:]
    # Outputs do not depend on the batch size, so changing it re-runs no prediction: only the evaluation preflight
    # re-sizes the jobs (a batch's KV cache), and its output is an ancient() input of everything after it.
    new_batch = tmp_path / "batch.yaml"
    new_batch.write_text("evaluate:\n  batch_size: 3\n")
    dry = subprocess.run([SNAKEMAKE, "-n", *configs, str(new_batch), "--config", f"run={run}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert planned_jobs(dry.stdout + dry.stderr) == {"eval_preflight"}, (dry.stdout + dry.stderr)[-3000:]
    shutil.rmtree(out, ignore_errors=True)
