"""The project's BFCL AST matcher (`bfcl_match`, `bfcl_multi_match`) checked against BFCL's own `ast_checker`.

Every simple / multiple / parallel / parallel_multiple item of ../shared/data/bfcl_v3 is judged by both checkers: its
ground-truth call(s) written out, and perturbations of them (wrong function name, a required argument missing, an
extra argument, an argument outside the ground truth, wrong type, a number given as a string, wrong value, string
case and spacing, an int for a float, the optional arguments omitted, the arguments in another order; for several
calls: another order, one missing, one repeated). The test asserts how many cases were compared, how many agree,
and how many disagree for each reason documented in docs/evaluation.md ("Checked against BFCL's checker"): a new
disagreement, or a documented one that is gone, changes those numbers.

BFCL's checker comes from PyPI's `bfcl-eval` (install.sh installs it without its dependencies). Its model-config
module imports every API client; the test puts a stand-in in its place, whose entries keep dotted function names as
they are (BFCL renames `a.b` to `a_b` only for models whose API forbids dots; ours render names unchanged).
"""

from __future__ import annotations

import copy
import importlib
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from agenttune.evaluate.metrics import bfcl_match, bfcl_multi_match
from agenttune.render.parsing import Call

BFCL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bfcl_v3"
CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple")
MODEL_CONFIG = "bfcl_eval.constants.model_config"


@pytest.fixture(scope="module")
def official():
    """BFCL's ast_checker and Language enum, imported with the stand-in model config, which is removed again after."""
    if not BFCL_DIR.is_dir():
        pytest.skip(f"{BFCL_DIR} is absent (BFCL v3 data; see ../shared/data/README.md)")
    if importlib.util.find_spec("bfcl_eval") is None:
        pytest.skip("bfcl-eval is not installed (install.sh: pip install --no-deps bfcl-eval==2026.3.23)")

    class KeepDottedNames:
        underscore_to_dot = False

    stand_in = types.ModuleType(MODEL_CONFIG)
    stand_in.MODEL_CONFIG_MAPPING = type("AnyModel", (dict,), {"__missing__": lambda self, key: KeepDottedNames()})()
    saved = {name: sys.modules.get(name) for name in (MODEL_CONFIG, "bfcl_eval.eval_checker.ast_eval.ast_checker")}
    sys.modules[MODEL_CONFIG] = stand_in
    sys.modules.pop("bfcl_eval.eval_checker.ast_eval.ast_checker", None)
    try:
        checker = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
        from bfcl_eval.constants.enums import Language

        yield checker.ast_checker, Language
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _items(category: str) -> list[dict]:
    """(id, functions, ground truth) of every item of a category, read by the project's BFCL reader."""
    from agenttune.traces.readers import bfcl

    return [{"id": r.raw_id, "functions": r.data["function"], "ground_truth": r.data["ground_truth"]}
            for r in bfcl.records(BFCL_DIR / f"BFCL_v3_{category}.json")]


# --- the ground-truth call and its perturbations ---------------------------------------------------------------------

def _concrete(allowed):
    """One concrete value from a ground-truth value: a dict maps each key to its allowed values (a key allowed only
    as "" is left out), and a list may hold such dicts; anything else is the value itself."""
    if isinstance(allowed, dict):
        return {k: _concrete(next(v for v in values if v != "")) for k, values in allowed.items()
                if any(v != "" for v in values)}
    if isinstance(allowed, list):
        return [_concrete(v) if isinstance(v, dict) else v for v in allowed]
    return allowed


def _truth_call(entry: dict, functions: list[dict]) -> dict:
    """{name: {arg: value}}: each ground-truth argument's first allowed value; one allowed only as "" is left out, and
    so is one the schema does not have (parallel_multiple_12, _26: both checkers reject it). The name is the schema's
    (simple_363's ground-truth key differs from it; both checkers use the schema's)."""
    (name, args), = entry.items()
    schema = _schema(functions, name)
    properties = schema["parameters"].get("properties", {})
    return {schema["name"]: _concrete({k: v for k, v in args.items() if k in properties})}


