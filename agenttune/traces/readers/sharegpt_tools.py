"""ShareGPT-with-tools reader (glaive-function-calling, LLaMA-Factory's "sharegpt" tool format).

Takes: a JSON list (or JSON Lines) of `{"conversations": [{"from", "value"}], "tools": "<JSON string>",
"system"?: str}` where `from` is human | gpt | function_call | observation (| system), a function_call value
is the JSON text `{"name", "arguments"}` (or a list of them for parallel calls) and `tools` is a JSON string
(or list) of function schemas.
Gives: canonical traces; a function_call turn becomes an assistant message with content "" and `tool_calls`
(these files put no thought text on it), an observation a `tool` message named after the oldest pending call.
Records have no ids: ingest names them by their index in the list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from agenttune.traces.canonical import TraceError
from agenttune.traces.readers.common import (
    RawRecord,
    expect,
    expect_object,
    kind_of,
    parse_arguments,
    read_path,
    tool_schema,
    trace,
    unknown_role,
)

FORMAT = "sharegpt_tools"

PLAIN_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def records(path: Path) -> Iterator[RawRecord]:
    return read_path(path)


def _tools(value: object) -> list[dict]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TraceError(f"tools is not valid JSON: {exc.msg} (column {exc.colno})", "tools") from None
    if not isinstance(value, list):
        raise TraceError(f"expected a list of function schemas, got {type(value).__name__}", "tools")
    return [tool_schema(tool, f"tools[{k}]") for k, tool in enumerate(value)]


def _calls(value: str, field: str) -> list[dict]:
    try:
        payload = json.loads(value)
    except json.JSONDecodeError as exc:
        raise TraceError(
            f"arguments are not valid JSON: function_call value: {exc.msg} (column {exc.colno})", field
        ) from None
    calls = []
    for k, call in enumerate(payload if isinstance(payload, list) else [payload]):
        name = expect(call, "name", str, f"{field}[{k}].name")
        calls.append({"name": name, "arguments": parse_arguments(call.get("arguments", {}), f"{field}[{k}].arguments")})
    return calls


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    tools = _tools(record.get("tools"))
    messages: list[dict] = []
    system = record.get("system")
    if system:
        messages.append({"role": "system", "content": str(system)})
    pending: list[str] = []
    for i, turn in enumerate(expect(record, "conversations", list, "conversations")):
        field = f"conversations[{i}]"
        turn = expect_object(turn, field)
        role = turn.get("from")
        value = expect(turn, "value", str, f"{field}.value")
        if role == "function_call":
            calls = _calls(value, f"{field}.value")
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            pending = [call["name"] for call in calls]
        elif role == "observation":
            # An observation with no pending call keeps name "" and fails validation with a clear reason.
            messages.append({"role": "tool", "name": pending.pop(0) if pending else "", "content": value})
        elif isinstance(role, str) and role in PLAIN_ROLES:
            messages.append({"role": PLAIN_ROLES[role], "content": value})
        else:
            raise unknown_role(role, f"{field}.from")
    return trace(source, record.get("id"), tools, messages, {"kind": kind_of(messages)})
