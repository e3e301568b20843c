"""Tests for the trace readers and ingest: hand-written fixtures holding every kind of bad record, the real
samples in ../shared/data (skipped when absent), unreadable files, determinism, atomic outputs, and the
"add a reader" example of docs/readers.md."""

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from agenttune.traces.canonical import read_traces
from agenttune.traces.ingest import IngestError, SourceSpec, ingest
from agenttune.traces.formats import READERS, get_reader
from agenttune.traces.readers.common import UnreadableFile, json_records

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def need_data(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path}")
    return path


def run(tmp_path: Path, *sources: SourceSpec):
    """Ingest into tmp_path; check the files against the returned stats; return (stats, traces, quarantine)."""
    out, quarantine_path, stats_path = tmp_path / "out.jsonl", tmp_path / "quarantine.jsonl", tmp_path / "stats.json"
    stats = ingest(list(sources), out, quarantine_path, stats_path)
    assert json.loads(stats_path.read_text(encoding="utf-8")) == stats
    for entry in stats["sources"] + [stats["total"]]:
        assert entry["read"] == entry["kept"] + entry["quarantined"] + entry["deduplicated"], entry
        assert entry["quarantined"] == sum(entry["quarantined_by_kind"].values()), entry
    traces = list(read_traces(out))  # re-validates every kept trace and the uniqueness of ids
    assert len(traces) == stats["total"]["kept"]
    quarantine = [json.loads(line) for line in quarantine_path.read_text(encoding="utf-8").splitlines()]
    assert len(quarantine) == stats["total"]["quarantined"]
    return stats, traces, quarantine


def write_lines(path: Path, lines: list) -> Path:
    """A JSONL file from dicts (dumped), str or raw bytes (written as they are)."""
    chunks = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        chunks.append(line if isinstance(line, bytes) else line.encode("utf-8"))
    path.write_bytes(b"\n".join(chunks) + b"\n")
    return path


def by_line(quarantine: list[dict]) -> dict[int, str]:
    return {entry["line"]: entry["kind"] for entry in quarantine}


WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


# --- registry ----------------------------------------------------------------------------------------------------


def test_registry_lists_every_reader_and_names_known_formats_on_error():
    assert set(READERS) == {"canonical", "agentinstruct", "sharegpt_tools", "openai_messages", "bfcl", "hf_dataset",
                            "alpaca", "seal_tools", "sgd"}
    for name, module in READERS.items():
        assert module.FORMAT == name and callable(module.records) and callable(module.to_trace)
    with pytest.raises(ValueError, match="unknown trace format 'nope'; known formats: agentinstruct, alpaca, bfcl"):
        get_reader("nope")


# --- agentinstruct -----------------------------------------------------------------------------------------------

AI_GOOD = {
    "id": "db_0",
    "conversations": [
        {"from": "human", "loss": None, "value": "Operate the database. Answer with Action: ..."},
        {"from": "gpt", "loss": False, "value": "Ok."},
        {"from": "human", "loss": None, "value": "How many rows?"},
        {"from": "gpt", "loss": True, "value": "Action: Operation\n```sql\nSELECT COUNT(*) FROM t\n```"},
        {"from": "human", "loss": None, "value": "[(3,)]"},
        {"from": "gpt", "loss": True, "value": "Action: Answer\nFinal Answer: [3]"},
    ],
}


