"""What every template's parser shares: the parsed-output types and the helpers that read calls out of text.

Takes: the text a model generated for one step (each template module's `parse(text)` reads it).
Gives: a `ParsedOutput` with the calls found, the final answer (if the model answered instead), and a status:

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


class Malformed(Exception):
    """Raised inside a parser when a call was attempted but is broken; the parser turns it into a result."""


def answered(text: str) -> ParsedOutput:
    return ParsedOutput((), text.strip(), "answer")


def malformed(reason: str) -> ParsedOutput:
    return ParsedOutput((), None, "malformed", reason)


def called(calls: list[Call]) -> ParsedOutput:
    return ParsedOutput(tuple(calls), None, "call")


# Signs of a call written in some template's format. An "answer" showing one is a call attempt in
# the wrong format, so it is malformed: it must not pass as a correct abstention on a negative item.
_CALL_EVIDENCE = (
    re.compile(r"</?tool_call>"),
    re.compile(r'"(?:function_call|tool_calls)"\s*:'),
    re.compile(r'"name"\s*:[^{}]*"(?:arguments|parameters|args)"\s*:', re.S),
    re.compile(r"^[ \t]*Action[ \t]*Input[ \t]*:", re.M | re.I),
)


def answered_unless_call(text: str, template: str) -> ParsedOutput:
    """An answer, or malformed when the text shows a call in any template's format."""
    if any(p.search(text) for p in _CALL_EVIDENCE):
        return malformed(f"a call not in the {template} format")
    return answered(text)


_THINK = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.S)


def without_thinking(text: str) -> str:
    """Drop complete <think> blocks (reasoning models emit them before the actual output) and outer whitespace."""
    return _THINK.sub("", text).strip()


def unfence(text: str) -> str:
    """Strip one pair of Markdown code fences around the whole text, if present."""
    text = text.strip()
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def decode_prefix(text: str):
    """Decode the JSON value at the start of `text`, ignoring anything after it; raise ValueError if there is none."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (char {exc.pos})") from None
    return value


def find_json_object(text: str, keys: tuple[str, ...]):
    """The first JSON object embedded in prose that has one of `keys`; None if there is none."""
    for m in re.finditer(r"[\[{]", text):
        try:
            value = decode_prefix(text[m.start():])
        except ValueError:
            continue
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(v, dict) for v in items) and any(k in items[0] for k in keys):
            return value
    return None


def call_arguments(raw) -> dict:
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
        raise Malformed(f"arguments are not a JSON object: {raw[:80]!r}")
    raise Malformed(f"arguments must be an object, got {type(raw).__name__}")


def call_name(raw) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise Malformed("call without a function name")
    return raw.strip()
