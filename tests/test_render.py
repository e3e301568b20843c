"""Every prompt template round-trips through its own parser (render -> parse gives back the same tool calls and
the answers), in every tool-description format, on the demo traces and on the real data in ../shared/data;
parallel calls, loss flags, stop strings, the AutoGPT one-liner, pass-through, and the tool_call template's use
of a tokenizer's own tool prompt."""

import json
from pathlib import Path

import pytest
import yaml

from agenttune.demo.generator import generate_traces
from agenttune.render import (ALL, FAMILIES, PARSERS, TEMPLATE_MODULES, TEMPLATES, get_template, parse, passthrough,
                              tool_call)
from agenttune.render.common import turns
from agenttune.render.samples import render_trace
from agenttune.render.tool_formats import TOOL_FORMATS, describe_tools
from agenttune.traces.ingest import SourceSpec, ingest

from conftest import shared_data
from test_canonical import GOOD

REPO = Path(__file__).resolve().parents[1]
ONE_CALL_PER_STEP = {name for name, module in TEMPLATES.items() if module.ONE_CALL_PER_STEP}

PARALLEL = {
    "id": "p1", "source": "unit",
    "tools": [
        {"name": "get_weather", "description": "Weather now in a city.",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"name": "web_search", "description": "Search the web.",
         "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                        "required": ["query"]}},
    ],
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo and in Rome?"},
        {"role": "assistant", "content": "I'll check both cities.",
         "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                        {"name": "get_weather", "arguments": {"city": "Rome"}}]},
        {"role": "tool", "name": "get_weather", "content": "4 C"},
        {"role": "tool", "name": "get_weather", "content": "19 C"},
        {"role": "assistant", "content": "Oslo 4 C, Rome 19 C.", "loss": False},
        {"role": "user", "content": "And news about Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "web_search", "arguments": {"query": "Rome news"}}]},
        {"role": "tool", "name": "web_search", "content": "[]"},
        {"role": "assistant", "content": "Nothing new."},
    ],
}


def check_round_trip(trace: dict, template: str, tool_format: str, exact_answers: bool = True) -> int:
    """Render, parse every assistant turn, compare with the canonical calls / answers; return the turns checked."""
    sample = render_trace(trace, template, tool_format)
    family = FAMILIES.get(template)
    # A family sample keeps the trace's own turns (its chat template writes the system turn and the tools).
    assert [m["role"] for m in sample["messages"]][0] == "system" or family is not None
    expected_turns = [t for t in turns(trace, template in ONE_CALL_PER_STEP) if t["role"] == "assistant"]
    rendered = [m for m in sample["messages"] if m["role"] == "assistant"]
    assert len(rendered) == len(expected_turns)
    for message, turn in zip(rendered, expected_turns):
        # A family sample's assistant message holds its text and calls apart; the model writes model_text.
        parsed = parse(template, family.model_text(message) if family else message["content"])
        assert message["tool_calls"] == [{"name": c["name"], "arguments": c["arguments"]} for c in turn["calls"]]
        assert message["loss"] == turn["loss"]
        if turn["calls"]:
            assert parsed.status == "call", (template, tool_format, message["content"])
            assert [(c.name, c.arguments) for c in parsed.calls] == [(c["name"], c["arguments"]) for c in turn["calls"]]
        else:
            assert parsed.status == "answer", (template, tool_format, message["content"], parsed)
            if exact_answers:
                assert parsed.final_answer == turn["content"].strip()
    return len(rendered)


def test_registry_names_match_the_parsers_and_modules():
    assert set(TEMPLATES) == set(PARSERS) == {"react", "openai_json", "autogpt", "tool_call",
                                              "qwen25", "qwen3", "llama31", "mistral"}
    assert set(FAMILIES) == {"qwen25", "qwen3", "llama31", "mistral"}
    for name, module in ALL.items():
        assert module.NAME == name and get_template(name) is module
        assert isinstance(module.STOP, tuple) and all(isinstance(s, str) and s for s in module.STOP)
        assert isinstance(module.ONE_CALL_PER_STEP, bool)
    assert ONE_CALL_PER_STEP == {"react", "autogpt", "llama31"}
    assert set(TOOL_FORMATS) == {"json_schema", "react_list", "autogpt"}
    with pytest.raises(KeyError, match="unknown template 'nope'"):
        get_template("nope")


def test_the_template_registry_is_the_one_list_of_templates():
    """A template is one module that renders, parses and names its stops; the parsers, the stop strings and the
    schema's template names all follow the registry (TEMPLATE_MODULES), so none can drift from it."""
    assert list(TEMPLATES) == TEMPLATE_MODULES
    assert set(ALL) == set(TEMPLATES) | {passthrough.NAME}
    for name, module in ALL.items():
        assert module.__name__ == f"agenttune.render.{name}" and module.NAME == name
        assert callable(module.render)
    # Parsers: one per choosable template, its own module's; pass-through has none (it makes no items).
    assert PARSERS == {name: module.parse for name, module in TEMPLATES.items()}
    assert not hasattr(passthrough, "parse")
    for name, module in TEMPLATES.items():
        text = "Final Answer: 4 C"
        assert parse(name, text) == module.parse(text)
    with pytest.raises(KeyError, match="no parser for prompt template 'passthrough'"):
        parse("passthrough", "text")
    # Stops: every template that a model is prompted with stops somewhere; the strings are the module's own.
    for name, module in TEMPLATES.items():
        assert module.STOP and get_template(name).STOP is module.STOP
    # The schema accepts exactly the registered templates and tool formats.
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    fmt = schema["properties"]["format"]["properties"]
    assert sorted(fmt["templates"]["propertyNames"]["enum"]) == sorted(TEMPLATES)
    assert sorted(fmt["tool_formats"]["propertyNames"]["enum"]) == sorted(TOOL_FORMATS)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("tool_format", sorted(TOOL_FORMATS))
def test_demo_traces_round_trip(template, tool_format):
    checked = sum(check_round_trip(t, template, tool_format) for t in generate_traces(80, seed=5))
    assert checked > 80


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_parallel_calls_and_loss_flags(template):
    check_round_trip(PARALLEL, template, "json_schema")
    sample = render_trace(PARALLEL, template, "json_schema")
    assistant = [m for m in sample["messages"] if m["role"] == "assistant"]
    if template in ONE_CALL_PER_STEP:
        # One call per step: Oslo, then Rome, each followed by its own result, then the answer.
        assert [len(m["tool_calls"]) for m in assistant] == [1, 1, 0, 1, 0]
        assert [m["tool_calls"][0]["arguments"]["city"] for m in assistant[:2]] == ["Oslo", "Rome"]
        i = sample["messages"].index(assistant[1])
        assert "4 C" in sample["messages"][i - 1]["content"] and "19 C" not in sample["messages"][i - 1]["content"]
    else:
        assert [len(m["tool_calls"]) for m in assistant] == [2, 0, 1, 0]
    assert [m["loss"] for m in assistant if not m["tool_calls"]] == [False, True]
    if template in FAMILIES:  # the trace's own system text, as is: the family's template writes the rest
        assert sample["messages"][0]["content"] == "Be brief."
    else:
        assert sample["messages"][0]["content"].startswith("Be brief.\n\n")
    assert all(m["loss"] is False for m in sample["messages"] if m["role"] != "assistant")


def test_stop_strings_never_occur_in_a_valid_output():
    """Evaluation stops generation on a template's STOP strings; none may occur in the assistant text of any
    template, so that no template's stops cut another's valid output short."""
    stops = {s for module in ALL.values() for s in module.STOP}
    for trace in generate_traces(60, seed=2) + [PARALLEL, GOOD]:
        for template in TEMPLATES:
            for message in render_trace(trace, template, "autogpt")["messages"]:
                if message["role"] == "assistant":
                    text = FAMILIES[template].model_text(message) if template in FAMILIES else message["content"]
                    assert not [s for s in stops if s in text], (template, text)


def test_each_template_wraps_results_so_its_stop_string_marks_them():
    # Family templates keep results as tool turns; how their formats wrap them: tests/test_families.py.
    sample = {t: render_trace(GOOD, t, "json_schema")["messages"] for t in TEMPLATES if t not in FAMILIES}
    assert sample["react"][3]["content"] == "Observation: 4 C"
    assert sample["openai_json"][3]["content"] == '{"role": "tool", "name": "get_weather", "content": "4 C"}'
    assert sample["autogpt"][3]["content"] == "Command get_weather returned: 4 C"
    assert sample["tool_call"][3]["content"] == "<tool_response>\n4 C\n</tool_response>"
    assert sample["tool_call"][2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    for template, messages in sample.items():
        stop = get_template(template).STOP[0].strip()
        assert messages[3]["content"].startswith(stop), template


def test_autogpt_one_liner_and_one_tool_in_several_descriptions():
    tools = PARALLEL["tools"]
    assert describe_tools(tools, "autogpt") == (
        '1. Get Weather: "get_weather", args: "city": "<city>" - Weather now in a city.\n'
        '2. Web Search: "web_search", args: "query": "<query>", "k": "<k, optional>" - Search the web.')
    assert describe_tools([{"name": "noArgs", "description": "", "parameters": {}}], "autogpt") == (
        '1. No Args: "noArgs", args:')
    texts = {fmt: describe_tools(tools, fmt) for fmt in TOOL_FORMATS}
    assert len(set(texts.values())) == 3 and all("web_search" in t for t in texts.values())
    assert json.loads(texts["json_schema"].splitlines()[1]) == tools[1]
    with pytest.raises(KeyError, match="unknown tool format"):
        describe_tools(tools, "yaml")


def test_openai_json_answer_holding_call_like_json_stays_an_answer():
    answer = 'Here is an example:\n{"name": "Ada", "arguments": "none"}'
    trace = {**GOOD, "messages": [{"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": answer}]}
    content = render_trace(trace, "openai_json", "json_schema")["messages"][-1]["content"]
    assert json.loads(content) == {"content": answer}
    assert parse("openai_json", content).final_answer == answer
    check_round_trip(trace, "openai_json", "json_schema")


def test_react_drops_keyword_lines_from_a_sources_own_thought_text():
    thought = "Thought: the last call failed.\nAction: Call the 'get_weather' function again.\nLet me retry."
    trace = json.loads(json.dumps(GOOD))
    trace["messages"][1]["content"] = thought
    content = render_trace(trace, "react", "react_list")["messages"][2]["content"]
    assert content == ('Thought: the last call failed.\nLet me retry.\nAction: get_weather\n'
                       'Action Input: {"city": "Oslo"}')
    check_round_trip(trace, "react", "react_list")


def test_passthrough_keeps_text_and_loss_flags():
    trace = {"id": "a", "source": "ai", "tools": [], "meta": {"passthrough": True, "kind": "tool"},
             "messages": [{"role": "user", "content": "Task: act.\nAction: Operation"},
                          {"role": "assistant", "content": "Ok.", "loss": False},
                          {"role": "user", "content": "Q?"},
                          {"role": "assistant", "content": "Action: Operation\n```sql\nSELECT 1\n```", "loss": True}]}
    sample = render_trace(trace, "passthrough", "none")
    assert [(m["role"], m["content"], m["loss"]) for m in sample["messages"]] == [
        ("user", "Task: act.\nAction: Operation", False), ("assistant", "Ok.", False), ("user", "Q?", False),
        ("assistant", "Action: Operation\n```sql\nSELECT 1\n```", True)]
    assert sample["tool_format"] == "none" and all(m["tool_calls"] == [] for m in sample["messages"][1::2])
    with pytest.raises(ValueError, match="cannot show its 1 structured tools"):
        passthrough.render(GOOD)


# --- the tool_call template and the tokenizer's own tool prompt ------------------------------------------------

# A Qwen2.5-style chat template, trimmed to what matters here: a system turn that gets the tool prompt when
# tools= is given, and ChatML turns.
QWEN_LIKE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_smollm2_template_has_no_tools_so_the_builtin_prompt_is_written(smol_tokenizer):
    assert tool_call.native_system(smol_tokenizer) is None
    messages = render_trace(GOOD, "tool_call", "json_schema")["messages"]
    assert messages[0]["content"].startswith("You are a helpful assistant.\n\n# Tools\n")
    assert '<tools>\n{"name": "get_weather"' in messages[0]["content"]


def test_a_template_that_handles_tools_gives_its_own_tool_prompt(smol_tokenizer):
    import copy

    from agenttune.render.samples import make_renderers

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = QWEN_LIKE
    builder = tool_call.native_system(tokenizer)
    assert builder is not None
    logs = []
    renderers = make_renderers(tokenizer, "auto", log=logs.append)
    sample = render_trace(GOOD, "tool_call", "react_list", renderers)
    assert sample["tool_format"] == tool_call.NATIVE_TOOL_FORMAT and "own tool prompt is used" in logs[0]
    # The sample's plain system/user turns, through the plain template, are exactly what the template writes
    # for the same conversation with tools=.
    plain = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]}
                                           for m in sample["messages"][:2]], tokenize=False)
    native = tokenizer.apply_chat_template(
        [{"role": "system", "content": tool_call.DEFAULT_SYSTEM}, {"role": "user", "content": "Weather in Oslo?"}],
        tools=[{"type": "function", "function": t} for t in GOOD["tools"]], tokenize=False)
    assert plain == native
    check_round_trip(GOOD, "tool_call", "json_schema")
    assert make_renderers(tokenizer, "builtin", log=logs.append)["tool_call"](GOOD, "react_list")[1] == "react_list"
    make_renderers(smol_tokenizer, "auto", log=logs.append)
    assert "does not handle tools=" in logs[-1]


