"""The report's comparisons with the base model: an epoch worse than the base (paired CI) said plainly with what to
try; the reported checkpoint chosen on the validation split, else the last epoch; BFCL per category (name-EM and AST,
with CIs, in the table, the paired change and the plot's own panel) and BFCL's own irrelevance rule beside ours.
Every figure comes from predictions scored for real (agenttune.evaluate.score)."""

from __future__ import annotations

import json
from pathlib import Path

from agenttune.evaluate.score import score_predictions
from agenttune.report.build import build_report
from agenttune.report.sections import bfcl_plot_lines, reported_checkpoint, worse_than_base

CALL = 'Thought: t\nAction: get_weather\nAction Input: {"city": "Oslo"}'
WRONG_CITY = 'Thought: t\nAction: get_weather\nAction Input: {"city": "Rome"}'
PROSE = "Thought: x\nFinal Answer: I don't know."
MALFORMED = "Thought: t\nAction: get_weather"  # a call attempt without its Action Input
WEATHER = {"name": "get_weather", "parameters": {"type": "dict", "required": ["city"],
                                                 "properties": {"city": {"type": "string"}}}}


def dump(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in obj) if isinstance(obj, list) else json.dumps(obj))
    return str(path)


def heldout_rows(outputs: list[str]) -> list[dict]:
    return [{"id": f"h{k:02d}", "template": "react", "tool_format": "react_list", "source": "demo", "task": "weather",
             "kind": "tool", "expected": {"name": "get_weather", "arguments": {"city": "Oslo"}}, "reference": "",
             "output": out} for k, out in enumerate(outputs)]


def bfcl_rows(simple: list[str], irrelevance: list[str]) -> list[dict]:
    rows = []
    for k, out in enumerate(simple):
        rows.append({"id": f"simple_{k}", "template": "react", "tool_format": "react_list", "source": "bfcl",
                     "task": "bfcl_simple", "kind": "tool",
                     "expected": {"name": "get_weather", "arguments": {"city": "Oslo"}}, "reference": "", "output": out, "finish": "stop",
                     "bfcl": {"category": "simple", "ground_truth": [{"get_weather": {"city": ["Oslo"]}}],
                              "functions": [WEATHER]}})
    for k, out in enumerate(irrelevance):
        rows.append({"id": f"irrelevance_{k}", "template": "react", "tool_format": "react_list", "source": "bfcl",
                     "task": "bfcl_irrelevance", "kind": "no_tool", "expected": None, "reference": "", "output": out,
                     "finish": "stop", "bfcl": {"category": "irrelevance", "ground_truth": [], "functions": [WEATHER]}})
    return rows


def run(tmp: Path, heldout: dict, val: dict | None = None, bfcl: dict | None = None) -> tuple[list[str], dict]:
    """Report inputs for the models in `heldout` ({model: outputs}): each model's predictions scored for real, its
    validation score (`val`: {model: score}) and BFCL predictions (`bfcl`: {model: (simple, irrelevance)})."""
    models = list(heldout)
    paths = {"scores": [], "predictions": {"heldout": []}}
    for m in models:
        pred = dump(tmp / m / "predictions.jsonl", heldout_rows(heldout[m]))
        paths["predictions"]["heldout"].append(pred)
        scores = score_predictions(pred, 0.5, "rougeL")
        scores["benchmarks"] = {}
        if val:
            scores["benchmarks"]["val"] = {"summary": {"score": val[m], "score_ci": [val[m] - 0.1, val[m] + 0.1]},
                                           "fuzzy": "rougeL", "slices": {}}
        if bfcl:
            bench = dump(tmp / m / "bfcl.jsonl", bfcl_rows(*bfcl[m]))
            scores["benchmarks"]["bfcl"] = score_predictions(bench, 0.5, "rougeL")
        paths["scores"].append(dump(tmp / m / "scores.json", scores))
    if val:
        paths["items"] = {"val": dump(tmp / "val_items.json", {"decontaminate_ngram": 8, "counts": {}})}
    paths["data_stats"] = dump(tmp / "stats.json", {"splits": {}})
    paths["shards"] = dump(tmp / "shards.json", {"splits": {}})
    return models, paths


def build(tmp: Path, models, paths) -> str:
    out = tmp / "out"
    return build_report("unit", models, paths, out / "report.md", out / "report" / "report.html",
                        {"score": out / "report" / "score.svg", "loss": out / "report" / "loss.svg"})