def test_agentinstruct_fixture_quarantines_each_bad_record(tmp_path):
    path = write_lines(
        tmp_path / "ai.jsonl",
        [
            AI_GOOD,  # 1
            "",  # 2: blank, skipped
            b'{"id": "db_1", "conversations": [{"from": "human", "value": "caf\xe9"}]}',  # 3
            '{"id": "db_2", "conversations": [',  # 4
            {"id": "db_3", "conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]},  # 5
            {"id": "db_4", "conversations": []},  # 6
            {"id": "db_0", "conversations": [{"from": "human", "value": "other"}, {"from": "gpt", "value": "x"}]},  # 7
            {**AI_GOOD, "id": "db_copy"},  # 8: same content as line 1
            {"id": "db_5", "conversations": [{"from": "human", "value": "hi"}]},  # 9: ends on the user
            {
                "id": "os_9",
                "conversations": [{"role": "user", "content": "ls"}, {"role": "assistant", "content": "Act: finish"}],
            },
        ],
    )
    stats, traces, quarantine = run(tmp_path, SourceSpec("ai", str(path), "agentinstruct"))
    source = stats["sources"][0]
    assert (source["read"], source["kept"], source["quarantined"], source["deduplicated"]) == (9, 2, 6, 1)
    assert by_line(quarantine) == {
        3: "not_utf8",
        4: "malformed_json",
        5: "unknown_role",
        6: "empty_trace",
        7: "duplicate_id",
        9: "invalid_trace",
    }
    entries = {entry["line"]: entry for entry in quarantine}
    assert entries[3]["id"] is None and entries[3]["unit"] == "line" and entries[3]["path"] == str(path)
    assert entries[5]["id"] == "ai:db_3" and entries[5]["field"] == "conversations[1].from"
    assert entries[7]["id"] == "ai:db_0" and entries[7]["field"] == "id"

    native, role_content = traces
    assert native["id"] == "ai:db_0" and native["source"] == "ai" and native["tools"] == []
    assert native["meta"] == {"kind": "tool", "passthrough": True, "task": "db"}
    assert [m.get("loss", "absent") for m in native["messages"]] == ["absent", False, "absent", True, "absent", True]
    assert native["messages"][3]["content"] == AI_GOOD["conversations"][3]["value"]  # verbatim
    assert role_content["meta"]["task"] == "os"
    assert all("loss" not in m for m in role_content["messages"])


# --- sharegpt_tools ----------------------------------------------------------------------------------------------


def sharegpt(*turns, tools=json.dumps([WEATHER]), **extra):
    return {"conversations": [{"from": role, "value": value} for role, value in turns], "tools": tools, **extra}


def call(name, arguments):
    return json.dumps({"name": name, "arguments": arguments})


def test_sharegpt_tools_fixture(tmp_path):
    good_call = ("function_call", call("get_weather", {"city": "Oslo"}))
    records = [
        sharegpt(("human", "Weather in Oslo?"), good_call, ("observation", '{"temp_c": 4}'), ("gpt", "4 °C.")),  # 1
        sharegpt(("human", "Hi"), ("gpt", "Hello!"), tools=""),  # 2
        sharegpt(
            ("human", "x"), ("function_call", call("get_weather", "{city: Oslo")), ("observation", "{}"), ("gpt", "x")
        ),
        sharegpt(("human", "x"), ("function_call", "get_weather(city=Oslo)"), ("observation", "{}"), ("gpt", "x")),  # 4
        sharegpt(("human", "x"), ("function_call", call("get_time", {})), ("observation", "{}"), ("gpt", "x")),  # 5
        sharegpt(("human", "x"), ("function_call", call("get_weather", {})), ("observation", "{}"), ("gpt", "x")),  # 6
        sharegpt(("human", "x"), ("bot", "x")),  # 7
        sharegpt(("human", "x"), ("observation", "{}"), ("gpt", "x")),  # 8
        sharegpt(("human", "x"), ("gpt", "x"), tools="[{not json"),  # 9
        sharegpt(),  # 10
        sharegpt(("human", "Weather?"), ("gpt", "Which city?"), system="Be brief."),  # 11
    ]
    path = tmp_path / "glaive.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    stats, traces, quarantine = run(tmp_path, SourceSpec("sg", str(path), "sharegpt_tools"))
    assert stats["sources"][0]["read"] == 11 and stats["sources"][0]["kept"] == 3
    assert by_line(quarantine) == {
        3: "bad_arguments",
        4: "bad_arguments",
        5: "unknown_tool",
        6: "missing_required_argument",
        7: "unknown_role",
        8: "invalid_trace",
        9: "invalid_trace",
        10: "empty_trace",
    }
    assert {entry["unit"] for entry in quarantine} == {"index"}
    assert next(e for e in quarantine if e["line"] == 6)["id"] == "sg:6"

    tool_trace, chat, with_system = traces
    assert tool_trace["id"] == "sg:1" and tool_trace["tools"] == [WEATHER]
    assert tool_trace["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
    }
    assert tool_trace["messages"][2] == {"role": "tool", "name": "get_weather", "content": '{"temp_c": 4}'}
    assert tool_trace["meta"]["kind"] == "tool"
    assert chat["tools"] == [] and chat["meta"]["kind"] == "no_tool"
    assert with_system["messages"][0] == {"role": "system", "content": "Be brief."}


# --- openai_messages ---------------------------------------------------------------------------------------------


def toolbench_answer(train_messages, valid=True):
    finish = {
        "name": "Finish",
        "description": "Finish the task.",
        "parameters": {
            "type": "object",
            "properties": {"return_type": {"type": "string"}},
            "required": ["return_type"],
        },
    }
    generation = {"valid_data": valid, "finish_type": "give_answer", "function": [WEATHER, finish], "query": "q"}
    if train_messages is not None:
        generation["train_messages"] = train_messages
    return {"win": valid, "answer_generation": generation}


def test_openai_messages_fixture_directory(tmp_path):
    source = tmp_path / "openai"
    (source / "toolbench").mkdir(parents=True)
    modern = {
        "id": "m1",
        "tools": [{"type": "function", "function": WEATHER}],
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 4}'},
            {"role": "assistant", "content": "4 °C."},
        ],
    }
    legacy = {
        "functions": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Bergen?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city": "Bergen"}'},
            },
            {"role": "function", "name": "get_weather", "content": "rain"},
            {"role": "assistant", "content": "Rain."},
        ],
    }
    bad_args = {
        "id": "m3",
        "functions": [WEATHER],
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": '}},
            {"role": "function", "name": "get_weather", "content": "x"},
            {"role": "assistant", "content": "x"},
        ],
    }
    bad_role = {"id": "m4", "messages": [{"role": "developer", "content": "x"}, {"role": "assistant", "content": "x"}]}
    write_lines(source / "chats.jsonl", [modern, legacy, bad_args, bad_role])
    step1 = [
        {"role": "system", "content": "You are AutoGPT."},
        {"role": "user", "content": "\nWeather in Oslo?\nBegin!\n"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{\n  "city": "Oslo"\n}'},
        },
    ]
    full = step1 + [
        {"role": "function", "name": "get_weather", "content": '{"error": "", "response": "4 C"}'},
        {
            "role": "assistant",
            "content": "Done.",
            "function_call": {"name": "Finish", "arguments": '{"return_type": "give_answer", "final_answer": "4 C"}'},
        },
    ]
    (source / "toolbench" / "10_answer.json").write_text(json.dumps(toolbench_answer([step1, full]), indent=2))
    (source / "toolbench" / "11_answer.json").write_text(json.dumps(toolbench_answer(None, valid=False), indent=2))

    stats, traces, quarantine = run(tmp_path, SourceSpec("oa", str(source), "openai_messages"))
    assert (stats["sources"][0]["read"], stats["sources"][0]["kept"]) == (6, 3)
    assert [(e["path"].split("/")[-1], e["line"], e["unit"], e["id"], e["kind"]) for e in quarantine] == [
        ("chats.jsonl", 3, "line", "oa:m3", "bad_arguments"),
        ("chats.jsonl", 4, "line", "oa:m4", "unknown_role"),
        ("11_answer.json", 1, "file", "oa:toolbench/11_answer", "empty_trace"),
    ]
    by_id = {t["id"]: t for t in traces}
    assert set(by_id) == {"oa:m1", "oa:chats#2", "oa:toolbench/10_answer"}
    m1 = by_id["oa:m1"]["messages"]
    assert m1[1]["content"] == "Weather in Oslo?"
    assert m1[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
    }
    assert m1[3] == {"role": "tool", "name": "get_weather", "content": '{"temp_c": 4}'}
    assert by_id["oa:chats#2"]["messages"][2] == {"role": "tool", "name": "get_weather", "content": "rain"}
    toolbench = by_id["oa:toolbench/10_answer"]
    assert [m["role"] for m in toolbench["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert toolbench["messages"][-1]["tool_calls"] == [
        {"name": "Finish", "arguments": {"return_type": "give_answer", "final_answer": "4 C"}}
    ]
    assert toolbench["meta"] == {"task": "toolbench", "finish_type": "give_answer", "kind": "tool"}


# --- bfcl --------------------------------------------------------------------------------------------------------


def bfcl_question(qid, text, functions):
    return {"id": qid, "question": [[{"role": "user", "content": text}]], "function": functions}


AREA = {
    "name": "triangle_area",
    "description": "Area of a triangle.",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer"},
            "height": {"type": "float"},
            "unit": {"type": "string"},
            "exact": {"type": "boolean"},
            "type": {"type": "string", "description": "a property that happens to be called type"},
            "sides": {"type": "tuple", "items": {"type": "float"}},
        },
        "required": ["base", "height"],
    },
}


