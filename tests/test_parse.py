"""Tests for the template parsers (agenttune.render.parse): hand-checked outputs for each template, and round trips."""

import json

import pytest

from agenttune.render import PARSERS, parse
from agenttune.render.parsing import Call, ParsedOutput

WEATHER = Call("get_weather", {"city": "Oslo", "unit": "celsius"})


def assert_call(result: ParsedOutput, *calls: Call):
    assert result.status == "call", result
    assert result.calls == calls
    assert result.final_answer is None


def assert_answer(result: ParsedOutput, answer: str):
    assert result.status == "answer", result
    assert result.calls == ()
    assert result.final_answer == answer


def assert_malformed(result: ParsedOutput):
    assert result.status == "malformed", result
    assert result.calls == ()
    assert result.error


# --- react -------------------------------------------------------------------------------------

def test_react_call():
    text = 'Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Oslo", "unit": "celsius"}'
    assert_call(parse("react", text), WEATHER)


def test_react_stops_at_observation_and_ignores_later_steps():
    text = ('Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Oslo", "unit": "celsius"}\n'
            'Observation: 4 degrees\nThought: now search\nAction: search\nAction Input: {"q": "x"}')
    assert_call(parse("react", text), WEATHER)


@pytest.mark.parametrize("text", [
    '  Thought: x\n  Action: get_weather()\n  Action Input: {"city": "Oslo", "unit": "celsius"}\n',
    'Action: `get_weather`\nAction Input: ```json\n{"city": "Oslo", "unit": "celsius"}\n```\nObservation:',
    'Action: get_weather\nAction Input: {"unit": "celsius",\n  "city": "Oslo"}\nI will wait for the result.',
    '<think>short</think>\nThought: go\naction: get_weather\naction input: {"city": "Oslo", "unit": "celsius"}',
])
def test_react_tolerates_formatting(text):
    assert_call(parse("react", text), WEATHER)


def test_react_non_json_input_kept_as_raw_string():
    assert_call(parse("react", "Action: search\nAction Input: weather in Oslo\n"), Call("search", "weather in Oslo"))


def test_react_empty_input_is_a_call_without_arguments():
    assert_call(parse("react", "Action: get_time\nAction Input:\nObservation: 12:00"), Call("get_time", {}))


def test_react_final_answer():
    assert_answer(parse("react", "Thought: I know this.\nFinal Answer: It is 4 °C in Oslo."), "It is 4 °C in Oslo.")


def test_react_plain_text_is_an_answer():
    assert_answer(parse("react", "  Hello there.  "), "Hello there.")


def test_react_first_of_answer_and_action_decides():
    assert_answer(parse("react", "Final Answer: 42\nAction: search\nAction Input: {}"), "42")
    assert_call(parse("react", 'Action: search\nAction Input: {"q": "x"}\nFinal Answer: 42'), Call("search", {"q": "x"}))


@pytest.mark.parametrize("text", [
    'Thought: go\nAction:\nAction Input: {"city": "Oslo"}',       # empty name
    'Thought: go\nAction: ()\nAction Input: {"city": "Oslo"}',    # only parens
    'Thought: go\nAction Input: {"city": "Oslo"}',                # no Action line
    "Thought: go\nAction: get_weather\nObservation: none",        # no Action Input
    "Thought: go\nAction: get_weather",
])
def test_react_malformed(text):
    assert_malformed(parse("react", text))


# --- openai_json -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}',
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"celsius\\"}"}',
    '{"function_call": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"celsius\\"}"}}',
    '{"tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}]}',
    '```json\n{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}\n```',
    'Sure, calling it now: {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}} done.',
])
def test_openai_json_call(text):
    assert_call(parse("openai_json", text), WEATHER)


def test_openai_json_parallel_and_no_arguments():
    text = json.dumps({"tool_calls": [{"function": {"name": "a", "arguments": "{}"}}, {"function": {"name": "b"}}]})
    assert_call(parse("openai_json", text), Call("a", {}), Call("b", {}))


def test_openai_json_prose_is_an_answer():
    assert_answer(parse("openai_json", "It is 4 °C in Oslo {roughly}."), "It is 4 °C in Oslo {roughly}.")


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Oslo"',              # truncated
    '{"arguments": {"city": "Oslo"}}',                                   # no name
    '{"name": "", "arguments": {}}',                                     # empty name
    '{"name": "get_weather", "arguments": "city=Oslo"}',                 # arguments string not JSON
    '{"name": "get_weather", "arguments": [1, 2]}',
    '{"tool_calls": []}',
    "{'name': 'get_weather'}",                                           # Python, not JSON
    'Calling: {"function_call": {"name": "get_weather", "arguments": ',  # broken call inside prose
])
def test_openai_json_malformed(text):
    assert_malformed(parse("openai_json", text))


# --- autogpt -----------------------------------------------------------------------------------

def autogpt(name, args):
    return json.dumps({"thoughts": {"text": "t", "reasoning": "r", "plan": "- a", "criticism": "c", "speak": "s"},
                       "command": {"name": name, "args": args}})


