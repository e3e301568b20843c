"""AgentInstruct reader (THUDM AgentTuning), pass-through mode.

Takes: `{"id": "db_0", "conversations": [{"from": "human"|"gpt", "loss": null|true|false, "value": str}]}` as
JSON Lines (the native release) or a JSON list, and the role/content form
`{"id", "conversations": [{"role": "user"|"assistant", "content": str}]}` (e.g. the agenttuning_*_sample_raw.json).
Gives: one canonical trace per record with `tools: []` and user/assistant messages whose text is kept verbatim:
these trajectories are already rendered (the task prompt describes the actions as text, the environment's
replies are user turns), so `meta.passthrough = true` tells renderers to keep the text as it is.

Loss flags: an assistant turn keeps its `loss` exactly as given (true/false/null). Files without flags (the
role/content form) leave `loss` out, so every assistant turn is trained on; the native release marks the
prompt-setup reply ("Ok.") with `loss: false`, which those files cannot express.
`meta.kind` is "tool" (the agent acts on an environment, only in text) and `meta.task` the id's prefix (db, os, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from agenttune.traces.canonical import TraceError
from agenttune.traces.readers.common import RawRecord, expect, expect_object, read_path, trace, unknown_role

FORMAT = "agentinstruct"

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def records(path: Path) -> Iterator[RawRecord]:
    return read_path(path)


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    messages = []
    for i, turn in enumerate(expect(record, "conversations", list, "conversations")):
        field = f"conversations[{i}]"
        turn = expect_object(turn, field)
        raw_role = turn.get("from", turn.get("role"))
        role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise unknown_role(raw_role, f"{field}.from")
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            raise TraceError(f"expected text, got {type(text).__name__}", f"{field}.value")
        message = {"role": role, "content": text}
        if role == "assistant" and "loss" in turn:
            message["loss"] = turn["loss"]
        messages.append(message)
    raw_id = record.get("id")
    meta = {"kind": "tool", "passthrough": True}
    if isinstance(raw_id, str) and "_" in raw_id:
        meta["task"] = raw_id.rsplit("_", 1)[0]
    return trace(source, raw_id, [], messages, meta)