# --- real data ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_traces(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    sources = [
        SourceSpec("glaive", str(shared_data("glaive_toolcall", "glaive_toolcall_en_demo.json")), "sharegpt_tools"),
        SourceSpec("toolbench", str(shared_data("toolbench_example", "answer")), "openai_messages"),
        SourceSpec("parallel", str(shared_data("bfcl_v3", "BFCL_v3_parallel_multiple.json")), "bfcl", limit=60),
        SourceSpec("multiple", str(shared_data("bfcl_v3", "BFCL_v3_multiple.json")), "bfcl", limit=60),
        SourceSpec("irrelevance", str(shared_data("bfcl_v3", "BFCL_v3_irrelevance.json")), "bfcl", limit=30),
    ]
    ingest(sources, out / "t.jsonl", out / "q.jsonl", out / "s.json")
    return [json.loads(line) for line in (out / "t.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_real_traces_round_trip(real_traces, template):
    """glaive, ToolBench (with its own Thought/Action text), BFCL parallel calls and irrelevance items. Answer
    text is compared with the parser's normalisation in mind (it strips code fences around a whole answer and
    ends a ReAct answer at a keyword line), so only the status is checked for answers here."""
    checked = 0
    for i, trace in enumerate(real_traces):
        tool_format = sorted(TOOL_FORMATS)[i % 3]
        checked += check_round_trip(trace, template, tool_format, exact_answers=False)
    assert checked > 700


def test_real_agentinstruct_passthrough_keeps_loss_flags(tmp_path):
    path = shared_data("agentinstruct", "db_538.jsonl")
    ingest([SourceSpec("db", str(path), "agentinstruct")], tmp_path / "t.jsonl", tmp_path / "q", tmp_path / "s")
    flags = []
    for line in (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines():
        trace = json.loads(line)
        sample = render_trace(trace, "passthrough", "none")
        assert [m["content"] for m in sample["messages"]] == [m["content"] for m in trace["messages"]]
        flags += [m["loss"] for m in sample["messages"] if m["role"] == "assistant"]
    assert (flags.count(True), flags.count(False)) == (1109, 538)
