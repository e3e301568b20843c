"""Schema-Guided Dialogue (SGD, DSTC8) reader: task dialogues whose system calls service intents.

Takes: an SGD dialogue file (a JSON list of `{"dialogue_id", "services", "turns": [{"speaker": "USER"|"SYSTEM",
"utterance", "frames": [{"service", "actions", "service_call"?: {"method", "parameters"},
"service_results"?: [...]}]}]}`) or the folder holding them (every `*.json` but `schema.json`, sorted by name), and
the `schema.json` beside them (`[{"service_name", "description", "slots": [{"name", "description",
"is_categorical", "possible_values"}], "intents": [{"name", "description", "required_slots", "optional_slots":
{slot: default}, "result_slots"}]}]`).
Gives: one canonical trace per dialogue (raw id = `dialogue_id`):
  - tools: every intent of every service the dialogue names (`services`, in that order), named
    `<service>.<intent>` (e.g. `Restaurants_1.FindRestaurants`: stable, readable, unique across services (14 intent
    names recur across the shared schema's services, e.g. `FindProvider` in Services_1, _2 and _3), and
    dotted like BFCL's names), described by the intent's description; parameters are the intent's required and
    optional slots, all strings (SGD slot values are strings), with the slot's description, `enum` = the slot's
    possible values when it is categorical, and `default` = the optional slot's default unless that is
    "dontcare" (SGD's "no constraint"); `required` = the required slots;
  - a USER turn is a user message; a SYSTEM turn without a call is an assistant message with the utterance (asking
    for a missing slot, offering, confirming: real agent behaviour); a SYSTEM turn with a `service_call` becomes an
    assistant message (content "") with that one call, a tool message with its results, and an assistant message
    with the utterance;
  - the tool result is `{"count": <rows returned>, "results": <rows kept>}` as JSON: the rows are trimmed to the
    first RESULT_ROWS, or more when a later system turn offers a value first found in a later row (so the
    assistant never names a row it was not shown); `count` keeps the number SGD's system reports ("I found 10
    restaurants"), which is always the number of rows returned;
  - `meta = {"task": "sgd", "kind": "tool"|"no_tool", "services": [...], "trimmed_results": <calls trimmed>}`.
A call is checked against its tool's schema (declared slots, strings, in the enum); one that does not fit is
quarantined ("invalid argument ..."): SGD values are never coerced. A dialogue naming a service missing from
schema.json is quarantined ("unknown service ..."), as is a call to an intent the service does not have ("call to
tool ...", an unknown tool). A dialogue file that is not a JSON list, or a missing or broken schema.json, makes
the whole source unreadable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from agenttune.traces.canonical import TraceError
from agenttune.traces.readers.common import (
    RawRecord,
    UnreadableFile,
    check_call_arguments,
    expect,
    expect_object,
    json_records,
    kind_of,
    trace,
)

FORMAT = "sgd"

SCHEMA_FILE = "schema.json"
# Rows of a service's results kept in the tool message (more when the dialogue later offers a later row).
RESULT_ROWS = 3
# Where records() puts the services of schema.json in each record: {service name: schema entry}.
SCHEMA_KEY = "_sgd_schema"
SPEAKERS = {"USER": "user", "SYSTEM": "assistant"}


def _dialogue_id(data: object) -> str | None:
    value = data.get("dialogue_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def records(path: Path) -> Iterator[RawRecord]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.name != SCHEMA_FILE and p.is_file())
        if not files:
            raise UnreadableFile(f"no SGD dialogue files (*.json other than {SCHEMA_FILE}) in {path}")
    else:
        files = [path]
    schema = _schema(folder / SCHEMA_FILE)
    for file in files:
        try:
            for record in json_records(file, _dialogue_id):
                if isinstance(record.data, dict):
                    record = record._replace(data={**record.data, SCHEMA_KEY: schema})
                if path.is_dir():
                    # Several files: a record without an id of its own is named by file and index, as read_path does.
                    record = record._replace(path=str(file), raw_id=record.raw_id or f"{file.stem}#{record.line}")
                yield record
        except UnreadableFile as exc:
            raise UnreadableFile(f"{file.name}: {exc}") from None


def _schema(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise UnreadableFile(f"no {SCHEMA_FILE} beside the dialogues: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            entries = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFile(f"{path}: not a JSON file: {exc}") from None
    if not isinstance(entries, list):
        raise UnreadableFile(f"{path}: expected a JSON list of services, got {type(entries).__name__}")
    services = {}
    for k, entry in enumerate(entries, start=1):
        name = entry.get("service_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise UnreadableFile(f"{path}: service {k}: not an SGD service (an object with a service_name)")
        if name in services:
            raise UnreadableFile(f"{path}: service {k}: service_name '{name}' is defined twice")
        services[name] = entry
    return services


def service_tools(service: dict) -> list[dict]:
    """One canonical tool per intent of an SGD service; TraceError naming the schema field when it cannot be mapped."""
    name = service["service_name"]
    where = f"{SCHEMA_FILE}[{name}]"
    slots = {}
    for k, slot in enumerate(expect(service, "slots", list, f"{where}.slots")):
        slot_name = expect(slot, "name", str, f"{where}.slots[{k}].name")
        schema = {"type": "string", "description": str(slot.get("description") or "")}
        if slot.get("is_categorical"):
            values = expect(slot, "possible_values", list, f"{where}.slots[{k}].possible_values")
            if values:
                schema["enum"] = values
        slots[slot_name] = schema
    tools = []
    for k, intent in enumerate(expect(service, "intents", list, f"{where}.intents")):
        field = f"{where}.intents[{k}]"
        intent_name = expect(intent, "name", str, f"{field}.name")
        required = expect(intent, "required_slots", list, f"{field}.required_slots")
        optional = intent.get("optional_slots") or {}
        if not isinstance(optional, dict):
            raise TraceError("expected an object {slot: default}", f"{field}.optional_slots")
        properties = {}
        for slot_name in list(required) + [s for s in optional if s not in required]:
            if slot_name not in slots:
                raise TraceError(f"invalid schema: intent '{intent_name}' of '{name}' names slot '{slot_name}', "
                                 "not a slot of the service", field)
            properties[slot_name] = dict(slots[slot_name])
            default = optional.get(slot_name)
            if slot_name not in required and default is not None and default != "dontcare":
                properties[slot_name]["default"] = default
        tools.append({
            "name": f"{name}.{intent_name}",
            "description": str(intent.get("description") or ""),
            "parameters": {"type": "object", "properties": properties, "required": list(required)},
        })
    return tools


def _offered_row(actions: list, rows: list) -> int:
    """The index of the last row a system turn's OFFER acts name (the first row holding each offered value), or -1."""
    last = -1
    for action in actions:
        if not isinstance(action, dict) or action.get("act") != "OFFER":
            continue
        slot, values = action.get("slot"), action.get("values") or []
        found = next((k for k, row in enumerate(rows) if isinstance(row, dict) and row.get(slot) in values), -1)
        last = max(last, found)
    return last