def test_bfcl_fixture_ground_truth_and_irrelevance(tmp_path):
    (tmp_path / "bfcl" / "possible_answer").mkdir(parents=True)
    questions = write_lines(
        tmp_path / "bfcl" / "BFCL_v3_simple.json",
        [
            bfcl_question("simple_0", "Area of base 10, height 5?", [AREA]),
            bfcl_question("simple_1", "Area of base 10?", [AREA]),
            bfcl_question("simple_2", "Area?", [AREA]),
            bfcl_question("simple_3", "No answer on file.", [AREA]),
        ],
    )
    write_lines(
        tmp_path / "bfcl" / "possible_answer" / "BFCL_v3_simple.json",
        [
            {
                "id": "simple_0",
                "ground_truth": [
                    {"triangle_area": {"base": [10], "height": [5.0, 5], "unit": ["units", ""], "exact": ["", True]}}
                ],
            },
            {"id": "simple_1", "ground_truth": [{"triangle_area": {"base": [10], "height": ["", 1.0]}}]},
            {"id": "simple_2", "ground_truth": [{"area": {"base": [1], "height": [1]}}]},
        ],
    )
    irrelevance = write_lines(
        tmp_path / "bfcl" / "BFCL_v3_irrelevance.json", [bfcl_question("irrelevance_0", "Capital of France?", [AREA])]
    )
    stats, traces, quarantine = run(
        tmp_path, SourceSpec("simple", str(questions), "bfcl"), SourceSpec("irr", str(irrelevance), "bfcl")
    )
    assert [(e["line"], e["id"], e["kind"]) for e in quarantine] == [
        (2, "simple:simple_1", "missing_required_argument"),
        (3, "simple:simple_2", "unknown_tool"),
    ]
    by_id = {t["id"]: t for t in traces}
    simple = by_id["simple:simple_0"]
    assert simple["messages"][-1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "triangle_area", "arguments": {"base": 10, "height": 5.0, "unit": "units"}}],
    }
    assert (
        simple["meta"]["eval_only"] is True
        and simple["meta"]["kind"] == "tool"
        and simple["meta"]["task"] == "bfcl_simple"
    )
    assert simple["meta"]["ground_truth"][0]["triangle_area"]["exact"] == ["", True]
    params = simple["tools"][0]["parameters"]
    assert params["type"] == "object" and params["properties"]["height"]["type"] == "number"
    assert params["properties"]["sides"] == {"type": "array", "items": {"type": "number"}}
    assert params["properties"]["type"]["type"] == "string"
    no_answer = by_id["simple:simple_3"]
    assert no_answer["messages"][-1] == {"role": "assistant", "content": "", "loss": False}
    assert no_answer["meta"]["ground_truth"] is None
    irr = by_id["irr:irrelevance_0"]
    assert irr["messages"][-1] == {"role": "assistant", "content": "", "loss": False}
    assert irr["meta"] == {"task": "bfcl_irrelevance", "kind": "no_tool", "eval_only": True, "ground_truth": []}
    assert irr["tools"][0]["name"] == "triangle_area"


