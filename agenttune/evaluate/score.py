"""Evaluate stage, scoring: one model's predictions -> scores.

The evaluate stage is three modules, one per kind of job, so that each job depends only on the code it runs
(agenttune.common.deps): `agenttune.evaluate.predict` (items + model -> predictions), this one (predictions -> scores, the only
step that depends on λ and the fuzzy metric) and `agenttune.evaluate.general` (general-ability retention).
Takes: `predictions.jsonl` (agenttune.evaluate.predict).
Gives `scores.json`:
  Score = EM(tool name) + λ·fuzzy(arguments) with its parts, false-call / missed-call / malformed rates, bootstrap
  95% CIs, the same metrics per template, tool format, source, task and kind, and for BFCL items the AST
  accuracy per category (BFCL's rules, agenttune.evaluate.metrics.bfcl_match), with irrelevance also under BFCL's
  own rule (`official_accuracy`: a malformed reply counts as no call).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from agenttune.common.atomic import read_jsonl
from agenttune.evaluate.metrics import (BFCL_OUTCOMES, aggregate, bfcl_match, bfcl_multi_match, bfcl_outcome, bootstrap_ci,
                             score_step)
from agenttune.render import parse
from agenttune.render.parsing import Call

SLICES = ("template", "tool_format", "source", "task", "kind")


# --- scoring ------------------------------------------------------------------------------------------------------

def bfcl_correct(bfcl: dict, template: str, output: str) -> tuple[bool, str]:
    """BFCL AST check of one output. irrelevance: right only when the model answers without a call (a malformed
    output is wrong, never an abstention); simple / multiple: exactly one call, matching; parallel(_multiple): the
    calls match the ground truth one to one, in any order."""
    parsed = parse(template, output)
    category = bfcl["category"]
    if category == "irrelevance":
        if parsed.status == "answer":
            return True, ""
        return False, "called a function" if parsed.status == "call" else f"malformed: {parsed.error}"
    if parsed.status != "call":
        return False, "no call" if parsed.status == "answer" else f"malformed: {parsed.error}"
    if category in ("simple", "multiple"):
        if len(parsed.calls) != 1:
            return False, f"expected 1 call, got {len(parsed.calls)}"
        return bfcl_match(parsed.calls[0], bfcl["ground_truth"][0], bfcl["functions"])
    return bfcl_multi_match(list(parsed.calls), bfcl["ground_truth"], bfcl["functions"])


def _rate_ci(values: list[float]) -> list[float] | None:
    return list(bootstrap_ci(values)) if values else None


def score_predictions(pred_path: str | Path, lam: float, fuzzy: str) -> dict:
    preds = read_jsonl(pred_path)
    per_item, steps = [], []
    for p in preds:
        expected = Call(p["expected"]["name"], p["expected"]["arguments"]) if p["expected"] else None
        parsed = parse(p["template"], p["output"])
        s = score_step(expected, parsed, lam, fuzzy)
        steps.append(s)
        row = {"id": p["id"], **{k: p.get(k, "") for k in SLICES}, "status": parsed.status,
               "predicted": [{"name": c.name, "arguments": c.arguments} for c in parsed.calls],
               "em": s.em, "fuzzy": s.fuzzy, "score": s.score}
        if p.get("bfcl"):
            ok, why = bfcl_correct(p["bfcl"], p["template"], p["output"])
            row["bfcl_category"], row["bfcl_correct"], row["bfcl_reason"] = p["bfcl"]["category"], ok, why
            row["bfcl_outcome"], row["finish"] = bfcl_outcome(ok, why), p.get("finish", "")
        per_item.append(row)
    result = {"lambda": lam, "fuzzy": fuzzy, "summary": aggregate(steps, lam) if steps else {"n": 0},
              "slices": {}, "items": per_item}
    for key in SLICES:
        groups: dict[str, list] = defaultdict(list)
        for row, s in zip(per_item, steps):
            groups[str(row[key] or "-")].append(s)
        result["slices"][key] = {name: aggregate(group, lam) for name, group in sorted(groups.items())}
    bfcl_rows = [r for r in per_item if "bfcl_category" in r]
    if bfcl_rows:
        cats: dict[str, list[float]] = defaultdict(list)
        names: dict[str, list[float]] = defaultdict(list)
        outcomes: dict[str, Counter] = defaultdict(Counter)
        cut: Counter = Counter()
        for r in bfcl_rows:
            cats[r["bfcl_category"]].append(1.0 if r["bfcl_correct"] else 0.0)
            if r["bfcl_category"] != "irrelevance":  # function-name EM of the first call (no call: 0)
                names[r["bfcl_category"]].append(r["em"])
            outcomes[r["bfcl_category"]][r["bfcl_outcome"]] += 1
            # Replies cut at max_new_tokens: a no-call or malformed outcome among them may be a call not finished.
            cut[r["bfcl_category"]] += r["finish"] == "length"
        per_cat = {c: {"n": len(v), "accuracy": sum(v) / len(v), "accuracy_ci": _rate_ci(v)}
                   for c, v in sorted(cats.items())}
        for c, v in names.items():
            per_cat[c].update(name_em=sum(v) / len(v), name_em_ci=_rate_ci(v))
        for c in per_cat:
            per_cat[c].update(outcomes={k: outcomes[c][k] for k in BFCL_OUTCOMES}, cut_at_max_new_tokens=cut[c])
        if "irrelevance" in per_cat:
            # BFCL's own rule, so that the figure compares with the leaderboard: a reply its decoder cannot read as a
            # call counts as no call, so a malformed call attempt passes there (ours fails it).
            v = [0.0 if r["status"] == "call" else 1.0 for r in bfcl_rows if r["bfcl_category"] == "irrelevance"]
            per_cat["irrelevance"].update(official_accuracy=sum(v) / len(v), official_accuracy_ci=_rate_ci(v))
        allv = [1.0 if r["bfcl_correct"] else 0.0 for r in bfcl_rows]
        result["bfcl"] = {"categories": per_cat, "n": len(allv), "accuracy": sum(allv) / len(allv),
                          "accuracy_ci": _rate_ci(allv),
                          # BFCL's own overall figure is the unweighted mean over categories.
                          "category_mean": sum(c["accuracy"] for c in per_cat.values()) / len(per_cat)}
    return result