def _schema(functions: list[dict], name: str) -> dict:
    return next((f for f in functions if f["name"] == name), functions[0])


def _other_type(value):
    """A value of another JSON type than `value`."""
    return 12345 if isinstance(value, str) else "wrong type"


def _other_value(value):
    """A value of the same type as `value` that no ground truth allows."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1000
    if isinstance(value, float):
        return value + 1000.5
    if isinstance(value, str):
        return value + " zq"
    if isinstance(value, list):
        return value + value[:1] if value else ["zq"]
    if isinstance(value, dict):
        return {**value, "zq": 1}
    return "zq"  # None: any other value


def _shout(value):
    """A string in upper case between spaces (BFCL's normalisation ignores both); other values as they are."""
    return " " + value.upper() + " " if isinstance(value, str) else value


def _perturbations(call: dict, schema: dict, gt_args: dict) -> list[tuple[str, dict]]:
    """(kind, perturbed call) for one call {name: {arg: value}}; a kind that does not apply to the call is left out."""
    (name, args), = call.items()
    props = schema["parameters"].get("properties", {})
    required = [p for p in schema["parameters"].get("required", []) if p in args]
    out = [("ground truth", call), ("wrong name", {name + "_x": args}),
           ("extra argument", {name: {**args, "zq_extra": 1}}),
           ("reordered arguments", {name: dict(reversed(list(args.items())))})]
    if required:
        out.append(("missing required", {name: {k: v for k, v in args.items() if k != required[0]}}))
    outside = [p for p in props if p not in gt_args]
    if outside:
        out.append(("argument outside the ground truth", {name: {**args, outside[0]: "x"}}))
    optional = [k for k in args if "" in gt_args[k]]
    if optional:
        out.append(("optional omitted", {name: {k: v for k, v in args.items() if k not in optional}}))
    for key, value in args.items():
        out.append((f"wrong type ({props.get(key, {}).get('type', '?')})", {name: {**args, key: _other_type(value)}}))
        out.append((f"wrong value ({props.get(key, {}).get('type', '?')})", {name: {**args, key: _other_value(value)}}))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(("number as a string", {name: {**args, key: str(value)}}))
        if isinstance(value, str) and value.upper() != value:
            out.append(("string case and spacing", {name: {**args, key: _shout(value)}}))
        if isinstance(value, list) and any(isinstance(v, str) for v in value):
            out.append(("string case in an array", {name: {**args, key: [_shout(v) for v in value]}}))
        if isinstance(value, dict) and any(isinstance(v, str) for v in value.values()):
            out.append(("string case in a dict", {name: {**args, key: {k: _shout(v) for k, v in value.items()}}}))
        if isinstance(value, float) and value.is_integer():
            out.append(("int for a float", {name: {**args, key: int(value)}}))
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(("float for an int", {name: {**args, key: float(value)}}))
        if isinstance(value, bool):
            out.append(("int for a bool", {name: {**args, key: int(value)}}))
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            out.append(("array items as strings", {name: {**args, key: [str(v) for v in value]}}))
        if "" in gt_args[key]:
            out.append(("optional as null", {name: {**args, key: None}}))
            if isinstance(value, (list, str)):
                out.append((f"optional as empty {type(value).__name__}", {name: {**args, key: type(value)()}}))
    return out


def _cases(item: dict, category: str) -> list[tuple[str, list[dict]]]:
    """(kind, model output as BFCL writes it: a list of {name: {arg: value}}) for one item."""
    truth = [_truth_call(entry, item["functions"]) for entry in item["ground_truth"]]
    cases = []
    for i, entry in enumerate(item["ground_truth"]):
        (name, gt_args), = entry.items()
        for kind, changed in _perturbations(truth[i], _schema(item["functions"], name), gt_args):
            if kind == "ground truth" and i > 0:
                continue
            cases.append((kind, truth[:i] + [changed] + truth[i + 1:]))
    if len(truth) > 1:
        cases += [("calls in another order", truth[::-1]), ("one call missing", truth[:-1]),
                  ("one call repeated", truth[:-1] + truth[:1])]
    return cases


def _ours(category: str, item: dict, output: list[dict]) -> bool:
    calls = [Call(name, copy.deepcopy(args)) for call in output for name, args in call.items()]
    if category in ("simple", "multiple"):
        return len(calls) == 1 and bfcl_match(calls[0], item["ground_truth"][0], item["functions"])[0]
    return bfcl_multi_match(calls, item["ground_truth"], item["functions"])[0]


def compare(category: str, ast_checker, Language) -> Counter:
    """Cases per (kind, our verdict, BFCL's verdict), verdicts True for a pass."""
    counts = Counter()
    for item in _items(category):
        for kind, output in _cases(item, category):
            theirs = ast_checker(copy.deepcopy(item["functions"]), copy.deepcopy(output), copy.deepcopy(
                item["ground_truth"]), Language.PYTHON, category, "stand-in-model")["valid"]
            counts[kind, _ours(category, item, output), theirs] += 1
    return counts


# The disagreements documented as deliberate in docs/evaluation.md, as (kind, ours, BFCL's).
EMPTY_STRING = ("optional as empty str", False, True)  # BFCL reads "" (its "may be omitted" mark) as a value
EMPTY_LIST = ("optional as empty list", False, True)   # ... and, through its list normalisation, as []
REORDERED = ("calls in another order", True, False)    # BFCL's greedy pairing misses an assignment that exists

# Per category: items, cases compared, cases where both agree, and each deliberate disagreement's count.
EXPECTED = {
    "simple": (400, 6151, 6060, {EMPTY_STRING: 90, EMPTY_LIST: 1}),
    "multiple": (200, 3032, 2988, {EMPTY_STRING: 44}),
    "parallel": (200, 8350, 8258, {EMPTY_STRING: 88, EMPTY_LIST: 3, REORDERED: 1}),
    "parallel_multiple": (200, 8769, 8684, {EMPTY_STRING: 82, EMPTY_LIST: 3}),
}


@pytest.mark.parametrize("category", CATEGORIES)
def test_matcher_agrees_with_bfcl_checker(official, category):
    counts = compare(category, *official)
    n_items, n_cases, n_agree, deliberate = EXPECTED[category]
    # Both checkers pass every ground-truth call and fail every wrong name, missing required or extra argument.
    assert counts["ground truth", True, True] == n_items == len(_items(category))
    for kind in ("wrong name", "missing required", "extra argument", "argument outside the ground truth"):
        assert all(not ours and not theirs for (k, ours, theirs) in counts if k == kind), kind
    disagreements = {key: n for key, n in counts.items() if key[1] != key[2]}
    assert disagreements == deliberate
    assert sum(counts.values()) == n_cases
    assert sum(n for key, n in counts.items() if key[1] == key[2]) == n_agree


def test_variable_arguments_compare_as_written():
    """BFCL's "variable" case: the ground truth names a variable where the schema wants an array (BFCL v3
    parallel_multiple_21); the name is compared exactly, not after string normalisation."""
    schema = {"name": "fit", "parameters": {"type": "dict", "required": ["x"],
                                            "properties": {"x": {"type": "array", "items": {"type": "float"}}}}}
    truth = {"fit": {"x": ["data['sales']"]}}
    assert bfcl_match(Call("fit", {"x": "data['sales']"}), truth, [schema])[0]
    assert not bfcl_match(Call("fit", {"x": "DATA['SALES']"}), truth, [schema])[0]
    assert not bfcl_match(Call("fit", {"x": ["data['sales']"]}), truth, [schema])[0]
    # A string where the schema wants a string is still normalised (case, spaces, punctuation).
    schema_s = {**schema, "parameters": {**schema["parameters"], "properties": {"x": {"type": "string"}}}}
    assert bfcl_match(Call("fit", {"x": " DATA['SALES'] "}), truth, [schema_s])[0]