# --- canonical ---------------------------------------------------------------------------------------------------

CANONICAL = {
    "id": "demo-1",
    "source": "demo",
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "name": "get_weather", "content": "4 C"},
        {"role": "assistant", "content": "4 °C."},
    ],
    "meta": {"kind": "tool"},
}


def with_messages(trace_id, messages):
    return {**CANONICAL, "id": trace_id, "messages": messages}


def test_canonical_fixture(tmp_path):
    user = {"role": "user", "content": "x"}
    path = write_lines(
        tmp_path / "canon.jsonl",
        [
            CANONICAL,
            with_messages("demo-2", [user, {"role": "robot", "content": "x"}]),
            with_messages(
                "demo-3",
                [
                    user,
                    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {}}]},
                    {"role": "tool", "name": "get_weather", "content": "x"},
                    {"role": "assistant", "content": "x"},
                ],
            ),
            with_messages(
                "demo-4",
                [user, {"role": "assistant", "content": "", "tool_calls": [{"name": "nope", "arguments": {}}]}],
            ),
            with_messages("demo-5", []),
            "[1, 2]",
        ],
    )
    _, traces, quarantine = run(tmp_path, SourceSpec("again", str(path), "canonical"))
    assert [t["id"] for t in traces] == ["again:demo-1"]
    assert traces[0]["source"] == "again" and traces[0]["messages"] == CANONICAL["messages"]
    assert by_line(quarantine) == {
        2: "unknown_role",
        3: "missing_required_argument",
        4: "unknown_tool",
        5: "empty_trace",
        6: "invalid_trace",
    }


