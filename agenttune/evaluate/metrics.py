"""Score parsed model outputs against expected tool calls.

Takes: `ParsedOutput`s (agenttune.render.parsing; each template module's `parse` gives them) and the expected
`Call` of each step (None for a no-tool / hard-negative item), or BFCL ground truth and function schemas.
Gives:
- per-step `StepScore`s: exact match of the function name (em), fuzzy similarity of the
  canonical argument text (ROUGE-L or BLEU), and `score = em + lam * fuzzy`;
- `aggregate` metrics over a run, with a deterministic bootstrap 95% CI of the mean score;
- BFCL-style AST matching of a call against allowed argument values (`bfcl_match`,
  `bfcl_multi_match`), following the rules of BFCL's ast_checker.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
from dataclasses import dataclass

from agenttune.render.parsing import Call, ParsedOutput


# --- fuzzy similarity -----------------------------------------------------------------------

def canonical_arguments(args: dict | str) -> str:
    """One canonical string for a call's arguments, so that key order and spacing do not affect fuzzy scores.

    Dicts (and raw strings that decode as JSON) become sorted-key JSON; other strings are stripped.
    """
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return args.strip()
    return json.dumps(args, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer  # slow to import and to build: do it once, on first use

    return rouge_scorer.RougeScorer(["rougeL"])


def _trivial(pred: str, ref: str) -> float | None:
    """The score for cases the metrics handle badly: identical or empty strings."""
    if pred == ref:
        # Also covers texts the tokenizers reduce to nothing, such as "{}" for a no-argument call.
        return 1.0
    if not pred.strip() or not ref.strip():
        return 1.0 if not pred.strip() and not ref.strip() else 0.0
    return None


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (rouge-score library), 0..1.

    rouge-score's default tokenizer lowercases and keeps only runs of [a-z0-9]: JSON punctuation
    is ignored and non-ASCII letters split words ("Zürich" -> "z rich"); text in non-Latin
    scripts scores as empty. Identical strings score 1.0; empty vs empty 1.0, empty vs non-empty 0.0.
    """
    trivial = _trivial(pred, ref)
    if trivial is not None:
        return trivial
    return _rouge_scorer().score(ref, pred)["rougeL"].fmeasure


def bleu(pred: str, ref: str) -> float:
    """Sentence BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing) scaled to 0..1; same special cases as `rouge_l`."""
    trivial = _trivial(pred, ref)
    if trivial is not None:
        return trivial
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(pred, [ref]).score / 100)


FUZZY = {"rougeL": rouge_l, "bleu": bleu}


# --- per-step and aggregate scores ----------------------------------------------------------

@dataclass(frozen=True)
class StepScore:
    em: float
    fuzzy: float
    score: float
    parse_status: str
    correct_no_call: bool | None  # None for tool items; for negatives: did the model answer without a call

    @property
    def is_negative(self) -> bool:
        return self.correct_no_call is not None


