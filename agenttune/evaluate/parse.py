"""Parse tool calls out of raw model outputs, one parser per prompt template.

Takes: the text a model generated for one step, and the name of the prompt template it was
prompted with ("react", "openai_json", "autogpt", "tool_call").
Gives: a `ParsedOutput` with the calls found, the final answer (if the model answered instead),
and a status:

- "call": at least one well-formed call was found;
- "answer": a plain answer, no call was attempted;
- "malformed": a call was attempted but cannot be parsed.

A broken call is never reported as "answer": counting it as a correct abstention would reward
a model for emitting garbage on items where no tool should be called (BFCL's known flaw).
For "malformed", `calls` is empty and `error` says what was wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

STATUSES = ("call", "answer", "malformed")


@dataclass(frozen=True)
class Call:
    """One tool call. `arguments` is a dict, or the raw string when the model's arguments were not a JSON object."""

    name: str
    arguments: dict | str


@dataclass(frozen=True)
class ParsedOutput:
    """What a model output amounts to: calls (status "call"), an answer, or a broken call attempt."""

    calls: tuple[Call, ...]
    final_answer: str | None
    status: str
    error: str = ""


class _Malformed(Exception):
    """Raised inside a parser when a call was attempted but is broken; `parse_*` turns it into a result."""


def _answer(text: str) -> ParsedOutput:
    return ParsedOutput((), text.strip(), "answer")


def _malformed(reason: str) -> ParsedOutput:
    return ParsedOutput((), None, "malformed", reason)


# Signs of a call written in some template's format. An "answer" showing one is a call attempt in
# the wrong format, so it is malformed: it must not pass as a correct abstention on a negative item.
_CALL_EVIDENCE = (
    re.compile(r"</?tool_call>"),
    re.compile(r'"(?:function_call|tool_calls)"\s*:'),
    re.compile(r'"name"\s*:[^{}]*"(?:arguments|parameters|args)"\s*:', re.S),
    re.compile(r"^[ \t]*Action[ \t]*Input[ \t]*:", re.M | re.I),
)


def _answer_unless_call(text: str, template: str) -> ParsedOutput:
    if any(p.search(text) for p in _CALL_EVIDENCE):
        return _malformed(f"a call not in the {template} format")
    return _answer(text)


def _calls(calls: list[Call]) -> ParsedOutput:
    return ParsedOutput(tuple(calls), None, "call")


_THINK = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.S)


def _clean(text: str) -> str:
    """Drop complete <think> blocks (reasoning models emit them before the actual output) and outer whitespace."""
    return _THINK.sub("", text).strip()


def _unfence(text: str) -> str:
    """Strip one pair of Markdown code fences around the whole text, if present."""
    text = text.strip()
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def _decode_prefix(text: str):
    """Decode the JSON value at the start of `text`, ignoring anything after it; raise ValueError if there is none."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (char {exc.pos})") from None
    return value


def _arguments(raw) -> dict:
    """Normalise a call's arguments: dicts as is, JSON strings decoded (the OpenAI API sends them encoded)."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict):
            return decoded
        raise _Malformed(f"arguments are not a JSON object: {raw[:80]!r}")
    raise _Malformed(f"arguments must be an object, got {type(raw).__name__}")


def _name(raw) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _Malformed("call without a function name")
    return raw.strip()


# --- react -----------------------------------------------------------------------------------

_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*)$", re.M | re.I)
_ACTION_INPUT = re.compile(r"^[ \t]*Action[ \t]*Input[ \t]*:", re.M | re.I)
_FINAL = re.compile(r"^[ \t]*Final[ \t]*Answer[ \t]*:", re.M | re.I)
# Where an Action Input ends: the next ReAct keyword line (the model may run on past its stop string).
_NEXT_KEYWORD = re.compile(r"^[ \t]*(?:Observation|Thought|Action|Final[ \t]*Answer)[ \t]*:", re.M | re.I)


def _react_name(raw: str) -> str:
    name = raw.strip().strip("`'\"").strip()
    # `Action: get_weather()` or `Action: get_weather(city=...)`: the name is what comes before the parens.
    if name.endswith(")") and "(" in name:
        name = name[: name.index("(")].strip()
    return name


