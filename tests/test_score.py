"""Tests for agenttune.evaluate.metrics: fuzzy metrics, step and run scores, bootstrap CI, BFCL AST matching."""

import json
from pathlib import Path

import pytest

from agenttune.render.parsing import Call, ParsedOutput
from agenttune.evaluate.metrics import (
    StepScore,
    aggregate,
    bfcl_match,
    bfcl_multi_match,
    bleu,
    bootstrap_ci,
    canonical_arguments,
    rouge_l,
    score_step,
    standardize_string,
)

BFCL_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bfcl_v3"
needs_bfcl = pytest.mark.skipif(not BFCL_DIR.is_dir(), reason=f"BFCL v3 data not found at {BFCL_DIR} (shared data folder absent)")


def called(*calls: Call) -> ParsedOutput:
    return ParsedOutput(tuple(calls), None, "call")


ANSWERED = ParsedOutput((), "It is 4 °C.", "answer")
MALFORMED = ParsedOutput((), None, "malformed", "invalid JSON")


# --- canonical arguments and fuzzy metrics -----------------------------------------------------

def test_canonical_arguments():
    assert canonical_arguments({"b": 1, "a": {"y": "Zürich", "x": [1, 2]}}) == '{"a": {"x": [1, 2], "y": "Zürich"}, "b": 1}'
    assert canonical_arguments(' {"b":1,"a":2} ') == '{"a": 2, "b": 1}'
    assert canonical_arguments("  weather in Oslo \n") == "weather in Oslo"
    assert canonical_arguments({}) == "{}"


def test_rouge_l_hand_computed():
    # LCS("a b c d", "a b e d") = "a b d": 3 of 4 tokens each way, P = R = F = 0.75.
    assert rouge_l("a b e d", "a b c d") == pytest.approx(0.75)
    # '{"city": "Oslo"}' vs '{"city": "Bergen"}' tokenise to "city oslo" / "city bergen": LCS 1 of 2.
    assert rouge_l('{"city": "Bergen"}', '{"city": "Oslo"}') == pytest.approx(0.5)


def test_rouge_l_special_cases():
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "a") == 0.0 and rouge_l("a", "  ") == 0.0
    assert rouge_l("{}", "{}") == 1.0  # the tokenizer sees no tokens; identical strings still match
    assert rouge_l("Oslo!", "oslo") == 1.0  # lowercased, punctuation dropped
    assert rouge_l("x y", "z w") == 0.0


def test_bleu():
    long = "the quick brown fox jumps over the lazy dog near the river bank"
    assert bleu(long, long) == 1.0
    assert bleu("", "") == 1.0 and bleu("", long) == 0.0
    partial = bleu("the quick brown fox jumps over a sleepy cat", long)
    assert 0.0 < partial < 1.0
    assert bleu("alpha beta gamma", "delta epsilon zeta") == 0.0


# --- score_step and aggregate ------------------------------------------------------------------

OSLO = Call("get_weather", {"city": "Oslo"})
LAM = 0.5


def test_score_step_tool_items():
    exact = score_step(OSLO, called(OSLO), LAM)
    assert (exact.em, exact.fuzzy, exact.score, exact.parse_status, exact.correct_no_call) == (1.0, 1.0, 1.5, "call", None)

    wrong_value = score_step(OSLO, called(Call("get_weather", {"city": "Bergen"})), LAM)
    assert (wrong_value.em, wrong_value.fuzzy, wrong_value.score) == (1.0, pytest.approx(0.5), pytest.approx(1.25))

    # fuzzy is about the argument text and is computed even when the name is wrong
    wrong_name = score_step(OSLO, called(Call("get_forecast", {"city": "Oslo"})), LAM)
    assert (wrong_name.em, wrong_name.fuzzy, wrong_name.score) == (0.0, 1.0, 0.5)

    # only the first call counts; key order and raw JSON strings do not matter
    first = score_step(Call("f", {"a": 1, "b": 2}), called(Call("f", '{"b": 2, "a": 1}'), Call("g", {})), LAM)
    assert first.score == 1.5

    assert score_step(OSLO, ANSWERED, LAM) == StepScore(0.0, 0.0, 0.0, "answer", None)
    assert score_step(OSLO, MALFORMED, LAM) == StepScore(0.0, 0.0, 0.0, "malformed", None)


def test_score_step_negative_items():
    assert score_step(None, ANSWERED, LAM) == StepScore(1.0, 1.0, 1.5, "answer", True)
    assert score_step(None, called(OSLO), LAM) == StepScore(0.0, 0.0, 0.0, "call", False)
    # a broken call is not an abstention
    assert score_step(None, MALFORMED, LAM) == StepScore(0.0, 0.0, 0.0, "malformed", False)


def test_score_step_bleu_and_unknown_metric():
    assert score_step(OSLO, called(OSLO), LAM, fuzzy="bleu").score == 1.5
    with pytest.raises(KeyError, match="unknown fuzzy metric"):
        score_step(OSLO, called(OSLO), LAM, fuzzy="meteor")


