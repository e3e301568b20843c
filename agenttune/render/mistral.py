"""Mistral's native tool format (tokenizer v3, Mistral-7B-Instruct-v0.3 and later v3 models): `[AVAILABLE_TOOLS]`
before the last user turn, `[TOOL_CALLS]` JSON lists with 9-character call ids, `[TOOL_RESULTS]` with the call id.

Takes/gives: as agenttune.render.qwen25. The documented format (https://docs.mistral.ai/guides/tokenization/,
mistral-common's v3 tokenizer): `<s>`, then per user turn `[INST] {text}[/INST]`; the last user turn is preceded by
`[AVAILABLE_TOOLS] [{"type": "function", "function": {...}}, ...][/AVAILABLE_TOOLS]` and carries the system text
(`[INST] {system}\\n\\n{text}[/INST]`), which is why renders are not prefix-stable; an answer is ` {text}</s>`; a
calling turn is `[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": "<9 alphanumerics>"}, ...]</s>` (a list:
parallel calls are one turn); a result is `[TOOL_RESULTS] {"content": ..., "call_id": ...}[/TOOL_RESULTS]`.
Call ids are a hash of the trace id and the call's position (deterministic; the same trace gets the same ids). The
format has no place for thought text beside calls: it is not written (counted, as for llama31).
"""

from __future__ import annotations

import json
import re

from agenttune.render.common import dump
from agenttune.render.families import family_messages
from agenttune.render.parsing import Call, Malformed, answered_unless_call, call_arguments, call_name, called, malformed
from agenttune.render.parsing import without_thinking

NAME = "mistral"
STOP = ("</s>", "[TOOL_RESULTS]", "[INST]")
ONE_CALL_PER_STEP = False
SPLIT_AT_USER_TURNS = True  # the render changes with the last user turn: train/val samples are cut at user turns
TURN_OPEN = ("[/INST]", "[/TOOL_RESULTS]", "</s>")  # "</s>": an assistant turn right after another one
TURN_END = ("</s>",)
CALL_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def render(trace: dict, tool_format: str = "json_schema") -> list[dict]:
    return family_messages(trace, ONE_CALL_PER_STEP, with_ids=True)


def dropped_thoughts(messages: list[dict]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant" and m.get("tool_calls") and m["content"].strip())


def calls_text(calls: list[dict], ids: list[str]) -> str:
    if len(ids) != len(calls):  # zip would drop the calls without an id from the text
        raise ValueError(f"mistral: {len(calls)} call(s) but {len(ids)} call id(s) (call_ids): every call needs one")
    for i in ids:
        if not CALL_ID.match(i):
            raise ValueError(f"mistral: call id {i!r} is not 9 alphanumeric characters")
    return "[TOOL_CALLS] [" + ", ".join(dump({"name": c["name"], "arguments": c["arguments"]})[:-1]
                                        + f', "id": "{i}"}}' for c, i in zip(calls, ids)) + "]"


def render_text(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    out = ["<s>"]
    for i, m in enumerate(messages):
        if m["role"] == "system":
            continue
        if m["role"] == "user":
            if tools and i == last_user:
                out.append("[AVAILABLE_TOOLS] " + dump([{"type": "function", "function": t} for t in tools])
                           + "[/AVAILABLE_TOOLS]")
            text = f"{system}\n\n{m['content']}" if system is not None and i == last_user else m["content"]
            out.append(f"[INST] {text}[/INST]")
        elif m["role"] == "assistant" and m.get("tool_calls"):
            out.append(calls_text(m["tool_calls"], m.get("call_ids") or []) + "</s>")
        elif m["role"] == "assistant":
            out.append(f" {m['content'].strip()}</s>")
        elif m["role"] == "tool":
            result = dump({"content": m["content"], "call_id": m.get("tool_call_id", "")})
            out.append(f"[TOOL_RESULTS] {result}[/TOOL_RESULTS]")
    return "".join(out)  # the generation prompt is empty: the model writes right after [/INST]


def model_text(message: dict) -> str:
    calls = message.get("tool_calls") or []
    return calls_text(calls, message.get("call_ids") or []) if calls else f" {message['content'].strip()}"


def recognizes(text: str) -> bool:
    return ("[AVAILABLE_TOOLS]" in text and '[TOOL_CALLS] [{"name": "probe_tool_3f8a"' in text
            and "[TOOL_RESULTS]" in text and "Pr0beCa11" in text)


def parse(text: str):
    """`[TOOL_CALLS] [{"name", "arguments", "id"?}, ...]` (the tag may be missing where decoding drops special
    tokens: a leading JSON list of call objects counts too) -> calls, in list order; text -> an answer."""
    body = without_thinking(text)
    if not body.startswith("[TOOL_CALLS]"):
        # Without the tag (decoding dropped it), only a list of call objects is a call; other JSON is an answer.
        try:
            value = json.loads(body) if body.startswith("[{") else None
        except json.JSONDecodeError:
            value = None
        if not (isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value)):
            return answered_unless_call(body, NAME)
        body = json.dumps(value)
    else:
        body = body[len("[TOOL_CALLS]"):].strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return malformed(f"invalid JSON after [TOOL_CALLS]: {exc.msg} (char {exc.pos})")
    try:
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise Malformed("[TOOL_CALLS] must be followed by a non-empty JSON list of call objects")
        return called([Call(call_name(v.get("name")), call_arguments(v.get("arguments", v.get("parameters"))))
                       for v in value])
    except Malformed as exc:
        return malformed(str(exc))
