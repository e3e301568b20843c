"""Evaluation items, benchmarks (held-out, val + reviewed candidates, BFCL), scoring with slices, BFCL AST accuracy,
false/missed-call rates, and the general-chat loss."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from agenttune.evaluate.items import (
    TrainingQueries,
    bfcl_items,
    build_items,
    deduplicate,
    items_from_sample,
    items_from_samples,
    query_text,
    select,
)
from agenttune.evaluate.candidates import CandidateError, candidate_trace, read_candidates
from agenttune.evaluate.score import bfcl_correct, score_predictions
from agenttune.evaluate.general import general_items, general_loss
from conftest import shared_data

WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
FORMAT = {"templates": {"react": 1.0}, "tool_formats": {"react_list": 1.0}}


def sample(sid: str, kind: str, steps: list, template: str = "react", question: str = "What's the weather?") -> dict:
    msgs = [{"role": "system", "content": "tools...", "loss": False},
            {"role": "user", "content": f"Question: {question}", "loss": False}]
    for k, call in enumerate(steps):
        msgs.append({"role": "assistant", "content": f"step {k}", "loss": True, "tool_calls": [call] if call else []})
        if call:
            msgs.append({"role": "user", "content": "Observation: ok", "loss": False})
    return {"id": sid, "trace_id": sid, "source": "demo", "kind": kind, "task": "t", "template": template,
            "tool_format": "react_list", "messages": msgs}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- items -------------------------------------------------------------------------------------------------------

def test_items_one_per_tool_step_and_one_per_no_tool_sample():
    call_a = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    call_b = {"name": "calculator", "arguments": {"expression": "1+1"}}
    tool = sample("s1", "tool", [call_a, call_b, None])
    items = items_from_sample(tool, "heldout", "test")
    assert [it["expected"] for it in items] == [call_a, call_b]
    assert items[1]["prompt_messages"][-1] == {"role": "user", "content": "Observation: ok"}
    assert items[0]["id"] == "s1@2" and items[1]["id"] == "s1@4"
    negative = items_from_sample(sample("s2", "no_tool", [None, None]), "heldout", "test")
    assert len(negative) == 1 and negative[0]["expected"] is None
    stats = Counter()
    assert items_from_samples([sample("s3", "no_tool", [None], template="passthrough")], "val", "val", stats) == []
    assert stats["val_passthrough_samples_skipped"] == 1


def test_select_is_seeded_and_sorted():
    items = [{"id": f"i{k:02d}"} for k in range(20)]
    a, b = select(items, 5, 7), select(list(reversed(items)), 5, 7)
    assert a == b and len(a) == 5 and [it["id"] for it in a] == sorted(it["id"] for it in a)
    assert select(items, 5, 8) != a


def test_query_text_strips_the_template_label():
    assert query_text([{"role": "system", "content": "x"}, {"role": "user", "content": "Question: Hi there"}]) == \
        "Hi there"


def test_contamination_exact_and_ngram():
    train = [sample("t1", "tool", [None], question="What is the weather like in Oslo today?"),
             sample("t2", "tool", [None], question="please convert one hundred and twenty five euros into "
                                                   "japanese yen at the current rate for me")]
    training = TrainingQueries(train, 13)
    exact = items_from_sample(sample("e", "no_tool", [None], question="what is the WEATHER like in oslo today"),
                              "val", "val")[0]
    assert training.contamination(exact) == "same query as a training sample"
    near = items_from_sample(sample("n", "no_tool", [None], question="Hi! Please convert one hundred and twenty "
                                    "five euros into japanese yen at the current rate for me, thanks"), "val", "val")[0]
    assert "13-word n-gram" in training.contamination(near)
    clean = items_from_sample(sample("c", "no_tool", [None], question="How tall is the Eiffel tower?"), "val",
                              "val")[0]
    assert training.contamination(clean) is None


def test_deduplicate_keeps_the_first_and_counts_by_origin():
    a = items_from_sample(sample("a", "no_tool", [None], question="Hello there"), "val", "val")[0]
    b = dict(items_from_sample(sample("b", "no_tool", [None], question="hello,  THERE!"), "val", "val")[0],
             origin="candidate")
    stats = Counter()
    assert deduplicate([a, b], stats) == [a] and stats["candidate_duplicates_removed"] == 1


# --- candidates --------------------------------------------------------------------------------------------------

def candidate(cid, status, query="Weather in Lima?", expected=None, tools=None):
    return {"id": cid, "status": status, "tools": tools or [WEATHER], "query": query,
            "expected": expected if expected is not None else {"name": "get_weather", "arguments": {"city": "Lima"}}}


def test_bad_candidates_are_rejected_with_line_numbers(tmp_path):
    rows = [candidate("c1", "accepted"),
            candidate("c2", "maybe"),
            candidate("c1", "rejected"),
            {**candidate("c4", "edited"), "expected": {"name": "send_email", "arguments": {}}},
            {**candidate("c5", "accepted"), "query": "  "},
            {**candidate("c6", "accepted"), "expected": {"name": "get_weather", "arguments": {}}}]
    path = write_jsonl(tmp_path / "cands.jsonl", rows)
    with path.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(CandidateError) as err:
        read_candidates(path)
    text = str(err.value)
    for needle in (":2: field 'status'", ":3: field 'id': 'c1' already used on line 1",
                   ":4: field 'expected': calls 'send_email'", ":5: field 'query'",
                   ":6: field 'expected': missing required argument(s) city", ":7: not a JSON line"):
        assert needle in text, (needle, text)


def test_val_benchmark_merges_reviewed_candidates_dedups_and_decontaminates(tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", [
        sample("v1", "tool", [{"name": "get_weather", "arguments": {"city": "Oslo"}}], question="Weather in Oslo?")])
    train = write_jsonl(tmp_path / "train.jsonl", [
        sample("t1", "tool", [{"name": "get_weather", "arguments": {"city": "Rome"}}], question="Weather in Rome?")])
    cands = write_jsonl(tmp_path / "cands.jsonl", [
        candidate("c1", "accepted", "Weather in Lima?"),
        candidate("c2", "edited", "Is it raining in Quito right now?",
                  {"name": "get_weather", "arguments": {"city": "Quito"}}),
        candidate("c3", "rejected", "Weather in Cusco?"),
        candidate("c4", "pending", "Weather in Bogota?"),
        candidate("c5", "accepted", "weather in OSLO", {"name": "get_weather", "arguments": {"city": "Oslo"}}),
        candidate("c6", "accepted", "Weather in Rome?", {"name": "get_weather", "arguments": {"city": "Rome"}}),
        {**candidate("c7", "accepted", "Tell me a joke"), "expected": None, "answer": "A joke."},
    ])
    items, stats = build_items("val", {"val": {"candidates": str(cands)}}, 1, samples_path=val, train_path=train,
                               format_cfg=FORMAT, renderers=None, log=lambda _m: None)
    c = stats["counts"]
    assert (c["candidates_accepted"], c["candidates_edited"], c["candidates_rejected"], c["candidates_pending"]) == \
        (4, 1, 1, 1)
    assert c["candidate_duplicates_removed"] == 1 and c["candidate_contaminated_removed"] == 1
    by_origin = Counter(it["origin"] for it in items)
    assert by_origin == {"val": 1, "candidate": 3}
    quito = next(it for it in items if it["sample_id"].startswith("c2"))
    assert quito["review"] == "edited" and quito["expected"]["arguments"] == {"city": "Quito"}
    assert quito["template"] == "react" and "get_weather" in quito["prompt_messages"][0]["content"]
    joke = next(it for it in items if it["sample_id"].startswith("c7"))
    assert joke["expected"] is None and joke["kind"] == "no_tool"
    assert [r["id"] for r in stats["removed"]] == ["c6#react@2"]


def test_candidate_trace_is_a_valid_canonical_trace():
    from agenttune.traces.canonical import validate_trace

    validate_trace(candidate_trace(candidate("c1", "accepted")))
    validate_trace(candidate_trace({**candidate("c2", "accepted"), "expected": None, "answer": "Hi"}))


# --- scoring -----------------------------------------------------------------------------------------------------

def pred(pid, expected, output, template="react", kind=None, **extra):
    return {"id": pid, "template": template, "tool_format": "react_list", "source": "demo", "task": "t",
            "kind": kind or ("no_tool" if expected is None else "tool"), "expected": expected, "reference": "",
            "output": output, **extra}


def test_scores_rates_and_slices(tmp_path):
    oslo = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    rows = [
        pred("a", oslo, 'Thought: t\nAction: get_weather\nAction Input: {"city": "Oslo"}'),
        pred("b", oslo, 'Thought: t\nAction: web_search\nAction Input: {"query": "Oslo"}'),
        pred("c", oslo, "Thought: easy\nFinal Answer: It is cold."),                       # missed call
        pred("d", None, "Thought: easy\nFinal Answer: Paris."),                            # right abstention
        pred("e", None, 'Thought: t\nAction Input: {"city": "Oslo"}'),  # malformed (no Action): wrong, not abstention
        pred("f", oslo, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
             template="tool_call"),
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    s = score_predictions(path, 0.5, "rougeL")
    summ = s["summary"]
    assert summ["n"] == 6 and summ["n_tool"] == 4 and summ["n_negative"] == 2
    assert summ["em"] == pytest.approx(2 / 4)
    assert summ["false_call_rate"] == pytest.approx(0.5) and summ["missed_call_rate"] == pytest.approx(1 / 4)
    assert summ["malformed_rate"] == pytest.approx(1 / 6)
    assert summ["score_ci"][0] <= summ["score"] <= summ["score_ci"][1]
    assert set(s["slices"]["template"]) == {"react", "tool_call"}
    assert s["slices"]["template"]["tool_call"]["score"] == pytest.approx(1.5)
    assert s["slices"]["kind"]["no_tool"]["no_call_accuracy"] == pytest.approx(0.5)
    statuses = {r["id"]: r["status"] for r in s["items"]}
    assert statuses["e"] == "malformed" and statuses["c"] == "answer"
    # λ changes the score only through the fuzzy part
    s0 = score_predictions(path, 0.0, "rougeL")
    assert s0["summary"]["em"] == summ["em"] and s0["summary"]["max_score"] == 1.0


BFCL_FN = {"name": "calc_area", "description": "Area.", "parameters": {"type": "dict", "properties": {
    "base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"}},
    "required": ["base", "height"]}}


def test_bfcl_ast_scoring_by_category(tmp_path):
    gt = [{"calc_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
    simple = {"category": "simple", "ground_truth": gt, "functions": [BFCL_FN]}
    call = '<tool_call>\n{"name": "calc_area", "arguments": {"base": 10, "height": 5}}\n</tool_call>'
    assert bfcl_correct(simple, "tool_call", call) == (True, "")
    ok, why = bfcl_correct(simple, "tool_call", call.replace("10", "11"))
    assert not ok and "base" in why
    ok, why = bfcl_correct(simple, "tool_call", call + "\n" + call)
    assert not ok and "expected 1 call" in why
    irrelevance = {"category": "irrelevance", "ground_truth": [], "functions": [BFCL_FN]}
    assert bfcl_correct(irrelevance, "tool_call", "I cannot help with that.") == (True, "")
    ok, why = bfcl_correct(irrelevance, "tool_call", "<tool_call>\n{broken\n</tool_call>")
    assert not ok and why.startswith("malformed")  # a broken call is never an abstention
    parallel = {"category": "parallel", "functions": [BFCL_FN],
                "ground_truth": [{"calc_area": {"base": [1], "height": [2]}}, {"calc_area": {"base": [3], "height": [4]}}]}
    two = ('<tool_call>\n{"name": "calc_area", "arguments": {"base": 3, "height": 4}}\n</tool_call>\n'
           '<tool_call>\n{"name": "calc_area", "arguments": {"base": 1, "height": 2}}\n</tool_call>')
    assert bfcl_correct(parallel, "tool_call", two) == (True, "")
    rows = [pred("s1", {"name": "calc_area", "arguments": {"base": 10, "height": 5}}, call, template="tool_call",
                 bfcl=simple),
            pred("s2", {"name": "calc_area", "arguments": {"base": 10, "height": 5}}, "no idea", template="tool_call",
                 bfcl=simple),
            pred("s3", {"name": "calc_area", "arguments": {"base": 10, "height": 5}}, call.replace("10", "11"),
                 template="tool_call", bfcl=simple),  # right function, wrong argument: name-EM yes, AST no
            pred("i1", None, "I cannot help.", template="tool_call", bfcl=irrelevance)]
    rows += [pred("s4", {"name": "calc_area", "arguments": {"base": 10, "height": 5}}, call.replace("calc_area", "area"),
                  template="tool_call", bfcl=simple),
             pred("i2", None, call, template="tool_call", bfcl=irrelevance),
             pred("i3", None, "<tool_call>\n{broken", template="tool_call", bfcl=irrelevance, finish="length")]
    s = score_predictions(write_jsonl(tmp_path / "p.jsonl", rows), 0.5, "bleu")
    assert s["bfcl"]["categories"]["simple"]["outcomes"] == {
        "correct": 1, "no_call": 1, "false_call": 0, "malformed": 0, "wrong_function": 1, "call_count": 0, "arguments": 1}
    assert s["bfcl"]["categories"]["irrelevance"]["outcomes"] == {
        "correct": 1, "no_call": 0, "false_call": 1, "malformed": 1, "wrong_function": 0, "call_count": 0, "arguments": 0}
    assert s["bfcl"]["categories"]["irrelevance"]["cut_at_max_new_tokens"] == 1
    assert s["bfcl"]["categories"]["simple"]["cut_at_max_new_tokens"] == 0
    del rows[4:]
    s = score_predictions(write_jsonl(tmp_path / "p.jsonl", rows), 0.5, "bleu")
    assert s["bfcl"]["categories"]["simple"]["accuracy"] == pytest.approx(1 / 3)
    assert s["bfcl"]["categories"]["simple"]["name_em"] == pytest.approx(2 / 3)
    assert "name_em" not in s["bfcl"]["categories"]["irrelevance"]
    rows.pop(2)
    s = score_predictions(write_jsonl(tmp_path / "p.jsonl", rows), 0.5, "bleu")
    assert s["bfcl"]["categories"]["simple"]["accuracy"] == pytest.approx(0.5)
    assert s["bfcl"]["categories"]["irrelevance"]["accuracy"] == pytest.approx(1.0)
    assert s["bfcl"]["category_mean"] == pytest.approx(0.75) and s["bfcl"]["accuracy"] == pytest.approx(2 / 3)


def test_bfcl_items_from_the_real_benchmark():
    root = shared_data("bfcl_v3")
    stats = Counter()
    items = bfcl_items(root, ["simple", "parallel", "irrelevance"], 3, FORMAT, 5, None, stats)
    assert len(items) == 9 and stats["bfcl_simple_read"] == 400 and stats["bfcl_simple_selected"] == 3
    for it in items:
        assert it["template"] == "react" and it["benchmark"] == "bfcl"
        names = [f["name"] for f in it["bfcl"]["functions"]]
        assert all(n in it["prompt_messages"][0]["content"] for n in names)
        if it["bfcl"]["category"] == "irrelevance":
            assert it["expected"] is None and it["kind"] == "no_tool"
        else:
            gt_name = next(iter(it["bfcl"]["ground_truth"][0]))
            assert it["expected"]["name"] == gt_name
    again = bfcl_items(root, ["simple", "parallel", "irrelevance"], 3, FORMAT, 5, None, Counter())
    assert again == items


# --- general ability ---------------------------------------------------------------------------------------------

def test_general_items_and_loss(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    val = write_jsonl(tmp_path / "val.jsonl", [sample("n1", "no_tool", [None]), sample("t1", "tool", [None])])
    test = write_jsonl(tmp_path / "test.jsonl", [sample("n2", "no_tool", [None])])
    traces = write_jsonl(tmp_path / "traces.jsonl", [
        {"id": "n1", "source": "demo", "tools": [], "messages": [
            {"role": "user", "content": "What is the capital of Peru?"},
            {"role": "assistant", "content": "Lima is the capital of Peru."}]},
        {"id": "n2", "source": "demo", "tools": [], "messages": [
            {"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}]},
        {"id": "t1", "source": "demo", "tools": [], "messages": [
            {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ])
    items, info = general_items("auto", None, 1, val, test, traces, log=lambda _m: None)
    assert info["source"] == "heldout_no_tool" and [it["id"] for it in items] == ["n1", "n2"]
    items_path = write_jsonl(tmp_path / "general.jsonl", items)
    result = general_loss(tiny_model_dir, items_path, log=lambda _m: None)
    assert result["items"] == 2 and result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["loss_ci"][0] <= result["loss"] <= result["loss_ci"][1]
    # The same number by hand for one item: mean NLL of the answer tokens (chat template's end-of-turn included).
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    msgs = items[0]["messages"]
    ctx = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    a, b = tok(ctx, add_special_tokens=False)["input_ids"], tok(full[len(ctx):], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([a + b])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[len(a) - 1:-1], torch.tensor(b), reduction="sum").item()
    first = result["per_item"][0]
    assert first["tokens"] == len(b) and first["nll"] == pytest.approx(nll, rel=1e-5)


def test_general_items_from_alpaca():
    path = shared_data("alpaca", "alpaca_en_demo.json")
    items, info = general_items("alpaca", 5, 3, alpaca_path=path, log=lambda _m: None)
    assert len(items) == 5 and info["source"] == "alpaca"
    assert all(it["messages"][-1]["role"] == "assistant" and it["messages"][-1]["content"] for it in items)
