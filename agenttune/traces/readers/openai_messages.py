"""OpenAI chat-messages reader: current `tools`/`tool_calls`/`role: tool` and legacy `functions`/`function_call`/
`role: function`, including ToolBench answer files.

Takes: a JSON list, JSON Lines, a single JSON object file, or a directory of such files, whose records are
  - `{"messages": [...], "tools": [{"type": "function", "function": {...}}]}` (or `"functions": [{...}]`), with
    assistant `tool_calls: [{"id", "function": {"name", "arguments": "<JSON string>"}}]` answered by
    `{"role": "tool", "tool_call_id", "content"}`, or legacy `function_call: {"name", "arguments"}` answered by
    `{"role": "function", "name", "content"}`;
  - a ToolBench answer file (`answer/G*_answer/*.json`): `answer_generation.function` are the tools and
    `answer_generation.train_messages` a list of conversations, each the context up to one assistant step.
    The last one holds the whole final trajectory, so that one is mapped; its closing call to the `Finish`
    pseudo-tool is kept as an assistant call without a tool result (it is how ToolBench answers). Files with
    no train_messages (`valid_data: false`) are empty traces. DFSDT's "this is not the first time you try"
    user turns are kept as user turns (context).
Gives: canonical traces; `content: null` becomes "", string arguments are decoded (bad JSON -> TraceError),
a tool message is named by `name`, else by its `tool_call_id`, else after the oldest pending call.
"""

from __future__ import annotations

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
    text_of,
    tool_schema,
    trace,
    unknown_role,
)

FORMAT = "openai_messages"

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"}


def records(path: Path) -> Iterator[RawRecord]:
    return read_path(path, allow_object=True)


def _call(value: object, field: str) -> dict:
    name = expect(value, "name", str, f"{field}.name")
    return {"name": name, "arguments": parse_arguments(value.get("arguments", {}), f"{field}.arguments")}


def _messages(raw_messages: list, prefix: str) -> list[dict]:
    messages: list[dict] = []
    names_by_call_id: dict[str, str] = {}
    pending: list[str] = []
    for i, raw in enumerate(raw_messages):
        field = f"{prefix}[{i}]"
        raw = expect_object(raw, field)
        role = ROLES.get(raw.get("role")) if isinstance(raw.get("role"), str) else None
        if role is None:
            raise unknown_role(raw.get("role"), f"{field}.role")
        message = {"role": role, "content": text_of(raw.get("content"))}
        if role == "assistant":
            calls = []
            for j, tool_call in enumerate(raw.get("tool_calls") or []):
                tool_call = expect_object(tool_call, f"{field}.tool_calls[{j}]")
                calls.append(_call(tool_call.get("function", tool_call), f"{field}.tool_calls[{j}].function"))
                if isinstance(tool_call.get("id"), str):
                    names_by_call_id[tool_call["id"]] = calls[-1]["name"]
            if raw.get("function_call"):
                calls.append(_call(raw["function_call"], f"{field}.function_call"))
            if calls:
                message["tool_calls"] = calls
            pending = [call["name"] for call in calls]
        elif role == "tool":
            name = raw.get("name") or names_by_call_id.get(raw.get("tool_call_id")) or (pending[0] if pending else "")
            if name in pending:
                pending.remove(name)
            message = {"role": "tool", "name": name, "content": message["content"]}
        messages.append(message)
    return messages


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    meta: dict = {}
    if "answer_generation" in record:
        generation = expect(record, "answer_generation", dict, "answer_generation")
        conversations = generation.get("train_messages")
        if not conversations:
            valid = generation.get("valid_data")
            raise TraceError(
                f"empty trace: no train_messages (valid_data is {valid})", "answer_generation.train_messages"
            )
        if not isinstance(conversations, list):
            raise TraceError(f"expected a list, got {type(conversations).__name__}", "answer_generation.train_messages")
        last = len(conversations) - 1
        raw_messages = conversations[last]
        tools_field, raw_tools = "answer_generation.function", generation.get("function") or []
        messages_field = f"answer_generation.train_messages[{last}]"
        meta = {"task": "toolbench", "finish_type": generation.get("finish_type")}
    else:
        raw_messages, messages_field = expect(record, "messages", list, "messages"), "messages"
        tools_field = "tools" if "tools" in record else "functions"
        raw_tools = record.get(tools_field) or []
    if not isinstance(raw_tools, list):
        raise TraceError(f"expected a list of function schemas, got {type(raw_tools).__name__}", tools_field)
    if not isinstance(raw_messages, list):
        raise TraceError(f"expected a list of messages, got {type(raw_messages).__name__}", messages_field)
    tools = [tool_schema(tool, f"{tools_field}[{k}]") for k, tool in enumerate(raw_tools)]
    messages = _messages(raw_messages, messages_field)
    return trace(source, record.get("id"), tools, messages, {**meta, "kind": kind_of(messages)})