def parse_react(text: str) -> ParsedOutput:
    """Classic ReAct: `Thought: ...\\nAction: name\\nAction Input: {json}`; or `Final Answer: ...`.

    Only the first Action / Action Input pair counts (a ReAct step has one action). If both an
    Action and a Final Answer appear, whichever comes first decides. Action Input that is not a
    JSON object is kept as the raw string (still a call); an empty one means no arguments.
    """
    text = _clean(text)
    action = _ACTION.search(text)
    action_input = _ACTION_INPUT.search(text)
    final = _FINAL.search(text)
    first_action_pos = min(m.start() for m in (action, action_input) if m) if (action or action_input) else None

    if first_action_pos is None or (final and final.start() < first_action_pos):
        if final:
            answer = text[final.end():]
            nxt = _NEXT_KEYWORD.search(answer)
            return _answer_unless_call(answer[: nxt.start()] if nxt else answer, "react")
        return _answer_unless_call(text, "react")

    if action is None:
        return _malformed("Action Input without an Action")
    name = _react_name(action.group(1))
    if not name:
        return _malformed("Action without a tool name")
    action_input = _ACTION_INPUT.search(text, action.end())
    if action_input is None:
        return _malformed("Action without an Action Input")
    raw = text[action_input.end():]
    nxt = _NEXT_KEYWORD.search(raw)
    raw = _unfence(raw[: nxt.start()] if nxt else raw)
    if not raw:
        return _calls([Call(name, {})])
    try:
        decoded = _decode_prefix(raw)
    except ValueError:
        decoded = None
    arguments = decoded if isinstance(decoded, dict) else raw
    return _calls([Call(name, arguments)])


# --- openai_json ------------------------------------------------------------------------------

_OPENAI_KEYS = ("name", "function_call", "tool_calls", "function")
# Evidence, inside prose, that the model tried to emit a call object.
_OPENAI_HINT = re.compile(r'"(?:function_call|tool_calls|arguments)"\s*:')


def _openai_call(obj) -> Call:
    if not isinstance(obj, dict):
        raise _Malformed(f"a call must be a JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("function"), dict):  # a tool_calls item: {"type": "function", "function": {...}}
        obj = obj["function"]
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    return Call(_name(obj.get("name")), _arguments(args))


def _openai_calls(obj) -> list[Call]:
    if isinstance(obj, list):
        if not obj:
            raise _Malformed("empty list of calls")
        return [_openai_call(item) for item in obj]
    if not isinstance(obj, dict):
        raise _Malformed(f"expected a JSON object, got {type(obj).__name__}")
    if "tool_calls" in obj:
        if not isinstance(obj["tool_calls"], list) or not obj["tool_calls"]:
            raise _Malformed("tool_calls must be a non-empty list")
        return [_openai_call(item) for item in obj["tool_calls"]]
    if "function_call" in obj:
        return [_openai_call(obj["function_call"])]
    if "name" in obj or "function" in obj:
        return [_openai_call(obj)]
    raise _Malformed("JSON object without a function name")


def _find_json_object(text: str, keys: tuple[str, ...]):
    """The first JSON object embedded in prose that has one of `keys`; None if there is none."""
    for m in re.finditer(r"[\[{]", text):
        try:
            value = _decode_prefix(text[m.start():])
        except ValueError:
            continue
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(v, dict) for v in items) and any(k in items[0] for k in keys):
            return value
    return None


def parse_openai_json(text: str) -> ParsedOutput:
    """OpenAI-style JSON: `{"name", "arguments"}` (arguments may be a JSON-encoded string),
    `{"function_call": {...}}`, `{"tool_calls": [{"function": {...}}]}`, or a list of calls.

    Output that starts with `{` or `[` is a call attempt and must parse; prose is an answer,
    unless it embeds something that looks like a call object (then that object is the call,
    or the output is malformed if it cannot be decoded).
    """
    body = _unfence(_clean(text))
    try:
        if body.startswith(("{", "[")):
            try:
                obj = _decode_prefix(body)
            except ValueError as exc:
                return _malformed(str(exc))
            if isinstance(obj, dict) and not any(k in obj for k in _OPENAI_KEYS) and isinstance(obj.get("content"), str):
                return _answer(obj["content"])  # an assistant message object without calls
            return _calls(_openai_calls(obj))
        if _OPENAI_HINT.search(body) or re.search(r'\{\s*"name"\s*:', body):
            obj = _find_json_object(body, _OPENAI_KEYS)
            if obj is None:
                return _malformed("call-like JSON in the text could not be decoded")
            return _calls(_openai_calls(obj))
    except _Malformed as exc:
        return _malformed(str(exc))
    return _answer_unless_call(body, "openai_json")


