"""The canonical trace model: validation, and reading a traces file with validation.

Takes: traces, or JSON Lines files of them, in the schema of docs/trace-schema.md.
Gives: `validate_trace` and `read_traces` -> validated trace dicts, or a `TraceError` naming file, line, trace id
and field (a plain JSON Lines file of the pipeline's own rows is read with `agenttune.common.atomic.read_jsonl`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

ROLES = ("system", "user", "assistant", "tool")


class TraceError(ValueError):
    """A trace that breaks the canonical schema. Carries where and what, for error messages and quarantine."""

    def __init__(self, reason: str, field: str = "", path: str = "", line: int = 0, trace_id: str = ""):
        self.reason, self.field, self.path, self.line, self.trace_id = reason, field, str(path), line, trace_id
        where = ":".join(p for p in (self.path, str(line) if line else "") if p)
        parts = [where, f"id={trace_id}" if trace_id else "", f"field '{field}'" if field else "", reason]
        super().__init__(": ".join(p for p in parts if p))

    def located(self, path: str, line: int) -> "TraceError":
        return TraceError(self.reason, self.field, path, line, self.trace_id)


def _require(obj: dict, key: str, kind: type | tuple, field: str, trace_id: str):
    if key not in obj:
        raise TraceError("missing", field, trace_id=trace_id)
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise TraceError(f"expected {names}, got {type(value).__name__}", field, trace_id=trace_id)
    return value


def validate_trace(trace: object) -> dict:
    """Check one trace against the canonical schema; return it unchanged or raise TraceError."""
    if not isinstance(trace, dict):
        raise TraceError(f"a trace must be a JSON object, got {type(trace).__name__}")
    trace_id = trace.get("id") if isinstance(trace.get("id"), str) else ""
    _require(trace, "id", str, "id", trace_id)
    if not trace_id:
        raise TraceError("empty", "id")
    _require(trace, "source", str, "source", trace_id)
    tools = _require(trace, "tools", list, "tools", trace_id)
    tool_names = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise TraceError("expected object", f"tools[{i}]", trace_id=trace_id)
        tool_names.add(_require(tool, "name", str, f"tools[{i}].name", trace_id))
        _require(tool, "description", str, f"tools[{i}].description", trace_id)
        _require(tool, "parameters", dict, f"tools[{i}].parameters", trace_id)
    messages = _require(trace, "messages", list, "messages", trace_id)
    if not messages:
        raise TraceError("empty trace", "messages", trace_id=trace_id)
    pending_calls: list[str] = []
    for i, msg in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise TraceError("expected object", field, trace_id=trace_id)
        role = _require(msg, "role", str, f"{field}.role", trace_id)
        if role not in ROLES:
            raise TraceError(f"unknown role '{role}' (expected one of {', '.join(ROLES)})", f"{field}.role", trace_id=trace_id)
        _require(msg, "content", str, f"{field}.content", trace_id)
        if role == "system" and i != 0:
            raise TraceError("a system message may only come first", f"{field}.role", trace_id=trace_id)
        if role == "tool":
            name = _require(msg, "name", str, f"{field}.name", trace_id)
            if not pending_calls:
                raise TraceError("tool message without a preceding tool call", f"{field}.role", trace_id=trace_id)
            expected = pending_calls.pop(0)
            if name != expected:
                raise TraceError(f"tool result for '{name}' but the pending call is '{expected}'", f"{field}.name", trace_id=trace_id)
            continue
        if pending_calls:
            raise TraceError(f"missing tool result for '{pending_calls[0]}'", f"{field}.role", trace_id=trace_id)
        if role == "assistant":
            loss = msg.get("loss")
            if loss is not None and not isinstance(loss, bool):
                raise TraceError("expected true, false or null", f"{field}.loss", trace_id=trace_id)
            if msg.get("reasoning") is not None and not isinstance(msg["reasoning"], str):
                raise TraceError("expected a string or null", f"{field}.reasoning", trace_id=trace_id)
        elif msg.get("reasoning") is not None:
            raise TraceError("only assistant messages carry reasoning", f"{field}.reasoning", trace_id=trace_id)
        if role == "assistant":
            for j, call in enumerate(msg.get("tool_calls") or []):
                cfield = f"{field}.tool_calls[{j}]"
                if not isinstance(call, dict):
                    raise TraceError("expected object", cfield, trace_id=trace_id)
                name = _require(call, "name", str, f"{cfield}.name", trace_id)
                if name not in tool_names:
                    raise TraceError(f"call to tool '{name}' which is not in the trace's tools", f"{cfield}.name", trace_id=trace_id)
                _require(call, "arguments", dict, f"{cfield}.arguments", trace_id)
                pending_calls.append(name)
    first = next((m for m in messages if m["role"] != "system"), None)
    if first is None or first["role"] != "user":
        raise TraceError("the first non-system message must be from the user", "messages", trace_id=trace_id)
    if messages[-1]["role"] != "assistant":
        raise TraceError("a trace must end on an assistant message", f"messages[{len(messages) - 1}].role", trace_id=trace_id)
    return trace


def read_traces(path: str | Path) -> Iterator[dict]:
    """Yield validated traces from a canonical JSONL file; stop at the first bad line with file, line and field."""
    path = Path(path)
    seen: dict[str, int] = {}
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TraceError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path=str(path), line=line_no) from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=str(path), line=line_no) from None
            try:
                trace = validate_trace(obj)
            except TraceError as exc:
                raise exc.located(str(path), line_no) from None
            if trace["id"] in seen:
                raise TraceError(f"duplicate id (first seen on line {seen[trace['id']]})", "id", str(path), line_no, trace["id"])
            seen[trace["id"]] = line_no
            yield trace
