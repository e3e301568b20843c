"""Alpaca reader: instruction data (`{"instruction", "input", "output"}`), the general chat data AgentTuning mixes in.

Takes: a JSON list or JSON Lines of `{"instruction": str, "input": str, "output": str}`, optionally with
LLaMA-Factory's `"system": str` and `"history": [[query, answer], ...]` (earlier turns).
Gives: one no-tool canonical trace per record: the history turns, then the user turn = instruction, followed by
a blank line and the input when there is one (Alpaca's own prompt puts the input under the instruction), then the
assistant turn = output. `tools: []`, `meta.kind = "no_tool"`. Records have no ids: ingest names them by index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from agenttune.traces.canonical import TraceError
from agenttune.traces.readers.common import RawRecord, expect_object, read_path, trace

FORMAT = "alpaca"


def records(path: Path) -> Iterator[RawRecord]:
    return read_path(path)


def _text(record: dict, key: str, required: bool) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise TraceError("missing" if value is None else f"expected text, got {type(value).__name__}", key)
    return value


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    instruction = _text(record, "instruction", required=True)
    if not instruction.strip():
        raise TraceError("empty trace: no instruction", "instruction")
    extra = _text(record, "input", required=False)
    output = _text(record, "output", required=True)
    messages = []
    system = _text(record, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TraceError("expected a [query, answer] pair of strings", f"history[{i}]")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    query = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": query}, {"role": "assistant", "content": output}]
    return trace(source, record.get("id"), [], messages, {"kind": "no_tool"})