# --- ingest across sources, limits, errors, determinism ----------------------------------------------------------


def test_duplicate_ids_across_sources_and_content_dedup(tmp_path):
    first = write_lines(tmp_path / "a.jsonl", [AI_GOOD])
    other = {"id": "db_0", "conversations": [{"from": "human", "value": "different"}, {"from": "gpt", "value": "x"}]}
    second = write_lines(tmp_path / "b.jsonl", [other])
    stats, traces, quarantine = run(
        tmp_path,
        SourceSpec("ai", str(first), "agentinstruct"),
        SourceSpec("ai", str(second), "agentinstruct"),  # same source name: same canonical id "ai:db_0"
        SourceSpec("ai_copy", str(first), "agentinstruct"),  # same content under another id
    )
    assert [t["id"] for t in traces] == ["ai:db_0"]
    assert [(e["path"], e["kind"]) for e in quarantine] == [(str(second), "duplicate_id")]
    assert [(s["kept"], s["quarantined"], s["deduplicated"]) for s in stats["sources"]] == [
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
    ]
    assert stats["total"]["read"] == 3 and stats["total"]["quarantined_by_kind"] == {"duplicate_id": 1}


def test_limit_caps_records_read(tmp_path):
    path = write_lines(
        tmp_path / "ai.jsonl",
        [
            {
                **AI_GOOD,
                "id": f"db_{n}",
                "conversations": AI_GOOD["conversations"][:1] + [{"from": "gpt", "value": str(n)}],
            }
            for n in range(5)
        ],
    )
    stats, traces, _ = run(tmp_path, SourceSpec("ai", str(path), "agentinstruct", limit=2))
    assert stats["sources"][0]["read"] == 2 and len(traces) == 2


