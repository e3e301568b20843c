"""Hard negatives: BM25 mining of general queries against tool lists (hardest first, same split), the three
kinds filling the configured positive:negative ratio in order, and the exact achieved ratio in stats."""

import json

import pytest

from agenttune.data import mix
from agenttune.common.atomic import read_jsonl
from agenttune.data.format import SPLITS, FormatError, assign_split, format_samples
from agenttune.demo.generator import generate_traces
from agenttune.demo.tools import TOOLS_BY_NAME
from agenttune.data.negatives import ToolListIndex, mined_trace, terms

from conftest import shared_data

WEATHER, SEARCH, CALC, EMAIL = (TOOLS_BY_NAME[n] for n in ("get_weather", "web_search", "calculator", "send_email"))


def test_terms_split_names_and_drop_stop_words():
    assert terms("What is the getWeather for Oslo_city?") == ["weather", "oslo", "city"]  # "get" is a stop word


def test_bm25_picks_the_tool_list_a_query_overlaps_most():
    index = ToolListIndex(capacity=10)
    for tools in ([WEATHER, CALC], [SEARCH, EMAIL], [WEATHER, CALC], [CALC]):
        index.add(tools)
    index.freeze()
    assert len(index) == 3  # the repeated list is stored once
    score, best = index.best("Will the weather be warm tomorrow, and what is the temperature?")
    assert best == 0 and score > 0
    assert index.best("Send an email to my boss")[1] == 1
    assert index.best("Compose a sonnet") == (0.0, -1)


def test_capacity_bounds_the_index():
    index = ToolListIndex(capacity=2)
    for tools in ([WEATHER], [SEARCH], [CALC], [WEATHER]):
        index.add(tools)
    index.freeze()
    assert [index.tools(i)[0]["name"] for i in range(len(index))] == ["get_weather", "web_search"] and index.full


def test_mined_trace_offers_tools_and_keeps_the_answer():
    general = {"id": "g:1", "source": "g", "tools": [], "meta": {"kind": "no_tool"},
               "messages": [{"role": "user", "content": "Describe the weather in spring."},
                            {"role": "assistant", "content": "Mild."}]}
    neg = mined_trace(general, [WEATHER], 3.21)
    assert neg["tools"] == [WEATHER] and neg["messages"] == general["messages"]
    assert neg["meta"] == {"kind": "no_tool", "mined_score": 3.21} and general["meta"] == {"kind": "no_tool"}


def _general_queries(n):
    topics = ["the weather and temperature in spring", "a poem about the sea", "stock market history",
              "how to send an email politely", "translate idioms", "the history of Rome", "search engines",
              "unit conversion tables", "calendar reform in 1582", "a recipe for bread"]
    return [{"id": f"q{i}", "source": "chat", "tools": [], "meta": {"kind": "no_tool"},
             "messages": [{"role": "user", "content": f"Write {i} sentences about {topics[i % len(topics)]}."},
                          {"role": "assistant", "content": f"Here are {i} sentences."}]} for i in range(n)]


@pytest.fixture()
def inputs(tmp_path):
    traces, general = tmp_path / "t.jsonl", tmp_path / "g.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in generate_traces(300, seed=11, no_tool_share=0.1)))
    general.write_text("".join(json.dumps(t) + "\n" for t in _general_queries(600)))
    return traces, general


def _cfg(**negatives):
    return {"split": {"val": 0.1, "test": 0.2},
            "format": {"templates": {"react": 1, "openai_json": 1}, "tool_formats": {"json_schema": 1},
                       "negatives": negatives}}


def _tool_names(sample):
    """The tool names in a json_schema tool list of a react/openai_json system prompt."""
    names = []
    for line in sample["messages"][0]["content"].splitlines():
        if line.startswith('{"name": '):
            names.append(json.loads(line)["name"])
    return tuple(names)


@pytest.mark.parametrize("ratio", [4, 2.5, 10])
def test_mined_negatives_hit_the_ratio_exactly_and_are_the_hardest(tmp_path, inputs, ratio):
    stats = format_samples(list(inputs), tmp_path / "out", _cfg(ratio=ratio, order=["mined"]), seed=3,
                           roles={"chat": "general"})
    for split in SPLITS:
        r = stats["ratio"][split]
        samples = read_jsonl(tmp_path / "out" / f"{split}.jsonl")
        pos = [s for s in samples if s["kind"] == "tool"]
        neg = [s for s in samples if s["kind"] == "no_tool"]
        assert (len(pos), len(neg)) == (r["positives"], r["negatives"])
        assert r["achieved"] == f"{len(pos)}:{len(neg)}"
        target = mix.negatives_target(len(pos), ratio)
        assert r["target_negatives"] == target
        assert len(neg) == min(target, r["candidates"]["mined"])
        assert all(s["negative_kind"] == "mined" for s in neg) and r["negatives_by_kind"]["mined"] == len(neg)
        # A mined negative is offered a tool list of a tool-using trace of the same split.
        split_lists = {_tool_names(s) for s in pos}
        assert all(_tool_names(s) in split_lists for s in neg)
        scores = sorted((s["mined_score"] for s in neg), reverse=True)
        assert all(x > 0 for x in scores)
        if scores:
            assert r["hardest_mined_scores"][0] == round(scores[0], 4)
    assert stats["ratio"]["target"] == f"{ratio:g}:1"


