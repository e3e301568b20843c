import json

import pytest

from agenttune.traces.canonical import TraceError, read_traces, validate_trace

GOOD = {
    "id": "t1", "source": "unit",
    "tools": [{"name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {}}}],
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "name": "get_weather", "content": "4 C"},
        {"role": "assistant", "content": "4 C in Oslo."},
    ],
}


def _write(tmp_path, lines):
    p = tmp_path / "traces.jsonl"
    p.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return p


def test_good_trace_reads(tmp_path):
    p = _write(tmp_path, [json.dumps(GOOD)])
    assert [t["id"] for t in read_traces(p)] == ["t1"]


def test_malformed_line_names_file_and_line(tmp_path):
    p = _write(tmp_path, [json.dumps(GOOD), '{"id": "t2", "source": '])
    with pytest.raises(TraceError) as exc:
        list(read_traces(p))
    assert f"{p}:2" in str(exc.value) and "malformed JSON" in str(exc.value)


def test_missing_field_names_file_line_and_field(tmp_path):
    bad = dict(GOOD, id="t2")
    del bad["tools"]
    p = _write(tmp_path, [json.dumps(GOOD), json.dumps(bad)])
    with pytest.raises(TraceError) as exc:
        list(read_traces(p))
    msg = str(exc.value)
    assert f"{p}:2" in msg and "field 'tools'" in msg and "id=t2" in msg and "missing" in msg


@pytest.mark.parametrize("mutate, field, reason", [
    (lambda t: t["messages"][0].update(role="robot"), "messages[0].role", "unknown role"),
    (lambda t: t.update(messages=[]), "messages", "empty trace"),
    (lambda t: t["messages"][1]["tool_calls"][0].update(name="nope"), "messages[1].tool_calls[0].name", "not in the trace's tools"),
    (lambda t: t["messages"][1]["tool_calls"][0].update(arguments="{"), "messages[1].tool_calls[0].arguments", "expected dict"),
    (lambda t: t["messages"].pop(2), "messages[2].role", "missing tool result"),
    (lambda t: t["messages"].pop(), "messages[2].role", "must end on an assistant"),
])
def test_schema_violations(mutate, field, reason):
    trace = json.loads(json.dumps(GOOD))
    mutate(trace)
    with pytest.raises(TraceError) as exc:
        validate_trace(trace)
    assert exc.value.field == field and reason in exc.value.reason


def test_non_utf8_and_duplicate_ids(tmp_path):
    p = _write(tmp_path, [json.dumps(GOOD), b'{"id": "\xff"}'])
    with pytest.raises(TraceError, match="not valid UTF-8"):
        list(read_traces(p))
    p = _write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD)])
    with pytest.raises(TraceError, match="duplicate id"):
        list(read_traces(p))