@pytest.mark.parametrize(
    "name, content, fmt, message",
    [
        ("broken.json", '[{"conversations": []}, {"conv', "sharegpt_tools", "malformed JSON"),
        (
            "object.json",
            '{"conversations": []}',
            "sharegpt_tools",
            "expected a JSON list at the top level, found an object",
        ),
        ("number.json", "42", "agentinstruct", "found a number"),
        ("latin1.json", '[{"id": "caf\xe9"}]'.encode("latin-1"), "agentinstruct", "not valid UTF-8"),
        ("trailing.json", "[] []", "agentinstruct", "extra data"),
        ("missing.json", None, "agentinstruct", "cannot read: No such file"),
        ("ok.json", "[]", "no_such_format", "unknown trace format 'no_such_format'; known formats"),
    ],
)
def test_unreadable_source_raises_ingest_error_and_writes_nothing(tmp_path, name, content, fmt, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    good = write_lines(tmp_path / "good.jsonl", [AI_GOOD])
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    with pytest.raises(IngestError) as raised:
        ingest(
            [SourceSpec("good", str(good), "agentinstruct"), SourceSpec("bad", str(path), fmt)],
            out,
            tmp_path / "q.jsonl",
            tmp_path / "s.json",
        )
    assert message in str(raised.value) and str(path) in str(raised.value) and "'bad'" in str(raised.value)
    assert out.read_text() == "previous\n"
    assert not (tmp_path / "q.jsonl").exists() and not (tmp_path / "s.json").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_json_list_streaming_matches_json_load(tmp_path, monkeypatch):
    monkeypatch.setattr("agenttune.traces.readers.common._CHUNK", 5)  # tiny windows: elements and numbers cross chunk edges
    elements = [
        {"a": "x]y,z", "b": [1, 2, {"c": "é"}]},
        12345678901234567890,
        -1.5e10,
        "str[ing",
        None,
        [],
        {"k": "\u2028"},
    ]
    path = tmp_path / "list.json"
    path.write_text(
        "\ufeff  [\n " + ",\n  ".join(json.dumps(e, ensure_ascii=False) for e in elements) + "\n]\n", encoding="utf-8"
    )
    records = list(json_records(path))
    assert [r.data for r in records] == elements
    assert [r.line for r in records] == list(range(1, len(elements) + 1)) and {r.unit for r in records} == {"index"}


def test_ingest_is_deterministic(tmp_path):
    sources = [SourceSpec("ai", str(write_lines(tmp_path / "ai.jsonl", [AI_GOOD, "{bad", AI_GOOD])), "agentinstruct")]
    if DATA.exists():
        sources.append(
            SourceSpec("glaive", str(DATA / "glaive_toolcall" / "glaive_toolcall_en_demo.json"), "sharegpt_tools")
        )
        sources.append(SourceSpec("toolbench", str(DATA / "toolbench_example" / "answer"), "openai_messages"))
    outputs = []
    for attempt in ("one", "two"):
        folder = tmp_path / attempt
        ingest(sources, folder / "out.jsonl", folder / "q.jsonl", folder / "stats.json")
        outputs.append([(folder / name).read_bytes() for name in ("out.jsonl", "q.jsonl", "stats.json")])
    assert outputs[0] == outputs[1]


def test_hf_dataset_source_syntax_and_mapping_without_loading():
    hf = get_reader("hf_dataset")
    assert hf.parse_source("THUDM/AgentInstruct?split=db&format=agentinstruct") == (
        "THUDM/AgentInstruct",
        "db",
        "agentinstruct",
    )
    assert hf.parse_source("org/data?format=sharegpt_tools") == ("org/data", "train", "sharegpt_tools")
    with pytest.raises(UnreadableFile, match="format="):
        hf.parse_source("org/data")
    trace = hf.to_trace({"format": "agentinstruct", "row": AI_GOOD}, "hf")
    assert trace["messages"][1] == {"role": "assistant", "content": "Ok.", "loss": False}


# --- the example of docs/readers.md ------------------------------------------------------------------------------


def test_docs_add_a_reader_example_works(tmp_path, monkeypatch):
    doc = (REPO / "docs" / "readers.md").read_text(encoding="utf-8")
    section = doc.split("## Adding a reader", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "    qa_csv,\n" in section  # the registry entry
    module_path = tmp_path / "qa_csv.py"
    module_path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("qa_csv_doc_example", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(READERS, module.FORMAT, module)

    csv_path = tmp_path / "faq.csv"
    csv_path.write_text(
        'id,question,answer\nq1,What is 2+2?,4\nq2,,no question\nq3,"Two\nlines?",yes\nq4,What is 2+2?,4\n',
        encoding="utf-8",
    )
    stats, traces, quarantine = run(tmp_path, SourceSpec("faq", str(csv_path), "qa_csv"))
    assert [t["id"] for t in traces] == ["faq:q1", "faq:q3"]
    assert traces[1]["messages"] == [
        {"role": "user", "content": "Two\nlines?"},
        {"role": "assistant", "content": "yes"},
    ]
    assert [(e["line"], e["id"], e["field"]) for e in quarantine] == [(3, "faq:q2", "question")]
    assert stats["sources"][0]["deduplicated"] == 1


# --- the real data in ../shared/data -----------------------------------------------------------------------------


def report(stats):
    for s in stats["sources"]:
        print(
            f"{s['name']}: read {s['read']} kept {s['kept']} quarantined {s['quarantined']} {s['quarantined_by_kind']} deduplicated {s['deduplicated']}"
        )


def counts(stats):
    return [(s["read"], s["kept"], s["quarantined"], s["deduplicated"]) for s in stats["sources"]]


def test_real_agentinstruct_db_538_keeps_loss_flags(tmp_path):
    path = need_data("agentinstruct/db_538.jsonl")
    stats, traces, _ = run(tmp_path, SourceSpec("db", str(path), "agentinstruct"))
    report(stats)
    assert counts(stats) == [(538, 538, 0, 0)]
    flags = Counter(m.get("loss", "absent") for t in traces for m in t["messages"] if m["role"] == "assistant")
    assert flags == Counter({True: 1109, False: 538})
    assert all("loss" not in m for t in traces for m in t["messages"] if m["role"] == "user")
    assert all(t["tools"] == [] and t["meta"]["passthrough"] and t["meta"]["task"] == "db" for t in traces)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [m["content"] for m in traces[7]["messages"]] == [turn["value"] for turn in raw[7]["conversations"]]


def test_real_agentinstruct_role_content_samples(tmp_path):
    folder = need_data("agentinstruct")
    tasks = ["os", "db", "alfworld", "kg", "mind2web", "webshop"]
    sources = [SourceSpec(f"ai_{t}", str(folder / f"agenttuning_{t}_sample_raw.json"), "agentinstruct") for t in tasks]
    stats, traces, _ = run(tmp_path, *sources)
    report(stats)
    assert counts(stats) == [(5, 5, 0, 0)] * 6
    assert Counter(t["meta"]["task"] for t in traces) == Counter({t: 5 for t in tasks})
    assert all("loss" not in m for t in traces for m in t["messages"])


def test_real_glaive_toolcall(tmp_path):
    path = need_data("glaive_toolcall/glaive_toolcall_en_demo.json")
    stats, traces, quarantine = run(tmp_path, SourceSpec("glaive", str(path), "sharegpt_tools"))
    report(stats)
    assert counts(stats) == [(300, 265, 0, 35)]  # 35 exact repeats in the file, nothing malformed
    kinds = Counter(t["meta"]["kind"] for t in traces)
    assert kinds["tool"] > 100 and kinds["no_tool"] > 100
    calls = [c for t in traces for m in t["messages"] for c in m.get("tool_calls", [])]
    assert calls and all(isinstance(c["arguments"], dict) for c in calls)


def test_real_toolbench_answers(tmp_path):
    path = need_data("toolbench_example/answer")
    stats, traces, quarantine = run(tmp_path, SourceSpec("toolbench", str(path), "openai_messages"))
    report(stats)
    assert counts(stats) == [(15, 12, 3, 0)]
    assert stats["sources"][0]["quarantined_by_kind"] == {"empty_trace": 2, "unknown_tool": 1}
    assert {e["id"] for e in quarantine if e["kind"] == "empty_trace"} == {
        "toolbench:G1_answer/69_ChatGPT_DFS_woFilter_w2",
        "toolbench:G3_answer/8_ChatGPT_DFS_woFilter_w2",
    }
    for trace in traces:
        assert trace["messages"][0]["role"] == "system" and trace["messages"][1]["role"] == "user"
        assert any(m["role"] == "tool" for m in trace["messages"])
        assert trace["messages"][-1]["tool_calls"][-1]["name"] == "Finish"
    first = next(t for t in traces if t["id"] == "toolbench:G1_answer/10_ChatGPT_DFS_woFilter_w2")
    assert [m["role"] for m in first["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert first["messages"][4]["tool_calls"] == [
        {"name": "transitaire_for_transitaires", "arguments": {"is_id": "ACT_AGENCE_CALEDONIENNE_DE_TRANSIT"}}
    ]


def test_real_bfcl(tmp_path):
    folder = need_data("bfcl_v3")
    categories = ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"]
    sources = [SourceSpec(f"bfcl_{c}", str(folder / f"BFCL_v3_{c}.json"), "bfcl") for c in categories]
    stats, traces, quarantine = run(tmp_path, *sources)
    report(stats)
    assert counts(stats) == [(400, 398, 2, 0), (200, 200, 0, 0), (200, 200, 0, 0), (200, 200, 0, 0), (240, 240, 0, 0)]
    assert [(e["id"], e["kind"]) for e in quarantine] == [
        ("bfcl_simple:simple_200", "missing_required_argument"),
        ("bfcl_simple:simple_363", "unknown_tool"),
    ]
    by_id = {t["id"]: t for t in traces}
    assert by_id["bfcl_simple:simple_0"]["messages"][-1]["tool_calls"] == [
        {"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "units"}}
    ]
    assert by_id["bfcl_multiple:multiple_0"]["messages"][-1]["tool_calls"] == [
        {"name": "triangle_properties.get", "arguments": {"side1": 5, "side2": 4, "side3": 3}}
    ]
    assert len(by_id["bfcl_parallel:parallel_0"]["messages"][-1]["tool_calls"]) == 2
    irrelevance = [t for t in traces if t["source"] == "bfcl_irrelevance"]
    assert all(
        t["meta"]["kind"] == "no_tool" and t["messages"][-1] == {"role": "assistant", "content": "", "loss": False}
        for t in irrelevance
    )
    assert all(t["meta"]["eval_only"] for t in traces)


# --- alpaca (general chat for mixing and mining) -------------------------------------------------------------------


def test_alpaca_fixture(tmp_path):
    records = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Translate.", "input": "Hallo", "output": "Hello", "system": "Be terse.",
         "history": [["Hi", "Hello!"]]},
        {"instruction": "No answer here.", "input": ""},
        {"instruction": 7, "output": "x"},
        {"instruction": "Bad history.", "output": "x", "history": [["only one"]]},
        {"instruction": "   ", "output": "x"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    stats, traces, quarantine = run(tmp_path, SourceSpec("chat", str(path), "alpaca"))
    assert counts(stats) == [(7, 2, 4, 1)]
    assert [(q["line"], q["unit"], q["field"]) for q in quarantine] == [
        (3, "index", "output"), (4, "index", "instruction"), (5, "index", "history[0]"), (6, "index", "instruction")]
    assert quarantine[3]["kind"] == "empty_trace"
    assert traces[0] == {"id": "chat:1", "source": "chat", "tools": [], "meta": {"kind": "no_tool"},
                         "messages": [{"role": "user", "content": "Name a colour."},
                                      {"role": "assistant", "content": "Blue."}]}
    assert [(m["role"], m["content"]) for m in traces[1]["messages"]] == [
        ("system", "Be terse."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Translate.\n\nHallo"),
        ("assistant", "Hello")]


def test_real_alpaca(tmp_path):
    path = need_data("alpaca/alpaca_en_demo.json")
    stats, traces, _ = run(tmp_path, SourceSpec("alpaca", str(path), "alpaca"))
    report(stats)
    assert counts(stats) == [(999, 985, 0, 14)]  # 14 exact repeats in the file
    with_input = [t for t in traces if "\n\n" in t["messages"][0]["content"]]
    assert len(with_input) > 350 and all(t["tools"] == [] and len(t["messages"]) == 2 for t in traces)