def test_aggregate_hand_computed():
    steps = [
        score_step(OSLO, called(OSLO), LAM),                                     # 1.5
        score_step(OSLO, called(Call("get_weather", {"city": "Bergen"})), LAM),  # 1.25
        score_step(OSLO, ANSWERED, LAM),                                         # 0, missed call
        score_step(OSLO, MALFORMED, LAM),                                        # 0, malformed
        score_step(None, ANSWERED, LAM),                                         # 1.5, correct abstention
        score_step(None, called(OSLO), LAM),                                     # 0, false call
    ]
    agg = aggregate(steps, LAM)
    assert (agg["n"], agg["n_tool"], agg["n_negative"]) == (6, 4, 2)
    assert agg["max_score"] == 1.5
    assert agg["score"] == pytest.approx(4.25 / 6)
    assert agg["em"] == pytest.approx(2 / 4)
    assert agg["fuzzy"] == pytest.approx(1.5 / 4)
    assert agg["no_call_accuracy"] == 0.5 and agg["false_call_rate"] == 0.5
    assert agg["missed_call_rate"] == 0.25
    assert agg["malformed_rate"] == pytest.approx(1 / 6)
    lo, hi = agg["score_ci"]
    assert 0.0 <= lo <= agg["score"] <= hi <= 1.5
    json.dumps(agg)  # goes into reports as is


def test_aggregate_empty_groups():
    agg = aggregate([score_step(OSLO, called(OSLO), 1.0)], 1.0)
    assert agg["score"] == 2.0 and agg["no_call_accuracy"] is None and agg["false_call_rate"] is None
    empty = aggregate([], 1.0)
    assert empty["n"] == 0 and empty["score"] is None and empty["score_ci"] is None and empty["em"] is None


def test_bootstrap_ci():
    values = [0.0, 0.5, 1.0, 1.5, 1.5, 0.25, 1.0, 0.0, 1.25, 0.75]
    mean = sum(values) / len(values)
    ci = bootstrap_ci(values)
    assert ci == bootstrap_ci(values, n_resamples=1000, seed=0)  # deterministic
    assert ci != bootstrap_ci(values, seed=1)
    assert ci[0] < mean < ci[1]
    assert min(values) <= ci[0] and ci[1] <= max(values)
    assert bootstrap_ci([0.7] * 5) == (pytest.approx(0.7), pytest.approx(0.7))
    with pytest.raises(ValueError):
        bootstrap_ci([])


# --- BFCL AST matching: hand-made cases --------------------------------------------------------

SCHEMA = {
    "name": "book",
    "description": "Book a trip.",
    "parameters": {
        "type": "dict",
        "properties": {
            "city": {"type": "string"},
            "nights": {"type": "integer"},
            "budget": {"type": "float"},
            "pets": {"type": "boolean"},
            "stops": {"type": "array", "items": {"type": "string"}},
            "room": {"type": "dict", "properties": {"beds": {"type": "integer"}, "view": {"type": "string"}}},
        },
        "required": ["city", "nights"],
    },
}
GT = {"book": {
    "city": ["New York City", "NYC"],
    "nights": [3],
    "budget": [500.0, ""],
    "pets": [False, ""],
    "stops": [["Rome", "Paris"], ""],
    "room": [{"beds": [2], "view": ["sea", ""]}, ""],
}}


def book(**arguments) -> Call:
    return Call("book", {"city": "NYC", "nights": 3, **arguments})


@pytest.mark.parametrize("call", [
    book(),
    book(city="new-york city"),                       # case, spaces and '-' standardised away
    Call("book", {"city": "N.Y.C", "nights": 3}),
    book(budget=500),                                 # int accepted for a float
    book(budget=500.0, pets=False),
    book(stops=["rome", "PARIS"]),
    book(room={"beds": 2}),                           # optional key omitted
    book(room={"beds": 2, "view": "Sea"}),
])
def test_bfcl_match_accepts(call):
    assert bfcl_match(call, GT, SCHEMA) == (True, "")


@pytest.mark.parametrize("call, reason", [
    (Call("book_trip", {"city": "NYC", "nights": 3}), "wrong function name"),
    (Call("book", {"city": "NYC"}), "missing required argument 'nights'"),
    (book(suite=True), "unexpected argument 'suite'"),
    (book(nights="3"), "wrong type for argument 'nights'"),
    (book(nights=3.0), "wrong type for argument 'nights'"),
    (book(pets=0), "wrong type for argument 'pets'"),
    (book(nights=4), "wrong value for argument 'nights'"),
    (book(city="Boston"), "wrong value for argument 'city'"),
    (book(stops=["Paris", "Rome"]), "wrong value for argument 'stops'"),      # order matters in a list
    (book(stops=["Rome"]), "wrong value for argument 'stops'"),
    (book(room={"beds": 3}), "wrong value for argument 'room'"),
    (book(room={"beds": 2, "balcony": True}), "wrong value for argument 'room'"),
    (Call("book", '{"city": "NYC", "nights": 3'), "arguments are not a JSON object"),
])
def test_bfcl_match_rejects(call, reason):
    ok, why = bfcl_match(call, GT, SCHEMA)
    assert not ok and why.startswith(reason), why