def test_autogpt_call():
    assert_call(parse("autogpt", autogpt("get_weather", {"city": "Oslo", "unit": "celsius"})), WEATHER)
    assert_call(parse("autogpt", "```\n" + autogpt("get_weather", {"city": "Oslo", "unit": "celsius"}) + "\n```"), WEATHER)


def test_autogpt_finish_and_prose_are_answers():
    assert_answer(parse("autogpt", autogpt("finish", {"response": "It is 4 °C."})), "It is 4 °C.")
    assert_answer(parse("autogpt", autogpt("do_nothing", {"reason": "no tool needed"})), "no tool needed")
    assert_answer(parse("autogpt", "I can answer directly: 4 °C."), "I can answer directly: 4 °C.")


@pytest.mark.parametrize("text", [
    autogpt("get_weather", {"city": "Oslo"})[:-3],                       # truncated JSON
    json.dumps({"thoughts": {"text": "t"}}),                             # no command
    json.dumps({"thoughts": {}, "command": {"args": {"city": "Oslo"}}}),  # no name
    json.dumps({"thoughts": {}, "command": {"name": "get_weather", "args": "Oslo"}}),
    json.dumps({"thoughts": {}, "command": "get_weather"}),
])
def test_autogpt_malformed(text):
    assert_malformed(parse("autogpt", text))


# --- tool_call ---------------------------------------------------------------------------------

def tool_call_block(call: Call) -> str:
    return "<tool_call>\n" + json.dumps({"name": call.name, "arguments": call.arguments}) + "\n</tool_call>"


def test_tool_call_single_and_parallel():
    assert_call(parse("tool_call", tool_call_block(WEATHER)), WEATHER)
    other = Call("get_time", {"tz": "Europe/Oslo"})
    text = "Let me check both.\n" + tool_call_block(WEATHER) + "\n" + tool_call_block(other)
    assert_call(parse("tool_call", text), WEATHER, other)


def test_tool_call_answer():
    assert_answer(parse("tool_call", "<think>\n\n</think>\n\nIt is 4 °C in Oslo."), "It is 4 °C in Oslo.")


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}',           # unclosed
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}\n</tool_call>',  # bad JSON
    '<tool_call>\n{"arguments": {"city": "Oslo"}}\n</tool_call>',                    # no name
    '<tool_call>\n</tool_call>',
    '{"name": "get_weather", "arguments": {}}\n</tool_call>',                        # stray closing tag
    tool_call_block(WEATHER) + '\n<tool_call>\n{"name": "x", "arguments": {',       # second block broken
])
def test_tool_call_malformed(text):
    assert_malformed(parse("tool_call", text))


# --- registry and round trips ------------------------------------------------------------------

def test_unknown_template():
    with pytest.raises(KeyError, match="no parser for prompt template 'xml'"):
        parse("xml", "anything")


RENDER = {
    "react": lambda c: f"Thought: I should call {c.name}.\nAction: {c.name}\nAction Input: {json.dumps(c.arguments, ensure_ascii=False)}\n",
    "openai_json": lambda c: json.dumps({"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}),
    "autogpt": lambda c: autogpt(c.name, c.arguments),
    "tool_call": tool_call_block,
    # The family templates write what their own model_text writes for a calling turn.
    "qwen25": tool_call_block,
    "qwen3": lambda c: "<think>\nI should call it.\n</think>\n\n" + tool_call_block(c),
    "llama31": lambda c: json.dumps({"name": c.name, "parameters": c.arguments}, ensure_ascii=False),
    "mistral": lambda c: "[TOOL_CALLS] " + json.dumps([{"name": c.name, "arguments": c.arguments, "id": "a1B2c3D4e"}]),
}


@pytest.mark.parametrize("template", sorted(PARSERS))
@pytest.mark.parametrize("call", [
    WEATHER,
    Call("math.factorial", {"number": 5}),
    Call("translate", {"text": "Hvor er stasjonen? \"Sentrum\"\n", "to": "ja", "hints": ["駅", 1.5, None, True]}),
    Call("nested", {"filter": {"a": [1, {"b": "c"}]}, "empty": {}}),
    Call("no_args", {}),
])
def test_round_trip(template, call):
    assert RENDER.keys() == PARSERS.keys()
    assert_call(parse(template, RENDER[template](call)), call)


@pytest.mark.parametrize("template, text", [
    ("tool_call", '{"name": "get_weather", "arguments": {"city": "Oslo"}}'),      # tags forgotten
    ("react", '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'),
    ("react", 'Final Answer: {"name": "get_weather", "arguments": {"city": "Oslo"}}'),
    ("autogpt", 'I will call {"name": "get_weather", "args": {"city": "Oslo"}} now'),
    ("openai_json", "Thought: x\nAction: get_weather\nAction Input: {}"),
])
def test_call_in_the_wrong_format_is_malformed_not_an_answer(template, text):
    assert_malformed(parse(template, text))