# --- autogpt ----------------------------------------------------------------------------------

# AutoGPT commands that end the task or skip the step: the model is answering, not calling a tool.
AUTOGPT_NO_CALL_COMMANDS = ("finish", "do_nothing")


def parse_autogpt(text: str) -> ParsedOutput:
    """AutoGPT's response format: `{"thoughts": {...}, "command": {"name": ..., "args": {...}}}`.

    Command "finish" / "do_nothing" is an answer (its text from args `response` or `reason`);
    prose is an answer; a JSON response that does not parse or lacks a command is malformed.
    """
    body = _unfence(_clean(text))
    if body.startswith(("{", "[")):
        try:
            obj = _decode_prefix(body)
        except ValueError as exc:
            return _malformed(str(exc))
    elif re.search(r'"command"\s*:', body):
        obj = _find_json_object(body, ("command",))
        if obj is None:
            return _malformed("command JSON in the text could not be decoded")
    else:
        return _answer_unless_call(body, "autogpt")

    if not isinstance(obj, dict) or not isinstance(obj.get("command"), dict):
        return _malformed("response without a command object")
    command = obj["command"]
    try:
        name = _name(command.get("name"))
        args = _arguments(command["args"] if "args" in command else command.get("arguments"))
    except _Malformed as exc:
        return _malformed(str(exc))
    if name in AUTOGPT_NO_CALL_COMMANDS:
        answer = args.get("response") or args.get("reason") or ""
        return _answer(answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False))
    return _calls([Call(name, args)])


# --- tool_call (Qwen / Hermes) ----------------------------------------------------------------

_TOOL_CALL_TAG = re.compile(r"</?tool_call>")


def parse_tool_call(text: str) -> ParsedOutput:
    """Qwen/Hermes style: one or more `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks.

    Several blocks are parallel calls. An unclosed or stray tag, or a block whose JSON does not
    parse, makes the whole output malformed. Text without tags is an answer.
    """
    body = _clean(text)
    tags = list(_TOOL_CALL_TAG.finditer(body))
    if not tags:
        return _answer_unless_call(body, "tool_call")
    calls = []
    for i in range(0, len(tags), 2):
        open_tag, close_tag = tags[i], tags[i + 1] if i + 1 < len(tags) else None
        if open_tag.group() != "<tool_call>":
            return _malformed("</tool_call> without an opening tag")
        if close_tag is None or close_tag.group() != "</tool_call>":
            return _malformed("<tool_call> without a closing tag")
        block = _unfence(body[open_tag.end():close_tag.start()])
        try:
            obj = json.loads(block)
        except json.JSONDecodeError as exc:
            return _malformed(f"invalid JSON in <tool_call> block {i // 2 + 1}: {exc.msg}")
        try:
            if not isinstance(obj, dict):
                raise _Malformed(f"<tool_call> block {i // 2 + 1} is not a JSON object")
            args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
            calls.append(Call(_name(obj.get("name")), _arguments(args)))
        except _Malformed as exc:
            return _malformed(str(exc))
    return _calls(calls)


PARSERS: dict[str, Callable[[str], ParsedOutput]] = {
    "react": parse_react,
    "openai_json": parse_openai_json,
    "autogpt": parse_autogpt,
    "tool_call": parse_tool_call,
}


def parse(template: str, text: str) -> ParsedOutput:
    """Parse `text` with the parser of prompt template `template`; KeyError for an unknown template."""
    try:
        parser = PARSERS[template]
    except KeyError:
        raise KeyError(f"no parser for prompt template {template!r}; known: {', '.join(sorted(PARSERS))}") from None
    return parser(text)