def scores_of(paths: dict, models: list[str]) -> dict:
    return {m: json.loads(Path(p).read_text()) for m, p in zip(models, paths["scores"])}


def test_an_epoch_significantly_worse_than_base_is_said_plainly(tmp_path):
    # 12 held-out items: base right on 6, epoch-1 on 10, epoch-2 on none (a prose answer where a call is due).
    models, paths = run(tmp_path, {"base": [CALL] * 6 + [PROSE] * 6, "epoch-1": [CALL] * 10 + [PROSE] * 2,
                                   "epoch-2": [PROSE] * 12})
    worse = worse_than_base(models, scores_of(paths, models))
    assert len(worse) == 1 and worse[0].startswith("**epoch-2 is worse than the base model**")
    # paired over the 12 items: -1.5 on the 6 the base got right, 0 on the others
    assert "mean score change -0.750" in worse[0] and "over the same 12 items (6 worse, 0 better)" in worse[0]
    md = build(tmp_path, models, paths)
    summary = md.split("\n## ", 1)[0]
    assert worse[0] in summary and "What to try: fewer epochs (`train.epochs`), a lower learning rate" in summary
    assert "epoch-1 is worse" not in summary
    # No validation scores: the last epoch is reported, and the rule is said.
    assert "Reported checkpoint: epoch-2, the last epoch, since this run has no validation scores" in summary
    assert "Change from base to epoch-2: -0.750 score" in summary


def test_no_warning_when_the_difference_may_be_noise(tmp_path):
    # epoch-1 loses one item of 12: the paired CI reaches zero, so the report does not call it worse.
    models, paths = run(tmp_path, {"base": [CALL] * 6 + [PROSE] * 6, "epoch-1": [CALL] * 5 + [PROSE] * 7})
    assert worse_than_base(models, scores_of(paths, models)) == []
    assert "is worse than the base model" not in build(tmp_path, models, paths)


def test_reported_checkpoint_is_the_best_on_validation(tmp_path):
    heldout = {"base": [CALL] * 6 + [PROSE] * 6, "epoch-1": [CALL] * 10 + [PROSE] * 2, "epoch-2": [PROSE] * 12,
               "epoch-3": [PROSE] * 12}
    models, paths = run(tmp_path, heldout, val={"base": 0.5, "epoch-1": 0.9, "epoch-2": 0.4, "epoch-3": 0.9})
    scores = scores_of(paths, models)
    # ties go to the earlier epoch
    assert reported_checkpoint(models, scores) == ("epoch-1", "the epoch with the best validation score (0.900; "
                                                              "ties go to the earlier epoch)")
    summary = build(tmp_path, models, paths).split("\n## ", 1)[0]
    assert "Reported checkpoint: epoch-1, the epoch with the best validation score (0.900" in summary
    assert "Change from base to epoch-1: +0.500 score" in summary
    assert "**epoch-2 is worse than the base model**" in summary and "**epoch-3 is worse" in summary
    # An epoch without a validation score: the last epoch, and the report says why.
    del scores["epoch-2"]["benchmarks"]["val"]
    assert reported_checkpoint(models, scores) == ("epoch-3", "the last epoch, since not every epoch has a "
                                                              "validation score (`evaluate.val` chooses on them)")