def _rows_kept(turns: list) -> dict[tuple[int, int], int]:
    """(turn, frame) of each call -> rows of its results to keep: RESULT_ROWS, or up to the last row that the
    system offers from them before the same service is called again."""
    kept: dict[tuple[int, int], int] = {}
    latest: dict[str, tuple[tuple[int, int], list]] = {}  # service -> ((turn, frame) of its latest call, its rows)
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("speaker") != "SYSTEM":
            continue
        for f, frame in enumerate(turn.get("frames") or []):
            if not isinstance(frame, dict):
                continue
            service = frame.get("service")
            if "service_call" in frame:
                rows = frame.get("service_results") or []
                latest[service] = ((t, f), rows if isinstance(rows, list) else [])
                kept[(t, f)] = RESULT_ROWS
            if service in latest:
                call_turn, rows = latest[service]
                kept[call_turn] = max(kept[call_turn], _offered_row(frame.get("actions") or [], rows) + 1)
    return kept


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    schema = record.get(SCHEMA_KEY)
    if not isinstance(schema, dict):
        raise TraceError(f"no service schema: SGD dialogues are read with their {SCHEMA_FILE}", "services")
    services = expect(record, "services", list, "services")
    tools: list[dict] = []
    for k, service in enumerate(services):
        if service not in schema:
            raise TraceError(f"unknown service {json.dumps(service)}: not in {SCHEMA_FILE}", f"services[{k}]")
        tools.extend(service_tools(schema[service]))
    by_name = {tool["name"]: tool for tool in tools}

    turns = expect(record, "turns", list, "turns")
    rows_kept = _rows_kept(turns)
    messages: list[dict] = []
    trimmed = 0
    for t, turn in enumerate(turns):
        field = f"turns[{t}]"
        speaker = expect(turn, "speaker", str, f"{field}.speaker")
        if speaker not in SPEAKERS:
            raise TraceError(f"unknown role {speaker!r} (expected USER or SYSTEM)", f"{field}.speaker")
        utterance = expect(turn, "utterance", str, f"{field}.utterance")
        frames = expect(turn, "frames", list, f"{field}.frames")
        for f, frame in enumerate(frames):
            service = expect(frame, "service", str, f"{field}.frames[{f}].service")
            if service not in schema:
                raise TraceError(f"unknown service {json.dumps(service)}: not in {SCHEMA_FILE}",
                                 f"{field}.frames[{f}].service")
            if service not in services:
                raise TraceError(f"service '{service}' is not among the dialogue's services",
                                 f"{field}.frames[{f}].service")
        calls = [(f, frame) for f, frame in enumerate(frames) if "service_call" in frame]
        if calls and speaker != "SYSTEM":
            raise TraceError("a service call on a USER turn", f"{field}.frames[{calls[0][0]}].service_call")
        for f, frame in calls:
            cfield = f"{field}.frames[{f}].service_call"
            service_call = expect(frame, "service_call", dict, cfield)
            method = expect(service_call, "method", str, f"{cfield}.method")
            name = f"{frame['service']}.{method}"
            if name not in by_name:
                raise TraceError(f"call to tool '{name}' which is not in {SCHEMA_FILE} (no intent '{method}' in "
                                 f"service '{frame['service']}')", f"{cfield}.method")
            call = {"name": name, "arguments": expect(service_call, "parameters", dict, f"{cfield}.parameters")}
            check_call_arguments(call, by_name[name]["parameters"], f"{cfield}.parameters")
            rows = frame.get("service_results", [])
            if not isinstance(rows, list):
                raise TraceError(f"expected a list, got {type(rows).__name__}", f"{field}.frames[{f}].service_results")
            keep = rows_kept[(t, f)]
            trimmed += len(rows) > keep
            result = {"count": len(rows), "results": rows[:keep]}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append({"role": "tool", "name": name, "content": json.dumps(result, ensure_ascii=False)})
        messages.append({"role": SPEAKERS[speaker], "content": utterance})

    meta = {"task": "sgd", "kind": kind_of(messages), "services": list(services), "trimmed_results": trimmed}
    return trace(source, record.get("dialogue_id"), tools, messages, meta)
