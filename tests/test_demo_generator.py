"""Tests for the demo trace generator and its mock tools (agenttune.demo)."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agenttune.common.atomic import write_jsonl
from agenttune.demo.generator import generate_traces
from agenttune.demo.tools import TOOLS, TOOLS_BY_NAME, execute, safe_eval
from agenttune.traces.canonical import validate_trace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def traces():
    return generate_traces(500, seed=13)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _schema_errors(schema: dict, value, where: str = "arguments") -> list[str]:
    """The JSON-schema subset the tool catalogue uses: type, enum, minimum/maximum, required, properties, items."""
    checks = {"object": lambda v: isinstance(v, dict), "string": lambda v: isinstance(v, str),
              "array": lambda v: isinstance(v, list), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    kind = schema.get("type")
    if kind and not checks[kind](value):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in enum")
    if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{where}: {value} out of range")
    if kind == "object":
        properties = schema.get("properties", {})
        errors += [f"{where}: missing required '{key}'" for key in schema.get("required", []) if key not in value]
        errors += [f"{where}: unknown key '{key}'" for key in value if key not in properties]
        for key, sub in value.items():
            if key in properties:
                errors += _schema_errors(properties[key], sub, f"{where}.{key}")
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            errors += _schema_errors(schema["items"], item, f"{where}[{i}]")
    return errors


def _calls(trace: dict) -> list[dict]:
    return [call for m in trace["messages"] if m["role"] == "assistant" for call in m.get("tool_calls") or []]


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]


def _leaves(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _leaves(value)
    else:
        yield obj


# --- the catalogue ------------------------------------------------------------------------------------


def test_catalogue_has_realistic_schemas():
    names = [tool["name"] for tool in TOOLS]
    assert len(names) >= 10 and len(set(names)) == len(names)
    for required in ["get_weather", "github_api", "calculator", "web_search", "create_calendar_event",
                     "currency_convert", "unit_convert", "stock_quote", "translate", "send_email"]:
        assert required in TOOLS_BY_NAME
    for tool in TOOLS:
        assert list(tool) == ["name", "description", "parameters"]
        assert tool["description"]
        params = tool["parameters"]
        assert params["type"] == "object" and params["properties"]
        assert set(params["required"]) <= set(params["properties"])
    jsonschema = pytest.importorskip("jsonschema")
    for tool in TOOLS:
        jsonschema.Draft202012Validator.check_schema(tool["parameters"])


def test_executors_are_deterministic_json():
    args = {"city": "Oslo", "unit": "fahrenheit"}
    first = execute("get_weather", args)
    assert first == execute("get_weather", dict(args)) and isinstance(json.loads(first), dict)
    assert json.loads(execute("currency_convert", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"})) == \
        {"amount": 100, "from": "USD", "to": "EUR", "rate": 0.92, "converted": 92.0}
    assert json.loads(execute("unit_convert", {"value": 100, "from_unit": "celsius", "to_unit": "fahrenheit"}))["result"] == 212
    assert json.loads(execute("translate", {"text": "See you tomorrow", "target_language": "de"}))["translated_text"] == "Bis morgen"
    with pytest.raises(KeyError):
        execute("rm_rf", {})


@pytest.mark.parametrize("expression, expected", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("2 ** 10", 1024), ("7 / 2", 3.5), ("10 / 4 * 2", 5),
    ("-3 + 5", 2), ("240 * 15 / 100", 36), ("0.1 + 0.2", 0.3), ("(1.5 + 2.5) ** 2 - 1", 15), ("84.3 * 18 / 100", 15.174),
])
def test_calculator_computes(expression, expected):
    assert safe_eval(expression) == expected
    assert json.loads(execute("calculator", {"expression": expression}))["result"] == expected


@pytest.mark.parametrize("expression", [
    "__import__('os')", "__import__('os').system('echo hi')", "open('/etc/passwd')", "x + 1", "2 ^ 3", "5 % 2",
    "[1, 2]", "'a' * 3", "1 / 0", "9 ** 9 ** 9", "(-8) ** 0.5", "True + 1", "lambda: 1", "",
])
def test_calculator_rejects(expression):
    with pytest.raises(ValueError):
        safe_eval(expression)
    assert "error" in json.loads(execute("calculator", {"expression": expression}))


# --- determinism --------------------------------------------------------------------------------------


def test_same_arguments_same_traces_and_bytes(tmp_path):
    first, second = generate_traces(200, seed=5), generate_traces(200, seed=5)
    assert first == second
    write_jsonl(tmp_path / "a.jsonl", first, compact=False)
    write_jsonl(tmp_path / "b" / "b.jsonl", second, compact=False)
    assert _sha256(tmp_path / "a.jsonl") == _sha256(tmp_path / "b" / "b.jsonl")


def test_independent_of_hash_seed():
    code = ("import hashlib, json; from agenttune.demo.generator import generate_traces; "
            "print(hashlib.sha256(json.dumps(generate_traces(150, 3), ensure_ascii=False).encode()).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        digests.add(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                                   text=True, check=True).stdout)
    assert len(digests) == 1


def test_different_seed_different_traces():
    assert generate_traces(50, seed=1) != generate_traces(50, seed=2)


def test_rejects_bad_arguments():
    assert generate_traces(0, seed=1) == []
    with pytest.raises(ValueError):
        generate_traces(10, seed=1, no_tool_share=1.5)
    with pytest.raises(ValueError):
        generate_traces(-1, seed=1)


def test_write_jsonl_format(tmp_path, traces):
    path = tmp_path / "demo.jsonl"
    write_jsonl(path, traces[:50], compact=False)  # how the demo_traces stage writes them
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert [json.loads(line) for line in lines] == traces[:50]
    assert list(json.loads(lines[0])) == ["id", "source", "tools", "messages", "meta"]
    assert lines[0].startswith('{"id": "demo-000000", "source": "demo", ')  # json.dumps' default separators
    assert [p.name for p in tmp_path.iterdir()] == ["demo.jsonl"]  # no temp file left behind
    everything = tmp_path / "all.jsonl"
    write_jsonl(everything, traces, compact=False)
    assert "é" in everything.read_text(encoding="utf-8")  # ensure_ascii=False keeps accents readable


# --- schema and structure -----------------------------------------------------------------------------


def test_every_trace_is_canonical(traces):
    for trace in traces:
        validate_trace(trace)
        assert trace["source"] == "demo"
        assert trace["messages"][0]["role"] == "user"
        assert trace["messages"][-1]["role"] == "assistant" and not trace["messages"][-1].get("tool_calls")


def test_ids_unique_and_sequential(traces):
    assert [t["id"] for t in traces] == [f"demo-{i:06d}" for i in range(len(traces))]


def test_calls_use_offered_tools_with_valid_arguments(traces):
    for trace in traces:
        offered = {tool["name"]: tool for tool in trace["tools"]}
        assert len(offered) == len(trace["tools"]) <= 4
        for call in _calls(trace):
            assert call["name"] in offered, trace["id"]
            assert _schema_errors(offered[call["name"]]["parameters"], call["arguments"]) == [], trace["id"]
            if call["name"] == "create_calendar_event":
                assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", call["arguments"]["date"])
                assert re.fullmatch(r"\d{2}:\d{2}", call["arguments"]["time"])


def test_arguments_pass_jsonschema(traces):
    jsonschema = pytest.importorskip("jsonschema")
    for trace in traces:
        for call in _calls(trace):
            jsonschema.validate(call["arguments"], TOOLS_BY_NAME[call["name"]]["parameters"])


def test_observations_follow_each_call_in_order(traces):
    for trace in traces:
        messages = trace["messages"]
        for i, message in enumerate(messages):
            calls = message.get("tool_calls") or []
            for j, call in enumerate(calls):
                result = messages[i + 1 + j]
                assert result["role"] == "tool" and result["name"] == call["name"], trace["id"]
                observation = json.loads(result["content"])
                assert isinstance(observation, dict) and "error" not in observation, trace["id"]
                assert result["content"] == execute(call["name"], call["arguments"])  # really the executor's output
            if calls:
                assert messages[i]["content"], "a tool-calling turn carries a one-sentence thought"


def test_final_answer_uses_observed_facts(traces):
    for trace in traces:
        observations = [json.loads(m["content"]) for m in trace["messages"] if m["role"] == "tool"]
        if not observations:
            continue
        answer = trace["messages"][-1]["content"]
        leaves = [leaf for obs in observations for leaf in _leaves(obs)]
        strings = [leaf for leaf in leaves if isinstance(leaf, str) and len(leaf) >= 3]
        numbers = [leaf for leaf in leaves if isinstance(leaf, (int, float)) and not isinstance(leaf, bool)]
        numbers += [n for s in strings for n in _numbers(s)]  # figures quoted inside search snippets
        answer_numbers = _numbers(answer)
        uses_string = any(s.lower() in answer.lower() for s in strings)
        uses_number = any(abs(a - b) <= 0.01 * max(1.0, abs(b)) for a in answer_numbers for b in numbers)
        assert uses_string or uses_number, trace["id"]


def test_meta(traces):
    for trace in traces:
        calls, meta = _calls(trace), trace["meta"]
        assert meta["steps"] == len(calls)
        if calls:
            assert meta == {"task": calls[0]["name"], "kind": "tool", "steps": len(calls)}
        else:
            assert meta == {"task": "no_tool", "kind": "no_tool", "steps": 0}


# --- mix and diversity --------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.0, 0.2, 0.35])
def test_no_tool_share(share):
    traces = generate_traces(500, seed=21, no_tool_share=share)
    no_tool = [t for t in traces if t["meta"]["kind"] == "no_tool"]
    assert abs(len(no_tool) / len(traces) - share) <= 0.05
    for trace in no_tool:
        assert 2 <= len(trace["tools"]) <= 4
        assert [m["role"] for m in trace["messages"]] == ["user", "assistant"]


def test_tool_traces_offer_distractors(traces):
    for trace in traces:
        used = {call["name"] for call in _calls(trace)}
        if used:
            assert 1 <= len(trace["tools"]) - len(used) <= 3


def test_multi_step_share(traces):
    tool_traces = [t for t in traces if t["meta"]["kind"] == "tool"]
    multi = [t for t in tool_traces if t["meta"]["steps"] >= 2]
    assert len(multi) / len(tool_traces) >= 0.2
    assert max(t["meta"]["steps"] for t in multi) == 3
    # each step's observation is in place before the next call, so later calls can use earlier results
    for trace in multi:
        roles = [m["role"] for m in trace["messages"]]
        assert roles == ["user"] + ["assistant", "tool"] * trace["meta"]["steps"] + ["assistant"]


def test_tool_coverage(traces):
    used = {call["name"] for trace in traces for call in _calls(trace)}
    assert len(used) >= 8
    assert len({t["meta"]["task"] for t in traces} - {"no_tool"}) >= 8


def test_query_diversity(traces):
    queries = [t["messages"][0]["content"] for t in traces]
    assert len(set(queries)) / len(queries) >= 0.9
    no_tool_queries = {t["messages"][0]["content"] for t in traces if t["meta"]["kind"] == "no_tool"}
    assert len(no_tool_queries) >= 40