def test_bfcl_per_category_figures_and_the_official_irrelevance_rule(tmp_path):
    # simple: base 1 of 4 calls right (name-EM 2 of 4: one wrong city), epoch-1 4 of 4;
    # irrelevance: base answers all 4 in prose; epoch-1 answers 1, calls 1, and writes 2 malformed calls, which fail
    # under our rule (1 of 4) and pass under BFCL's (3 of 4).
    bfcl = {"base": ([CALL, WRONG_CITY, PROSE, PROSE], [PROSE] * 4),
            "epoch-1": ([CALL] * 4, [PROSE, CALL, MALFORMED, MALFORMED])}
    models, paths = run(tmp_path, {"base": [CALL] * 2, "epoch-1": [CALL] * 2}, bfcl=bfcl)
    scores = scores_of(paths, models)
    irrelevance = scores["epoch-1"]["benchmarks"]["bfcl"]["bfcl"]["categories"]["irrelevance"]
    assert irrelevance["accuracy"] == 0.25 and irrelevance["official_accuracy"] == 0.75
    assert len(irrelevance["official_accuracy_ci"]) == 2

    lines = bfcl_plot_lines(models, {m: scores[m]["benchmarks"]["bfcl"] for m in models})
    values = {label: [v.get(key) for v in per_model] for label, per_model, key, _ in lines}
    assert values == {"simple name-EM": [0.5, 1.0], "simple AST": [0.25, 1.0],
                      "irrelevance no call (ours)": [1.0, 0.25], "irrelevance no call, BFCL's rule": [1.0, 0.75]}
    assert all(per_model[0].get(key + "_ci") for _, per_model, key, _ in lines)  # every line has its CI

    md = build(tmp_path, models, paths)
    bfcl_md = md.split("## Benchmark: BFCL v3 (AST)", 1)[1].split("\n## ", 1)[0]
    assert "| category | figure | items | base | epoch-1 |" in bfcl_md
    for row in ("| simple | name-EM | 4 | 0.500 [", "| simple | AST | 4 | 0.250 [",
                "| irrelevance | no call (ours) | 4 | 1.000 [1.00, 1.00] | 0.250 [",
                "| irrelevance | no call, BFCL's rule | 4 | 1.000 [1.00, 1.00] | 0.750 ["):
        assert row in bfcl_md, row
    # the paired change per category: simple AST +0.75 over the same 4 items
    assert "| category | figure | epoch-1 − base |" in bfcl_md and "| simple | AST | +0.750 [" in bfcl_md
    # The score plot gets a BFCL panel with a line per category and figure, and no averaged BFCL line.
    svg = (tmp_path / "out" / "report" / "score.svg").read_text()
    assert "BFCL v3 per category" in svg and "irrelevance no call, BFCL" in svg and "BFCL AST accuracy" not in svg


def test_real_data_summary_reads_a_run_folder_into_the_documented_shape(tmp_path):
    """bench/real_data_summary.py (docs/real-data-run-v4/summary.json): per model BFCL simple {n, name_em, ast},
    irrelevance {n, ast, official_accuracy}, the general loss; the reported checkpoint by the report's rule, and
    each target met or missed by how much."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_data_summary",
                                                  Path(__file__).resolve().parents[1] / "bench" / "real_data_summary.py")
    summary_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary_mod)
    outputs = {"base": ([PROSE] * 4, [PROSE] * 3 + [MALFORMED]),
               "epoch-1": ([CALL] * 3 + [WRONG_CITY], [PROSE, PROSE, MALFORMED, CALL])}
    losses = {"base": 1.5, "epoch-1": 1.8}
    for m, (simple, irrelevance) in outputs.items():
        pred = dump(tmp_path / "p" / m / "heldout.jsonl", heldout_rows([CALL]))
        scores = score_predictions(pred, 0.5, "rougeL")
        scores["benchmarks"] = {"bfcl": score_predictions(
            dump(tmp_path / "p" / m / "bfcl.jsonl", bfcl_rows(simple, irrelevance)), 0.5, "rougeL")}
        dump(tmp_path / "run" / "eval" / m / "scores.json", scores)
        dump(tmp_path / "run" / "eval" / m / "general.json", {"loss": losses[m]})
    got = summary_mod.summarise(tmp_path / "run")
    assert got["base"]["simple"] | {"outcomes": None} == {"n": 4, "name_em": 0.0, "ast": 0.0, "outcomes": None}
    assert got["epoch-1"]["simple"]["name_em"] == 1.0 and got["epoch-1"]["simple"]["ast"] == 0.75
    # Ours: only a reply without a call is right (the malformed one fails); BFCL's: undecodable counts as no call.
    assert got["base"]["irrelevance"]["ast"] == 0.75 and got["base"]["irrelevance"]["official_accuracy"] == 1.0
    assert got["epoch-1"]["irrelevance"]["ast"] == 0.5 and got["epoch-1"]["irrelevance"]["official_accuracy"] == 0.75
    assert got["reported"]["model"] == "epoch-1" and "last epoch" in got["reported"]["rule"]
    by_target = {t["target"]: t for t in got["targets"]}
    assert by_target["simple name_em >= 0.9"]["met"] and by_target["simple ast >= 0.45"]["met"]
    assert not by_target["irrelevance ast >= 0.8"]["met"] and by_target["irrelevance ast >= 0.8"]["missed_by"] == 0.3
    loss = by_target["general_loss <= base + 10%"]
    assert not loss["met"] and loss["limit"] == 1.65 and loss["missed_by"] == 0.15 and loss["change_vs_base"] == 0.2
