"""OpenAI function-calling template, written out as JSON text (what the chat API's `tools` / `tool_calls` carry).

Takes: a canonical trace (`render`), or the text a model wrote for one step (`parse`).
Gives: the sample messages in this format, or the `ParsedOutput` the text amounts to.

The system turn lists the functions and says how to call them. An assistant step that calls functions is one
JSON object, `{"content": "<thought>", "tool_calls": [{"name": ..., "arguments": {...}}]}` ("content" only when
the step has text; several calls are parallel calls, as in the API); an answer is plain text (or, when the text
itself holds call-like JSON, the API's message object `{"content": "..."}`: see format_answer). Function results
come back as one user turn with one JSON line per result, `{"role": "tool", "name": ..., "content": ...}`
(the API's `role: tool` messages; the chat template only has system/user/assistant). Arguments are written as
JSON objects rather than the API's JSON-encoded strings: the same information, without a second layer of
escaping for a small model to learn (`parse` reads both). Generation stops if the model starts writing a
result itself.
"""

from __future__ import annotations

import re

from agenttune.render.common import assistant, dump, join_system, own_system, system, turns, user
from agenttune.render.parsing import (Call, Malformed, ParsedOutput, answered, answered_unless_call, call_arguments,
                                      call_name, called, decode_prefix, find_json_object, malformed, unfence,
                                      without_thinking)
from agenttune.render.tool_formats import describe_tools

NAME = "openai_json"
STOP = ('{"role": "tool"',)
ONE_CALL_PER_STEP = False

INSTRUCTION = """You are a helpful assistant with access to the following functions:

{tools}

To call functions, reply with only a JSON object:
{{"tool_calls": [{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}]}}
List several calls to make them in parallel. Function results come back as JSON lines with "role": "tool".
If no function is needed, or once you have what you need, answer in plain text."""


def format_calls(content: str, calls: list[dict]) -> str:
    obj: dict = {"content": content} if content else {}
    obj["tool_calls"] = [{"name": c["name"], "arguments": c["arguments"]} for c in calls]
    return dump(obj)


def format_answer(content: str) -> str:
    """Plain text; but an answer that itself holds call-like JSON (a JSON example with a "name" key, say) is
    written as the API's assistant message object `{"content": "..."}`, so it cannot be read as a call."""
    if parse(content).status == "answer":
        return content
    return dump({"content": content})


def format_result(result: dict) -> str:
    return dump({"role": "tool", "name": result["name"], "content": result["content"]})


def render(trace: dict, tool_format: str = "json_schema") -> list[dict]:
    instructions = INSTRUCTION.format(tools=describe_tools(trace["tools"], tool_format))
    messages = [system(join_system(own_system(trace), instructions))]
    for turn in turns(trace):
        if turn["role"] == "user":
            messages.append(user(turn["content"]))
        elif turn["role"] == "assistant":
            content = turn["content"].strip()
            body = format_calls(content, turn["calls"]) if turn["calls"] else format_answer(content)
            messages.append(assistant(body, turn["calls"], turn["loss"]))
            if turn["results"]:
                messages.append(user("\n".join(format_result(r) for r in turn["results"])))
    return messages


# --- parsing ---------------------------------------------------------------------------------------------------

_CALL_KEYS = ("name", "function_call", "tool_calls", "function")
# Evidence, inside prose, that the model tried to emit a call object.
_CALL_HINT = re.compile(r'"(?:function_call|tool_calls|arguments)"\s*:')


def _call(obj) -> Call:
    if not isinstance(obj, dict):
        raise Malformed(f"a call must be a JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("function"), dict):  # a tool_calls item: {"type": "function", "function": {...}}
        obj = obj["function"]
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    return Call(call_name(obj.get("name")), call_arguments(args))


def _calls(obj) -> list[Call]:
    if isinstance(obj, list):
        if not obj:
            raise Malformed("empty list of calls")
        return [_call(item) for item in obj]
    if not isinstance(obj, dict):
        raise Malformed(f"expected a JSON object, got {type(obj).__name__}")
    if "tool_calls" in obj:
        if not isinstance(obj["tool_calls"], list) or not obj["tool_calls"]:
            raise Malformed("tool_calls must be a non-empty list")
        return [_call(item) for item in obj["tool_calls"]]
    if "function_call" in obj:
        return [_call(obj["function_call"])]
    if "name" in obj or "function" in obj:
        return [_call(obj)]
    raise Malformed("JSON object without a function name")


def parse(text: str) -> ParsedOutput:
    """OpenAI-style JSON: `{"name", "arguments"}` (arguments may be a JSON-encoded string),
    `{"function_call": {...}}`, `{"tool_calls": [{"function": {...}}]}`, or a list of calls.

    Output that starts with `{` or `[` is a call attempt and must parse; prose is an answer,
    unless it embeds something that looks like a call object (then that object is the call,
    or the output is malformed if it cannot be decoded).
    """
    body = unfence(without_thinking(text))
    try:
        if body.startswith(("{", "[")):
            try:
                obj = decode_prefix(body)
            except ValueError as exc:
                return malformed(str(exc))
            if isinstance(obj, dict) and not any(k in obj for k in _CALL_KEYS) and isinstance(obj.get("content"), str):
                return answered(obj["content"])  # an assistant message object without calls
            return called(_calls(obj))
        if _CALL_HINT.search(body) or re.search(r'\{\s*"name"\s*:', body):
            obj = find_json_object(body, _CALL_KEYS)
            if obj is None:
                return malformed("call-like JSON in the text could not be decoded")
            return called(_calls(obj))
    except Malformed as exc:
        return malformed(str(exc))
    return answered_unless_call(body, NAME)