def test_bfcl_ground_truth_argument_without_empty_is_not_optional():
    gt = {"book": {"city": ["NYC"], "nights": [3], "pets": [True]}}
    assert bfcl_match(book(), gt, SCHEMA) == (False, "missing argument 'pets' (not optional in the ground truth)")


def test_standardize_string():
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert standardize_string("it's") == 'it"s'
    assert standardize_string("A_b-c/d*e^f.g") == "abcdefg"


# --- BFCL AST matching on the real BFCL v3 data ------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def bfcl_items(category: str) -> list[tuple[dict, list[dict]]]:
    """(question item, ground truth list) pairs of one BFCL v3 category."""
    questions = read_jsonl(BFCL_DIR / f"BFCL_v3_{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in read_jsonl(BFCL_DIR / "possible_answer" / f"BFCL_v3_{category}.json")}
    return [(q, answers[q["id"]]) for q in questions]


def first_allowed(allowed: list):
    """The first allowed value, with dicts built the same way ({key: [allowed]} -> {key: value})."""
    value = next(v for v in allowed if v != "")
    return example_value(value)


def example_value(value):
    if isinstance(value, dict):
        return {k: first_allowed(v) for k, v in value.items() if "" not in v}
    if isinstance(value, list):
        return [example_value(v) for v in value]
    return value


def call_from_ground_truth(gt: dict, schemas: list[dict]) -> Call:
    """A call that should pass: the first allowed value of every non-optional argument.

    Some BFCL items mark an argument optional ("" allowed) that the schema requires (simple_17's
    `formatted`); BFCL's checker then fails a call without it, and so does ours: include those.
    """
    (name, args), = gt.items()
    # the schema's name is the one to call (simple_363's ground-truth key differs from it)
    schema = next((s for s in schemas if s["name"] == name), schemas[0])
    required = schema["parameters"].get("required", [])
    return Call(schema["name"], {arg: first_allowed(allowed) for arg, allowed in args.items()
                                 if "" not in allowed or arg in required})


def perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "zzz"
    if isinstance(value, list):
        return value + value[:1] if value else ["zzz"]
    return None


@needs_bfcl
@pytest.mark.parametrize("category", ["simple", "multiple"])
def test_bfcl_ground_truth_calls_match(category):
    items = bfcl_items(category)
    assert len(items) >= 50
    for item, ground_truth in items:
        call = call_from_ground_truth(ground_truth[0], item["function"])
        assert bfcl_match(call, ground_truth[0], item["function"]) == (True, ""), item["id"]


@needs_bfcl
def test_bfcl_perturbations_fail():
    for item, (gt,) in bfcl_items("simple")[:50]:
        schema = item["function"][0]
        call = call_from_ground_truth(gt, item["function"])
        required = [a for a in schema["parameters"]["required"] if a in call.arguments]

        unknown = Call(call.name, {**call.arguments, "not_a_parameter": 1})
        assert bfcl_match(unknown, gt, schema) == (False, "unexpected argument 'not_a_parameter'"), item["id"]

        if required:
            dropped = Call(call.name, {k: v for k, v in call.arguments.items() if k != required[0]})
            assert bfcl_match(dropped, gt, schema) == (False, f"missing required argument {required[0]!r}"), item["id"]

        for arg, value in call.arguments.items():
            changed = perturbed(value)
            if changed is None:
                continue
            ok, why = bfcl_match(Call(call.name, {**call.arguments, arg: changed}), gt, schema)
            assert not ok and why.startswith(f"wrong value for argument {arg!r}"), (item["id"], why)
            break


@needs_bfcl
def test_bfcl_multi_match_parallel():
    for item, ground_truth in bfcl_items("parallel")[:50] + bfcl_items("parallel_multiple")[:50]:
        calls = [call_from_ground_truth(gt, item["function"]) for gt in ground_truth]
        schemas = item["function"]
        assert bfcl_multi_match(calls, ground_truth, schemas) == (True, ""), item["id"]
        assert bfcl_multi_match(calls[::-1], ground_truth, schemas) == (True, ""), item["id"]
        ok, why = bfcl_multi_match(calls[1:], ground_truth, schemas)
        assert not ok and why.startswith("expected"), item["id"]


def test_bfcl_multi_match_needs_a_full_assignment():
    schema = {"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}, "required": []}}
    # the first ground truth accepts either call; a greedy pass that gave it x=1 would leave nothing for the second
    ground_truth = [{"f": {"x": [1, 2]}}, {"f": {"x": [1]}}]
    assert bfcl_multi_match([Call("f", {"x": 1}), Call("f", {"x": 2})], ground_truth, [schema]) == (True, "")
    ok, why = bfcl_multi_match([Call("f", {"x": 2}), Call("f", {"x": 2})], ground_truth, [schema])
    assert not ok and why.startswith("no call matches ground truth 1 (f): wrong value for argument 'x'"), why