def score_step(expected: Call | None, predicted: ParsedOutput, lam: float, fuzzy: str = "rougeL") -> StepScore:
    """Score one step: `score = em + lam * fuzzy`, in 0 .. 1 + lam.

    Tool item (`expected` is a Call): em is 1.0 when the first predicted call has the expected
    name; fuzzy compares the canonical arguments of the first predicted call with the expected
    ones whatever the name (it measures the argument text); both are 0 with no call (answer or
    malformed).

    Negative item (`expected` is None, the right behaviour is to answer without a call): a plain
    answer gets em = fuzzy = 1.0, so score = 1 + lam, the maximum, keeping tool and negative
    items on one scale when averaged; a call or a malformed output gets 0 (a broken call is not
    an abstention).
    """
    if fuzzy not in FUZZY:
        raise KeyError(f"unknown fuzzy metric {fuzzy!r}; known: {', '.join(FUZZY)}")
    status = predicted.status
    if expected is None:
        ok = status == "answer"
        value = 1.0 if ok else 0.0
        return StepScore(value, value, value + lam * value, status, ok)
    if status != "call" or not predicted.calls:
        return StepScore(0.0, 0.0, 0.0, status, None)
    first = predicted.calls[0]
    em = 1.0 if first.name == expected.name else 0.0
    sim = FUZZY[fuzzy](canonical_arguments(first.arguments), canonical_arguments(expected.arguments))
    return StepScore(em, sim, em + lam * sim, status, None)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(values: list[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean; deterministic for a given seed."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_resamples))
    alpha = (1 - level) / 2
    return _quantile(means, alpha), _quantile(means, 1 - alpha)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(step_scores: list[StepScore], lam: float) -> dict:
    """Run-level metrics. Rates over an empty group are None.

    - score: mean step score over all items (0 .. 1 + lam), with `score_ci` its bootstrap 95% CI;
    - em, fuzzy: means over tool items;
    - no_call_accuracy: share of negatives answered without a call; false_call_rate: share of
      negatives with a call or a malformed output (so the two add up to 1);
    - missed_call_rate: share of tool items answered with no call attempt;
    - malformed_rate: share of all items whose output was malformed.
    """
    tool = [s for s in step_scores if not s.is_negative]
    negative = [s for s in step_scores if s.is_negative]
    scores = [s.score for s in step_scores]
    no_call_accuracy = _mean([1.0 if s.correct_no_call else 0.0 for s in negative])
    return {
        "n": len(step_scores),
        "n_tool": len(tool),
        "n_negative": len(negative),
        "lam": lam,
        "max_score": 1.0 + lam,
        "score": _mean(scores),
        "score_ci": list(bootstrap_ci(scores)) if scores else None,
        "em": _mean([s.em for s in tool]),
        "fuzzy": _mean([s.fuzzy for s in tool]),
        "no_call_accuracy": no_call_accuracy,
        "false_call_rate": None if no_call_accuracy is None else 1.0 - no_call_accuracy,
        "missed_call_rate": _mean([1.0 if s.parse_status == "answer" else 0.0 for s in tool]),
        "malformed_rate": _mean([1.0 if s.parse_status == "malformed" else 0.0 for s in step_scores]),
    }


# --- BFCL AST matching -----------------------------------------------------------------------

# BFCL parameter types (its own dialect of JSON schema) and their JSON-schema spellings.
_PY_TYPES = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
}


def standardize_string(text: str) -> str:
    """BFCL's string normalisation: drop spaces and `,./-_*^`, lowercase, and treat ' as "."""
    return re.sub(r"[ ,./\-_*^]", "", text).lower().replace("'", '"')


def _value_matches(value, allowed) -> bool:
    """Does `value` equal one allowed value? Strings compare after standardisation, lists
    element-wise, and dicts as BFCL writes them: each key maps to a list of allowed values."""
    if isinstance(allowed, str):
        return isinstance(value, str) and standardize_string(value) == standardize_string(allowed)
    if isinstance(allowed, bool) or isinstance(value, bool):
        return type(value) is type(allowed) and value == allowed
    if isinstance(allowed, (int, float)):
        return isinstance(value, (int, float)) and value == allowed
    if isinstance(allowed, list):
        return (isinstance(value, (list, tuple)) and len(value) == len(allowed)
                and all(_value_matches(v, a) for v, a in zip(value, allowed)))
    if isinstance(allowed, dict):
        return isinstance(value, dict) and _dict_mismatch(value, allowed) is None
    return value == allowed


def _one_of(value, allowed_list: list) -> bool:
    return any(_value_matches(value, a) for a in allowed_list if a != "")


def _dict_mismatch(value: dict, allowed: dict) -> str | None:
    """Why `value` fails the ground-truth dict `allowed` ({key: [allowed values]}), or None if it matches."""
    for key, item in value.items():
        if key not in allowed:
            return f"unexpected key {key!r}"
        if not _one_of(item, allowed[key]):
            return f"wrong value for key {key!r}: {item!r} not in {allowed[key]!r}"
    for key, allowed_values in allowed.items():
        if key not in value and "" not in allowed_values:
            return f"missing key {key!r}"
    return None


def _find_schema(function_schema: dict | list, name: str) -> dict:
    if isinstance(function_schema, dict):
        return function_schema
    for schema in function_schema:
        if schema["name"] == name:
            return schema
    if len(function_schema) == 1:
        return function_schema[0]
    raise ValueError(f"no function schema named {name!r}")


def bfcl_match(call: Call, ground_truth: dict, function_schema: dict | list) -> tuple[bool, str]:
    """Match one call against BFCL ground truth `{"func_name": {"arg": [allowed values]}}`.

    `function_schema` is the function's schema (or the item's list of schemas, searched by the
    ground truth's name). Rules as in BFCL's ast_checker: same function name; every required
    parameter present; no parameter outside the schema or the ground truth; every value of the
    schema's type (an int is accepted for a float; bool is not an int) or of the ground truth's
    type (BFCL's "variable" case), and equal to one allowed value (strings standardised, lists
    element-wise, dicts key by key; a variable, whose ground-truth type differs from the schema's, exactly as
    written); a ground-truth argument without "" among its allowed values
    must be given. Returns (True, "") or (False, a short reason).

    The expected function name is the schema's, as in BFCL (the model only sees the schema;
    BFCL's simple_363 has a ground-truth key, "find_closest", that differs from it). A single
    schema, or a list of one, is used whatever the ground truth's key.
    """
    (gt_name, gt_args), = ground_truth.items()
    schema = _find_schema(function_schema, gt_name)
    if call.name != schema["name"]:
        return False, f"wrong function name: expected {schema['name']!r}, got {call.name!r}"
    if not isinstance(call.arguments, dict):
        return False, "arguments are not a JSON object"
    params = schema.get("parameters", {})
    properties = params.get("properties", {})
    for name in params.get("required", []):
        if name not in call.arguments:
            return False, f"missing required argument {name!r}"
    for name, value in call.arguments.items():
        if name not in properties or name not in gt_args:
            return False, f"unexpected argument {name!r}"
        allowed = gt_args[name]
        schema_type = properties[name].get("type")
        if schema_type in ("float", "number") and type(value) is int:
            value = float(value)
        expected_type = _PY_TYPES.get(schema_type)
        gt_type = next((type(a) for a in allowed if a != ""), None)
        if expected_type is not None:
            gt_types = {type(a) for a in allowed if a != ""}
            if type(value) is not expected_type and type(value) not in gt_types:
                return False, f"wrong type for argument {name!r}: expected {schema_type}, got {type(value).__name__}"
        if expected_type is not None and gt_type not in (None, expected_type):
            # BFCL's "variable" case (the ground truth names a variable, e.g. "data['sales']" for an array):
            # compared as written, without string normalisation, since a variable's name is case-sensitive.
            if value not in [a for a in allowed if a != ""]:
                return False, f"wrong value for argument {name!r}: {value!r} not in {allowed!r}"
        elif not _one_of(value, allowed):
            return False, f"wrong value for argument {name!r}: {value!r} not in {allowed!r}"
    for name, allowed in gt_args.items():
        if name not in call.arguments and "" not in allowed:
            return False, f"missing argument {name!r} (not optional in the ground truth)"
    return True, ""


def bfcl_multi_match(calls: list[Call] | tuple[Call, ...], ground_truth_list: list[dict],
                     function_schemas: list[dict]) -> tuple[bool, str]:
    """Order-independent matching of several calls (BFCL `parallel`, `parallel_multiple`).

    Each ground-truth entry must be matched by a different call, and there must be as many
    calls as entries. Uses a full bipartite matching, so it never fails where an assignment
    exists (BFCL's greedy pass can, in rare cases).
    """
    if len(calls) != len(ground_truth_list):
        return False, f"expected {len(ground_truth_list)} calls, got {len(calls)}"
    fits = [[j for j, call in enumerate(calls) if bfcl_match(call, gt, function_schemas)[0]]
            for gt in ground_truth_list]
    call_of: dict[int, int] = {}  # call index -> ground-truth index

    def assign(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j not in seen:
                seen.add(j)
                if j not in call_of or assign(call_of[j], seen):
                    call_of[j] = i
                    return True
        return False

    for i, gt in enumerate(ground_truth_list):
        if not assign(i, set()):
            name = next(iter(gt))
            why = [bfcl_match(call, gt, function_schemas)[1] for call in calls if call.name == name]
            return False, f"no call matches ground truth {i} ({name})" + (f": {why[0]}" if why else "")
    return True, ""


# Why a BFCL item failed, from agenttune.evaluate.score.bfcl_correct's reason (the report's outcome table; per category
# the counts add up to its items).
BFCL_OUTCOMES = ("correct", "no_call", "false_call", "malformed", "wrong_function", "call_count", "arguments")


def bfcl_outcome(ok: bool, why: str) -> str:
    if ok:
        return "correct"
    if why == "no call":
        return "no_call"
    if why == "called a function":
        return "false_call"
    if why.startswith("malformed"):
        return "malformed"
    if why.startswith("wrong function name"):
        return "wrong_function"
    if why.startswith("expected ") and " call" in why:
        return "call_count"
    return "arguments"