def test_hardest_first_against_all_scores(tmp_path, inputs):
    """The chosen mined negatives are exactly the top-scoring general queries of their split."""
    stats = format_samples(list(inputs), tmp_path / "out", _cfg(order=["mined"]), seed=3, roles={"chat": "general"})
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    chosen = {s["trace_id"]: s["mined_score"] for s in train if s.get("negative_kind") == "mined"}
    assert len(chosen) == stats["ratio"]["train"]["negatives_by_kind"]["mined"] > 0
    # Score every train general query against the train tool lists ourselves.
    index = ToolListIndex(512)
    traces = [json.loads(line) for line in inputs[0].read_text().splitlines()]
    for t in traces:
        if assign_split(t["id"], 0.1, 0.2, 3) == "train" and any(m.get("tool_calls") for m in t["messages"]):
            index.add(t["tools"])
    index.freeze()
    scores = {}
    for q in (json.loads(line) for line in inputs[1].read_text().splitlines()):
        if assign_split(q["id"], 0.1, 0.2, 3) == "train":
            scores[q["id"]] = index.best(q["messages"][0]["content"])[0]
    cutoff = min(chosen.values())
    assert all(abs(scores[i] - chosen[i]) < 1e-6 for i in chosen)
    assert all(score <= cutoff + 1e-6 for i, score in scores.items() if i not in chosen)  # stats round to 1e-6


def test_kinds_fill_in_order_and_shortfall_is_reported(tmp_path, inputs):
    user = tmp_path / "user.jsonl"
    user.write_text("".join(json.dumps({
        "id": f"u{i}", "source": "mine", "tools": [WEATHER, SEARCH],
        "messages": [{"role": "user", "content": f"What does the word weather{i} mean?"},
                     {"role": "assistant", "content": "A made-up word."}]}) + "\n" for i in range(6)))
    stats = format_samples([*inputs, user], tmp_path / "out", _cfg(order=["user", "no_tool", "mined"]), seed=3,
                           roles={"chat": "general", "mine": "negatives"})
    for split in SPLITS:
        r = stats["ratio"][split]
        taken, available = r["negatives_by_kind"], r["candidates"]
        assert taken["user"] == min(available["user"], r["target_negatives"])
        if taken["no_tool"] < available["no_tool"]:
            assert taken["mined"] == 0
        assert r["negatives"] == sum(taken[k] for k in ("user", "no_tool", "mined"))
        assert r["negatives"] == min(r["target_negatives"], sum(available.values()))
    assert sum(stats["ratio"][s]["negatives_by_kind"]["user"] for s in SPLITS) == 6


def test_ratio_null_keeps_every_negative_and_mines_none(tmp_path, inputs):
    stats = format_samples(list(inputs), tmp_path / "out", _cfg(ratio=None), seed=3, roles={"chat": "general"})
    for split in SPLITS:
        r = stats["ratio"][split]
        assert r["negatives_by_kind"]["mined"] == 0 and r["negatives_by_kind"]["no_tool"] == r["candidates"]["no_tool"]
    assert stats["ratio"]["target"] is None


def test_general_or_negative_data_that_calls_a_tool_is_refused(tmp_path, inputs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(generate_traces(5, seed=1, no_tool_share=0)[0] | {"source": "chat"}) + "\n")
    with pytest.raises(FormatError, match=r"bad.jsonl:1: id=demo-000000: source 'chat' has role 'general'"):
        format_samples([bad], tmp_path / "out", _cfg(), seed=3, roles={"chat": "general"})


def test_real_alpaca_mined_against_demo_tools(tmp_path):
    """Alpaca queries mined against the demo tool lists: the hardest ones share rare words with a tool."""
    from agenttune.traces.ingest import SourceSpec, ingest

    traces = tmp_path / "demo.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in generate_traces(400, seed=2)))
    alpaca = shared_data("alpaca", "alpaca_en_demo.json")
    ingest([SourceSpec("demo", str(traces), "canonical"), SourceSpec("alpaca", str(alpaca), "alpaca")],
           tmp_path / "all.jsonl", tmp_path / "q.jsonl", tmp_path / "s.json")
    stats = format_samples([tmp_path / "all.jsonl"], tmp_path / "out", _cfg(order=["mined"]), seed=3,
                           roles={"alpaca": "general"})
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    mined = sorted((s for s in train if s.get("negative_kind") == "mined"), key=lambda s: -s["mined_score"])
    assert len(mined) == stats["ratio"]["train"]["negatives"] > 50
    top = mined[0]
    query = next(m["content"] for m in top["messages"] if m["role"] == "user")
    tool_words = set(terms(top["messages"][0]["content"]))
    assert set(terms(query)) & tool_words
