"""Berkeley Function Calling Leaderboard (v3) reader: question files plus optional ground truth.

Takes: a BFCL question file, JSON Lines despite its `.json` name:
`{"id": "simple_0", "question": [[{"role", "content"}]], "function": [{name, description, parameters}]}`,
and, when it exists, `possible_answer/<same file name>` beside it:
`{"id", "ground_truth": [{"<function>": {"<arg>": [allowed values]}}]}` (`""` among the allowed values marks
an optional argument). Answers are indexed by id per file (small files; the questions themselves stream).
Gives: one single-turn canonical trace per question, marked `meta.eval_only = true` (a benchmark: never train
on it) with `meta.task = "bfcl_<category>"` and `meta.ground_truth` = the answer entry as given, for scoring.
  - with ground truth: the assistant message carries the reference call(s), each argument set to the FIRST
    allowed value, arguments whose allowed list starts with "" (optional, left out in the reference) skipped;
    content "" (BFCL has no answer text); `meta.kind = "tool"`.
  - `irrelevance` categories: the right behaviour is no call, and no answer text exists, so the assistant
    message is content "" with `loss: false` (nothing to learn from it), `meta.kind = "no_tool"`,
    `meta.ground_truth = []`.
  - other categories without an answer file: same empty `loss: false` assistant turn, `meta.ground_truth = null`.
Parameter types are BFCL's Python names ("dict", "float", "tuple", ...); they are mapped to JSON-schema names
the way BFCL does for OpenAI-style models, so renderers can show them as JSON schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from agenttune.traces.canonical import TraceError
from agenttune.traces.readers.common import (
    RawRecord,
    UnreadableFile,
    expect,
    expect_object,
    jsonl_records,
    tool_schema,
    trace,
    unknown_role,
)

FORMAT = "bfcl"

JSON_SCHEMA_TYPES = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "list": "array",
    "bool": "boolean",
    "any": "string",
}
ROLES = ("system", "user", "assistant")


def records(path: Path) -> Iterator[RawRecord]:
    path = Path(path)
    answers = _answers(path.parent / "possible_answer" / path.name)
    for record in jsonl_records(path):
        if isinstance(record.data, dict) and record.raw_id in answers:
            record = record._replace(data={**record.data, "ground_truth": answers[record.raw_id]})
        yield record


def _answers(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    answers = {}
    for record in jsonl_records(path):
        if not isinstance(record.data, dict) or record.raw_id is None or "ground_truth" not in record.data:
            raise UnreadableFile(f"{path}: line {record.line}: not a BFCL answer record")
        answers[record.raw_id] = record.data["ground_truth"]
    return answers


def _json_schema(value: object) -> object:
    if isinstance(value, dict):
        return {
            key: JSON_SCHEMA_TYPES.get(item, item) if key == "type" and isinstance(item, str) else _json_schema(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_json_schema(item) for item in value]
    return value


def _reference_call(entry: object, field: str) -> dict:
    entry = expect_object(entry, field)
    if len(entry) != 1:
        raise TraceError(f"expected one function per ground-truth entry, got {len(entry)}", field)
    ((name, allowed_by_arg),) = entry.items()
    allowed_by_arg = expect_object(allowed_by_arg, f"{field}.{name}")
    arguments = {}
    for arg, allowed in allowed_by_arg.items():
        if not isinstance(allowed, list) or not allowed:
            raise TraceError("expected a non-empty list of allowed values", f"{field}.{name}.{arg}")
        if allowed[0] != "":
            arguments[arg] = allowed[0]
    return {"name": name, "arguments": arguments}


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    turns = expect(record, "question", list, "question")
    if len(turns) != 1 or not isinstance(turns[0], list):
        raise TraceError(f"only single-turn questions are supported (got {len(turns)} turns)", "question")
    messages = []
    for i, raw in enumerate(turns[0]):
        field = f"question[0][{i}]"
        role = expect(raw, "role", str, f"{field}.role")
        if role not in ROLES:
            raise unknown_role(role, f"{field}.role")
        messages.append({"role": role, "content": expect(raw, "content", str, f"{field}.content")})
    functions = expect(record, "function", list, "function")
    tools = [tool_schema(_json_schema(function), f"function[{k}]") for k, function in enumerate(functions)]

    raw_id = record.get("id")
    category = raw_id.rsplit("_", 1)[0] if isinstance(raw_id, str) else "unknown"
    ground_truth = record.get("ground_truth")
    if category.endswith("irrelevance"):
        kind, ground_truth = "no_tool", []
        answer = {"role": "assistant", "content": "", "loss": False}
    elif ground_truth is None:
        kind = "tool"
        answer = {"role": "assistant", "content": "", "loss": False}
    else:
        kind = "tool"
        if not isinstance(ground_truth, list):
            raise TraceError(f"expected a list, got {type(ground_truth).__name__}", "ground_truth")
        calls = [_reference_call(entry, f"ground_truth[{k}]") for k, entry in enumerate(ground_truth)]
        answer = {"role": "assistant", "content": "", "tool_calls": calls}
    meta = {"task": f"bfcl_{category}", "kind": kind, "eval_only": True, "ground_truth": ground_truth}
    return trace(source, raw_id, tools, messages + [answer], meta)
