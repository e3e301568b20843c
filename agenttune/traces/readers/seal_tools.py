"""Seal-Tools reader: queries with one or more calls, tools joined from the release's `tool.jsonl`.

Takes: a Seal-Tools query file (JSON Lines: `{"id", "query", "calling": [{"api", "parameters", "responses"}]}`)
or the folder holding them (every `*.jsonl` but `tool.jsonl` and `field.jsonl`, sorted by name), and the tool
definitions in `tool.jsonl` beside them: one `{"api_name", "api_description", "parameters": {name: {"type",
"description", ...}}, "required", "responses", "field"}` per line, joined to calls by `api` = `api_name`.
Gives: one canonical trace per query: the query as the user message, then one assistant message (content "")
carrying every call in the data's order, as parallel calls; the tools are the called ones, each once, in the
order first called (the data stage adds distractors). `meta = {"task": "seal_tools", "kind": "tool",
"split": <file stem>, "level": "easy"|"difficult" (from the id), "coerced_arguments"?: [...]}`.

Decisions (docs/readers.md, "Seal-Tools"):
  - No results, no answer text. Seal-Tools gives no tool results (a call's `responses` only names its outputs
    `API_call_k`) and no final answer, so the trace ends on the assistant's calls, which the canonical schema
    allows (a tool message is only required before a *later* message). Nothing is synthesized.
  - Nested calls are quarantined ("nested call: ..."). An argument that names an earlier call's output
    (`"patient_id": "API_call_0"`) would need that output's value, which the data does not have: an ordered
    multi-step trace would either train the model to emit the placeholder name or need an invented result.
  - Types: `str` string, `int` integer, `float` number, `bool` boolean, `list`/`tuple` array, `dict` object
    (JSON-schema names pass through); a type outside these makes the tool invalid and quarantines the queries that
    call it. `required` comes from the tool file. A parameter's `default` is kept, `choices` becomes `enum`,
    `example`/`examples`/`example_values` become `examples` (a list), `unit` is appended to the description.
  - Every call is checked against its tool's schema (a declared parameter, of the declared type, in the enum);
    one that does not fit is quarantined ("invalid argument ..."), with one coercion: a string that spells a
    decimal number exactly (`"63"`, `"19.0"`, no exponent) for an `int` / `float` parameter becomes that number
    (for `int` only a whole number: `"19.0"` -> 19, `"2.5"` stays and is quarantined), because the schema
    declares the type and the query states the number; each coerced argument is listed in
    `meta.coerced_arguments` as "<call index>.<argument>".
  - A call to an api missing from `tool.jsonl` is quarantined as an unknown tool. A `tool.jsonl` line that is
    not a JSON object with an `api_name`, or a name defined twice, makes the whole source unreadable (it cannot
    be told which calls it breaks).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from agenttune.traces.canonical import TraceError
from agenttune.traces.readers.common import (
    RawError,
    RawRecord,
    UnreadableFile,
    check_call_arguments,
    expect,
    expect_object,
    jsonl_records,
    trace,
)

FORMAT = "seal_tools"

TOOL_FILE = "tool.jsonl"
NOT_QUERY_FILES = (TOOL_FILE, "field.jsonl")  # field.jsonl is Seal-Tools' domain taxonomy, not queries
# Where records() puts, in each record, the tool definitions to join ({api name: (tool.jsonl line, definition)})
# and the query file's stem (Seal-Tools' split: dev, test_in_domain, ...).
TOOLS_KEY = "_seal_tools"
SPLIT_KEY = "_seal_split"

JSON_SCHEMA_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "list": "array",
    "tuple": "array",
    "dict": "object",
    **{name: name for name in ("string", "integer", "number", "boolean", "array", "object")},
}
EXAMPLE_KEYS = ("example", "examples", "example_values")
OUTPUT_REFERENCE = re.compile(r"\bAPI_call_\d+\b")
NUMBER_TEXT = re.compile(r"-?\d+(\.\d+)?")


def records(path: Path) -> Iterator[RawRecord]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        query_files = sorted(p for p in path.glob("*.jsonl") if p.name not in NOT_QUERY_FILES and p.is_file())
        if not query_files:
            others = ", ".join(NOT_QUERY_FILES)
            raise UnreadableFile(f"no Seal-Tools query files (*.jsonl other than {others}) in {path}")
    else:
        query_files = [path]
    tools = _tool_definitions(folder / TOOL_FILE)
    for file in query_files:
        for record in jsonl_records(file):
            if isinstance(record.data, dict):
                record = record._replace(data={**record.data, TOOLS_KEY: tools, SPLIT_KEY: file.stem})
            if path.is_dir():
                # Several files: a record without an id of its own is named by file and line, as read_path does.
                record = record._replace(path=str(file), raw_id=record.raw_id or f"{file.stem}#{record.line}")
            yield record


def _tool_definitions(path: Path) -> dict[str, tuple[int, dict]]:
    if not path.is_file():
        raise UnreadableFile(f"no {TOOL_FILE} beside the queries: {path}")
    tools: dict[str, tuple[int, dict]] = {}
    for record in jsonl_records(path, raw_id=lambda data: None):
        where = f"{path}: line {record.line}"
        if isinstance(record.data, RawError):
            raise UnreadableFile(f"{where}: {record.data.reason}")
        name = record.data.get("api_name") if isinstance(record.data, dict) else None
        if not isinstance(name, str) or not name:
            raise UnreadableFile(f"{where}: not a Seal-Tools tool (a JSON object with a non-empty api_name)")
        if name in tools:
            raise UnreadableFile(f"{where}: api_name '{name}' is already defined on line {tools[name][0]}")
        tools[name] = (record.line, record.data)
    return tools


def tool_schema(definition: dict, where: str) -> dict:
    """A Seal-Tools tool definition -> canonical tool; TraceError (field `where`) when it cannot be mapped."""
    name = expect(definition, "api_name", str, f"{where}.api_name")
    description = definition.get("api_description", "")
    if not isinstance(description, str):
        raise TraceError(f"invalid tool '{name}': api_description is not a string", f"{where}.api_description")
    raw_parameters = definition.get("parameters") or {}
    if not isinstance(raw_parameters, dict):
        raise TraceError(f"invalid tool '{name}': parameters is not an object", f"{where}.parameters")
    properties = {param: _parameter_schema(name, param, spec, f"{where}.parameters.{param}")
                  for param, spec in raw_parameters.items()}
    required = definition.get("required") or []
    if not isinstance(required, list) or any(param not in properties for param in required):
        raise TraceError(f"invalid tool '{name}': required {json.dumps(required)} names no declared parameter"
                         if isinstance(required, list) else f"invalid tool '{name}': required is not a list",
                         f"{where}.required")
    parameters = {"type": "object", "properties": properties, "required": list(required)}
    return {"name": name, "description": description, "parameters": parameters}


def _parameter_schema(tool: str, param: str, spec: object, field: str) -> dict:
    if not isinstance(spec, dict):
        raise TraceError(f"invalid tool '{tool}': parameter '{param}' is not an object", field)
    raw_type = spec.get("type")
    if raw_type not in JSON_SCHEMA_TYPES:
        raise TraceError(f"invalid tool '{tool}': parameter '{param}' has unknown type {json.dumps(raw_type)}",
                         f"{field}.type")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise TraceError(f"invalid tool '{tool}': parameter '{param}' description is not a string",
                         f"{field}.description")
    if spec.get("unit") is not None:
        description = f"{description} Unit: {spec['unit']}." if description else f"Unit: {spec['unit']}."
    schema = {"type": JSON_SCHEMA_TYPES[raw_type], "description": description}
    if isinstance(spec.get("choices"), list):
        schema["enum"] = spec["choices"]
    if "default" in spec:
        schema["default"] = spec["default"]
    examples = [item for key in EXAMPLE_KEYS if key in spec
                for item in (spec[key] if isinstance(spec[key], list) else [spec[key]])]
    if examples:
        schema["examples"] = examples
    return schema


def _coerced(value: object, schema: dict) -> object:
    """A string that spells a number, for an integer / number parameter -> that number; anything else as it is."""
    wanted = schema.get("type")
    if not isinstance(value, str) or wanted not in ("integer", "number") or not NUMBER_TEXT.fullmatch(value):
        return value
    if wanted == "number":
        return float(value) if "." in value else int(value)
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else value


def _nested_reference(value: object) -> str | None:
    """The first `API_call_k` output name inside an argument value (strings, lists and objects searched)."""
    if isinstance(value, str):
        match = OUTPUT_REFERENCE.search(value)
        return match.group(0) if match else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((ref for ref in map(_nested_reference, items) if ref), None)


def _refuse_nested_calls(calling: list) -> None:
    """Check the shape of every call, then refuse the first argument that names an output `API_call_k` (checked
    before anything else, so that a query with nested calls is counted as nested whatever else is wrong with it)."""
    outputs_of: dict[str, int] = {}  # API_call_k -> index of the call whose responses name it
    for k, raw_call in enumerate(calling):
        field = f"calling[{k}]"
        name = expect(raw_call, "api", str, f"{field}.api")
        for param, value in expect(raw_call, "parameters", dict, f"{field}.parameters").items():
            ref = _nested_reference(value)
            if ref:
                producer = (f"the output of calling[{outputs_of[ref]}] ({calling[outputs_of[ref]]['api']})"
                            if ref in outputs_of else "an output that no earlier call names")
                raise TraceError(f"nested call: argument '{param}' of {name} is {ref}, {producer}, whose value the "
                                 f"data does not give", f"{field}.parameters.{param}")
        for output in raw_call.get("responses") or []:
            if isinstance(output, str):
                outputs_of.setdefault(output, k)


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    definitions = record.get(TOOLS_KEY)
    if not isinstance(definitions, dict):
        raise TraceError(f"no tool definitions: Seal-Tools records are read with their {TOOL_FILE}", "calling")
    query = expect(record, "query", str, "query")
    if not query.strip():
        raise TraceError("empty query", "query")
    calling = expect(record, "calling", list, "calling")
    if not calling:
        raise TraceError("empty trace: no calls", "calling")

    _refuse_nested_calls(calling)
    tools: dict[str, dict] = {}
    calls, coerced = [], []
    for k, raw_call in enumerate(calling):
        field = f"calling[{k}]"
        name, arguments = raw_call["api"], raw_call["parameters"]
        if name not in tools:
            if name not in definitions:
                raise TraceError(f"call to tool '{name}' which is not in {TOOL_FILE}", f"{field}.api")
            line, definition = definitions[name]
            tools[name] = tool_schema(definition, f"{TOOL_FILE} line {line}")
        properties = tools[name]["parameters"]["properties"]
        call_arguments = {}
        for param, value in arguments.items():
            call_arguments[param] = _coerced(value, properties[param]) if param in properties else value
            if call_arguments[param] is not value:
                coerced.append(f"{k}.{param}")
        call = {"name": name, "arguments": call_arguments}
        check_call_arguments(call, tools[name]["parameters"], f"{field}.parameters")
        calls.append(call)

    raw_id = record.get("id")
    meta = {"task": "seal_tools", "kind": "tool"}
    if isinstance(record.get(SPLIT_KEY), str):
        meta["split"] = record[SPLIT_KEY]
    level = raw_id.split("-")[-2] if isinstance(raw_id, str) and raw_id.count("-") >= 2 else None
    if level in ("easy", "difficult"):
        meta["level"] = level
    if coerced:
        meta["coerced_arguments"] = coerced
    messages = [{"role": "user", "content": query}, {"role": "assistant", "content": "", "tool_calls": calls}]
    return trace(source, raw_id, list(tools.values()), messages, meta)
