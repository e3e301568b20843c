"""OpenAI function-calling template, written out as JSON text (what the chat API's `tools` / `tool_calls` carry).

The system turn lists the functions and says how to call them. An assistant step that calls functions is one
JSON object, `{"content": "<thought>", "tool_calls": [{"name": ..., "arguments": {...}}]}` ("content" only when
the step has text; several calls are parallel calls, as in the API); an answer is plain text (or, when the text
itself holds call-like JSON, the API's message object `{"content": "..."}`: see format_answer). Function results
come back as one user turn with one JSON line per result, `{"role": "tool", "name": ..., "content": ...}`
(the API's `role: tool` messages; the chat template only has system/user/assistant). Arguments are written as
JSON objects rather than the API's JSON-encoded strings: the same information, without a second layer of
escaping for a small model to learn (agenttune.evaluate.parse reads both). Generation stops if the model starts writing a
result itself.
"""

from __future__ import annotations

from agenttune.evaluate.parse import parse_openai_json
from agenttune.render.common import assistant, dump, join_system, own_system, system, turns, user
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
    if parse_openai_json(content).status == "answer":
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
