"""What the trace readers share: `RawRecord` / `RawError`, `UnreadableFile`, streaming record iterators for JSON
Lines, JSON lists and directories (`read_path`), and small mapping helpers (`expect`, `trace`, ...).

Its own module so that each reader imports these from here and the registry (agenttune.traces.readers) imports the
readers, with no import circle between them.
"""


from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from agenttune.traces.canonical import TraceError


class RawError(NamedTuple):
    """An input record that could not even be decoded (bad UTF-8, malformed JSON); ingest quarantines it."""

    reason: str


class RawRecord(NamedTuple):
    """One input record. `line` counts from 1 in the unit named by `unit`:
    "line" (physical line of a JSON Lines file), "index" (element of a top-level JSON list),
    "file" (a whole file is one record) or "row" (a dataset row). `path` is set when the record
    comes from a file other than the source path (a directory source)."""

    line: int
    raw_id: str | None
    data: object
    path: str | None = None
    unit: str = "line"


class UnreadableFile(Exception):
    """A whole input file cannot be parsed (not a record-level problem): ingest stops with an IngestError."""


# --- record iterators ------------------------------------------------------------------------------------------


def raw_id_of(data: object) -> str | None:
    """The record's own `id` (string or integer), if it has one."""
    value = data.get("id") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    return str(value)


def jsonl_records(path: Path, raw_id: Callable[[object], str | None] = raw_id_of) -> Iterator[RawRecord]:
    """One record per non-blank line; a line that is not UTF-8 or not JSON becomes a RawError, and reading goes on."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(line_no, None, RawError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            if line_no == 1:
                text = text.lstrip("\ufeff")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRecord(line_no, None, RawError(f"malformed JSON: {exc.msg} (column {exc.colno})"))
                continue
            yield RawRecord(line_no, raw_id(data), data)


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_CHUNK = 1 << 20
_FIRST_CHAR_TYPES = {"{": "an object", "[": "a list", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}


class _Window:
    """A sliding text window over a file, so a JSON list can be decoded one element at a time."""

    def __init__(self, fh):
        self.fh, self.buf, self.pos, self.offset, self.eof = fh, "", 0, 0, False

    def fill(self) -> bool:
        if self.eof:
            return False
        # Reading at least as much as is still unparsed keeps re-parsing of one big element linear overall.
        chunk = self.fh.read(max(_CHUNK, len(self.buf) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.offset += self.pos
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def peek(self) -> str:
        """Skip whitespace; the next character, or "" at end of file."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def value(self) -> object:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
                # A number that ends exactly at the window's edge may continue in the next chunk.
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return value
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise UnreadableFile(f"malformed JSON at character {self.offset + exc.pos}: {exc.msg}") from None
            self.fill()


def json_records(
    path: Path, raw_id: Callable[[object], str | None] = raw_id_of, allow_object: bool = False
) -> Iterator[RawRecord]:
    """Stream the elements of a top-level JSON list (line = 1-based index), or, with allow_object, a top-level
    object as one record. Anything else, bad UTF-8 or malformed JSON raises UnreadableFile."""
    with open(path, encoding="utf-8", newline="") as fh:
        try:
            yield from _json_document(_Window(fh), path, raw_id, allow_object)
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"not valid UTF-8 ({exc.reason})") from None


def _json_document(window: _Window, path: Path, raw_id, allow_object: bool) -> Iterator[RawRecord]:
    first = window.peek()
    if first == "\ufeff":
        window.pos += 1
        first = window.peek()
    if first == "{" and allow_object:
        value = window.value()
        yield RawRecord(1, raw_id(value) or path.stem, value, unit="file")
    elif first == "[":
        window.pos += 1
        index = 0
        closed = window.peek() == "]"
        if closed:
            window.pos += 1
        while not closed:
            value = window.value()
            index += 1
            yield RawRecord(index, raw_id(value), value, unit="index")
            after = window.peek()
            if after not in (",", "]"):
                raise UnreadableFile(f"malformed JSON at character {window.offset + window.pos}: expected ',' or ']'")
            window.pos += 1
            closed = after == "]"
    else:
        found = (
            "an empty file"
            if not first
            else _FIRST_CHAR_TYPES.get(first, "a number" if first in "-0123456789" else "text that is not JSON")
        )
        wanted = "a JSON list or object" if allow_object else "a JSON list"
        raise UnreadableFile(f"expected {wanted} at the top level, found {found}")
    if window.peek():
        raise UnreadableFile(f"extra data after the top-level JSON value at character {window.offset + window.pos}")


