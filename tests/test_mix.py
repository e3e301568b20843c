"""Mixing: exact targets for the positive:negative ratio and AgentTuning's eta, exact selection, proportional
interleaving; and, through format_samples, general chat mixed at eta into train/val and never into test."""

import json
from collections import Counter

import numpy as np
import pytest

from agenttune.data import mix
from agenttune.evaluate.items import items_from_samples
from agenttune.common.atomic import read_jsonl
from agenttune.data.format import format_samples
from agenttune.demo.generator import generate_traces


def test_targets_are_exact_and_round_half_up():
    assert mix.negatives_target(400, 4) == 100
    assert mix.negatives_target(58, 4) == 15  # 14.5 rounds up
    assert mix.negatives_target(57, 4) == 14  # 14.25
    assert mix.negatives_target(10, 2.5) == 4
    assert mix.general_target(100, 0.2) == 400  # eta 0.2: agent is one fifth of the mix
    assert mix.general_target(3, 0.2) == 12
    assert mix.general_target(7, 0.3) == 16  # 16.33
    assert mix.general_target(50, 1.0) == 0
    with pytest.raises(ValueError):
        mix.general_target(1, 0)
    with pytest.raises(ValueError):
        mix.negatives_target(1, 0)


def test_smallest_selects_exactly_k():
    us = np.random.default_rng(0).random(1000)
    for k in (0, 1, 17, 999, 1000, 1500):
        t = mix.smallest(us, k)
        assert int((us <= t).sum()) == min(k, 1000)


def test_interleave_is_proportional_and_keeps_each_streams_order():
    a, b = [f"a{i}" for i in range(8)], [f"b{i}" for i in range(32)]
    merged = list(mix.interleave(a, 8, b, 32))
    assert [x for x in merged if x[0] == "a"] == a and [x for x in merged if x[0] == "b"] == b
    # Every prefix holds the two streams within one item of their 1:4 proportion.
    for n in range(1, len(merged) + 1):
        assert abs(sum(x[0] == "a" for x in merged[:n]) - n / 5) <= 1
    assert list(mix.interleave(a, 8, [], 0)) == a and list(mix.interleave([], 0, b, 32)) == b


def _general(n: int) -> list[dict]:
    return [{"id": f"g{i}", "source": "chat", "tools": [], "meta": {"kind": "no_tool"},
             "messages": [{"role": "user", "content": f"Write a haiku about the number {i}."},
                          {"role": "assistant", "content": f"Haiku {i}."}]} for i in range(n)]


def test_general_chat_mixed_at_eta_never_in_test(tmp_path):
    traces, general = tmp_path / "t.jsonl", tmp_path / "g.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in generate_traces(200, seed=3, no_tool_share=0.2)))
    general.write_text("".join(json.dumps(t) + "\n" for t in _general(2000)))
    cfg = {"split": {"val": 0.1, "test": 0.2},
           "format": {"templates": {"react": 1, "tool_call": 1}, "tool_formats": {"react_list": 1},
                      "mix": {"eta": 0.2}, "negatives": {"order": ["no_tool"]}}}
    stats = format_samples([traces, general], tmp_path / "out", cfg, seed=1, roles={"chat": "general"})
    for split in ("train", "val"):
        e = stats["eta"][split]
        assert e["general"] == e["general_target"] == mix.general_target(e["agent"], 0.2) == 4 * e["agent"]
        assert e["achieved_value"] == 0.2
        samples = read_jsonl(tmp_path / "out" / f"{split}.jsonl")
        general_rows = [s for s in samples if s.get("general")]
        assert len(general_rows) == e["general"]
        assert all(s["kind"] == "no_tool" and s["template"] == "passthrough" and s["source"] == "chat"
                   for s in general_rows)
        # Spread through the file, not appended: each fifth of the file holds about a fifth of the agent samples.
        agent_positions = [i for i, s in enumerate(samples) if not s.get("general")]
        assert abs(np.mean(agent_positions) / len(samples) - 0.5) < 0.05
    test = read_jsonl(tmp_path / "out" / "test.jsonl")
    assert not [s for s in test if s.get("general")] and "test" not in stats["eta"]
    # Evaluation's items come from tool steps and no-tool negatives only.
    items = items_from_samples(test, "heldout", "test")
    assert {it["sample_id"] for it in items} <= {s["id"] for s in test}
    assert len(items) >= sum(1 for s in test if s["kind"] == "no_tool")
    assert stats["accounting"]["general"]["read"] == 2000
    assert stats["accounting"]["general"]["mixed_general"] == stats["eta"]["train"]["general"] + stats["eta"]["val"]["general"]


def test_not_enough_general_data_is_reported_not_hidden(tmp_path):
    traces, general = tmp_path / "t.jsonl", tmp_path / "g.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in generate_traces(100, seed=3)))
    general.write_text("".join(json.dumps(t) + "\n" for t in _general(30)))
    cfg = {"split": {"val": 0.1, "test": 0.2}, "format": {"templates": {"react": 1}, "tool_formats": {"react_list": 1},
                                                        "mix": {"eta": 0.2}, "negatives": {"order": ["no_tool"]}}}
    stats = format_samples([traces, general], tmp_path / "out", cfg, seed=1, roles={"chat": "general"})
    e = stats["eta"]["train"]
    assert e["general"] < e["general_target"] and e["achieved_value"] > 0.2
    assert e["achieved"] == f"{e['agent']}:{e['agent'] + e['general']}"
    counts = Counter(s.get("general", False) for s in read_jsonl(tmp_path / "out" / "train.jsonl"))
    assert counts[True] == e["general"]
