import json

from agenttune.data import SPLITS, assign_split, format_samples, read_samples, render_trace
from agenttune.parse import parse

from test_canonical import GOOD


def _traces(n):
    out = []
    for i in range(n):
        t = json.loads(json.dumps(GOOD))
        t["id"] = f"t{i:04d}"
        t["messages"][0]["content"] = f"Weather in city {i}?"
        out.append(t)
    return out


def test_split_is_by_trace_and_stable():
    ids = [f"x{i}" for i in range(2000)]
    a = [assign_split(i, 0.1, 0.2, seed=3) for i in ids]
    assert a == [assign_split(i, 0.1, 0.2, seed=3) for i in ids]
    assert abs(a.count("test") / 2000 - 0.2) < 0.03 and abs(a.count("val") / 2000 - 0.1) < 0.03
    assert a != [assign_split(i, 0.1, 0.2, seed=4) for i in ids]


def test_no_trace_in_two_splits_and_byte_identical(tmp_path):
    src = tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(t) + "\n" for t in _traces(300)))
    cfg = {"split": {"val": 0.1, "test": 0.2}, "format": {"templates": {"react": 1.0},
                                                        "tool_formats": {"react_list": 1, "json_schema": 1}}}
    stats = format_samples([src], tmp_path / "a", cfg, seed=1)
    format_samples([src], tmp_path / "b", cfg, seed=1)
    seen = {}
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        for s in read_samples(tmp_path / "a" / f"{split}.jsonl"):
            assert seen.setdefault(s["trace_id"], split) == split
    assert len(seen) == 300 == stats["traces_read"]
    assert sum(c["samples"] for c in stats["splits"].values()) == 300


def test_react_render_round_trips_through_the_parser():
    sample = render_trace(GOOD, "react", "json_schema")
    assistant = [m for m in sample["messages"] if m["role"] == "assistant"]
    call = parse("react", assistant[0]["content"])
    assert call.status == "call" and call.calls[0].name == "get_weather" and call.calls[0].arguments == {"city": "Oslo"}
    final = parse("react", assistant[1]["content"])
    assert final.status == "answer" and final.final_answer == "4 C in Oslo."
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert sample["messages"][3]["content"].startswith("Observation: ") and not sample["messages"][3]["loss"]
