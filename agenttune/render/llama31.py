"""Llama 3.1's native JSON tool calling: tools in the first user message, `{"name", "parameters"}` calls, results in
the `ipython` role, one call per assistant turn.

Takes/gives: as agenttune.render.qwen25. The documented format (https://www.llama.com/docs/model-cards-and-prompt-
formats/llama3_1/#json-based-tool-calling, and the model card's chat template that implements it):
  <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nEnvironment: ipython\\nCutting Knowledge Date:
  December 2023\\nToday Date: 26 Jul 2024\\n\\n{system}<|eot_id|>, then the first user turn opening with the
  instruction "Given the following functions, please respond with a JSON for a function call ..." and each tool as
  `{"type": "function", "function": {...}}` JSON indented by 4, each followed by a blank line, then the user's text;
  an assistant call is `{"name": "...", "parameters": {...}}<|eot_id|>`; a result is an `ipython` turn.
Message texts are trimmed, as that template does, and a result is written as JSON (a string result in quotes): the
model card's template JSON-encodes every result that is a mapping or iterable, and a string is iterable in Jinja,
so that is what the served model sees. The format holds exactly one call and no text in a calling turn:
parallel calls become consecutive turns (ONE_CALL_PER_STEP), and the thought text of a calling turn is not written
(there is no place for it; the sample keeps it in `content` and the count `dropped_thought_turns` says how many).
"""

from __future__ import annotations

import json
import re

from agenttune.render.common import dump
from agenttune.render.families import family_messages
from agenttune.render.parsing import Call, Malformed, answered_unless_call, call_arguments, call_name, called, malformed
from agenttune.render.parsing import without_thinking

NAME = "llama31"
STOP = ("<|eot_id|>", "<|eom_id|>", "<|start_header_id|>")
ONE_CALL_PER_STEP = True
TURN_OPEN = ("<|start_header_id|>assistant<|end_header_id|>\n\n",)
TURN_END = ("<|eot_id|>", "<|eom_id|>")
DATE_LINES = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
TOOLS_INSTRUCTION = ("Given the following functions, please respond with a JSON for a function call with its proper "
                     "arguments that best answers the given prompt.\n\n"
                     'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
                     'value}.Do not use variables.\n\n')


def render(trace: dict, tool_format: str = "json_schema") -> list[dict]:
    return family_messages(trace, ONE_CALL_PER_STEP)


def dropped_thoughts(messages: list[dict]) -> int:
    """Calling turns whose thought text the format cannot hold."""
    return sum(1 for m in messages if m["role"] == "assistant" and m.get("tool_calls") and m["content"].strip())


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def call_json(call: dict) -> str:
    return f'{{"name": "{call["name"]}", "parameters": {dump(call["arguments"])}}}'


def render_text(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
    system = messages[0]["content"].strip() if messages and messages[0]["role"] == "system" else ""
    body = [m for m in messages if m["role"] != "system"]
    out = ["<|begin_of_text|>" + _header("system") + ("Environment: ipython\n" if tools else "") + DATE_LINES
           + system + "<|eot_id|>"]
    if tools:
        listing = "".join(json.dumps({"type": "function", "function": t}, ensure_ascii=False, indent=4) + "\n\n"
                          for t in tools)
        first, body = body[0], body[1:]
        out.append(_header("user") + TOOLS_INSTRUCTION + listing + first["content"].strip() + "<|eot_id|>")
    for m in body:
        if m["role"] == "assistant" and m.get("tool_calls"):
            if len(m["tool_calls"]) != 1:
                raise ValueError("llama31: an assistant turn holds exactly one call in this format")
            out.append(_header("assistant") + call_json(m["tool_calls"][0]) + "<|eot_id|>")
        elif m["role"] == "tool":
            out.append(_header("ipython") + dump(m["content"]) + "<|eot_id|>")
        else:
            out.append(_header(m["role"]) + m["content"].strip() + "<|eot_id|>")
    if add_generation_prompt:
        out.append(_header("assistant"))
    return "".join(out)


def model_text(message: dict) -> str:
    calls = message.get("tool_calls") or []
    return call_json(calls[0]) if calls else message["content"].strip()


def recognizes(text: str) -> bool:
    return ('{"name": "probe_tool_3f8a", "parameters": ' in text
            and "<|start_header_id|>ipython<|end_header_id|>" in text)


_CALL_START = re.compile(r'\{\s*"name"\s*:')


def parse(text: str):
    """One JSON object `{"name": ..., "parameters": {...}}` (an optional `<|python_tag|>` before it; `arguments`
    accepted for `parameters`) is a call. Other text, including JSON that is not a call (an answer may be data), is
    an answer; text that opens like a call (`{"name":`) but does not parse is malformed."""
    body = without_thinking(text)
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>"):].strip()
    try:
        obj = json.loads(body) if body.startswith("{") else None
    except json.JSONDecodeError as exc:
        if _CALL_START.match(body):
            return malformed(f"invalid JSON call: {exc.msg} (char {exc.pos}); the format holds one JSON object")
        obj = None
    if not (isinstance(obj, dict) and "name" in obj and ("parameters" in obj or "arguments" in obj)):
        return answered_unless_call(body, NAME)
    try:
        args = obj["parameters"] if "parameters" in obj else obj["arguments"]
        return called([Call(call_name(obj.get("name")), call_arguments(args))])
    except Malformed as exc:
        return malformed(str(exc))