def read_path(
    path: Path, raw_id: Callable[[object], str | None] = raw_id_of, allow_object: bool = False
) -> Iterator[RawRecord]:
    """Records from a .jsonl file, a .json file (see json_records) or a directory of them (sorted, recursive;
    a record without an id of its own gets one from its file's relative path)."""
    path = Path(path)
    if not path.is_dir():
        reader = jsonl_records(path, raw_id) if path.suffix == ".jsonl" else json_records(path, raw_id, allow_object)
        yield from reader
        return
    files = sorted(
        (p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    for file in files:
        rel = file.relative_to(path).with_suffix("").as_posix()
        for record in read_path(file, raw_id, allow_object):
            own = raw_id(record.data) if not isinstance(record.data, RawError) else None
            record_id = own or (rel if record.unit == "file" else f"{rel}#{record.line}")
            yield record._replace(raw_id=record_id, path=str(file))


# --- mapping helpers -------------------------------------------------------------------------------------------


def expect(obj: object, key: str, kind: type | tuple, field: str) -> object:
    """obj[key], which must exist and be of `kind`; else TraceError naming `field`."""
    if not isinstance(obj, dict):
        raise TraceError(f"expected a JSON object holding '{key}', got {type(obj).__name__}", field)
    if key not in obj:
        raise TraceError("missing", field)
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise TraceError(f"expected {names}, got {type(value).__name__}", field)
    return value


def expect_object(value: object, field: str = "") -> dict:
    if not isinstance(value, dict):
        raise TraceError(f"expected a JSON object, got {type(value).__name__}", field)
    return value


def unknown_role(role: object, field: str) -> TraceError:
    return TraceError(f"unknown role {role!r}", field)


def text_of(value: object) -> str:
    """Message content as text: None -> "", OpenAI content parts -> their joined text, other JSON -> its dump."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(p, dict) and "text" in p for p in value):
        return "".join(str(p["text"]) for p in value)
    return json.dumps(value, ensure_ascii=False)


def parse_arguments(value: object, field: str) -> dict:
    """Call arguments as an object; a JSON string is decoded ("" means no arguments)."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TraceError(f"arguments are not valid JSON: {exc.msg} (column {exc.colno})", field) from None
    if not isinstance(value, dict):
        raise TraceError(f"arguments are not a JSON object (got {type(value).__name__})", field)
    return value


def tool_schema(value: object, field: str) -> dict:
    """A canonical tool from a function schema, bare or OpenAI-wrapped ({"type": "function", "function": {...}}).
    A missing description becomes "" and missing parameters an empty object schema: both are legal functions."""
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        value = value["function"]
    name = expect(value, "name", str, f"{field}.name")
    description = value.get("description")
    parameters = value.get("parameters")
    return {
        "name": name,
        "description": "" if description is None else description,
        "parameters": {"type": "object", "properties": {}} if parameters is None else parameters,
    }


def kind_of(messages: list[dict]) -> str:
    return "tool" if any(m.get("tool_calls") for m in messages) else "no_tool"


def trace(source: str, raw_id: object, tools: list, messages: list, meta: dict) -> dict:
    """A canonical trace dict in the usual key order; ingest replaces id and source with its own."""
    return {"id": str(raw_id) if raw_id else "", "source": source, "tools": tools, "messages": messages, "meta": meta}


# --- call arguments against a tool's JSON schema -----------------------------------------------------------------

# JSON-schema type name -> the Python types a decoded JSON value of that type has (bool is not a number here).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _json_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def argument_problem(value: object, schema: dict) -> str | None:
    """Why `value` does not fit one parameter's JSON schema (its `type`, a list of types, and `enum`), or None.
    Only these keywords are checked: they are all the readers that call this write."""
    wanted = schema.get("type")
    if wanted is not None:
        names = wanted if isinstance(wanted, list) else [wanted]
        fits = any(
            isinstance(value, _JSON_TYPES.get(name, ())) and not (isinstance(value, bool) and name != "boolean")
            for name in names
        )
        if not fits:
            shown = json.dumps(value, ensure_ascii=False)
            return f"is {_json_type_name(value)} {shown}, the tool declares {'/'.join(names)}"
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        return f"is {json.dumps(value, ensure_ascii=False)}, not one of {json.dumps(enum, ensure_ascii=False)}"
    return None


def check_call_arguments(call: dict, parameters: dict, field: str) -> None:
    """Every argument of `call` is a declared parameter of its tool and fits that parameter's schema; else a
    TraceError "invalid argument ..." naming the argument (required arguments are ingest's own check)."""
    properties = parameters.get("properties") or {}
    for name, value in call["arguments"].items():
        if name not in properties:
            raise TraceError(f"invalid argument '{name}': not a parameter of tool '{call['name']}'", f"{field}.{name}")
        problem = argument_problem(value, properties[name])
        if problem:
            raise TraceError(f"invalid argument '{name}' for tool '{call['name']}': {problem}", f"{field}.{name}")
