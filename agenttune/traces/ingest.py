"""Ingest: raw trace sources -> one canonical JSONL file, a quarantine file and exact per-source accounting.

Takes: a list of `SourceSpec(name, path, format, limit)`; `format` names a reader (agenttune.traces.readers).
Gives, written atomically (temp file beside each target, then os.replace, only when everything succeeded):
  - out_path: kept traces, canonical JSONL, sources in the given order and records in file order, each line
    `json.dumps(trace, ensure_ascii=False, separators=(",", ":"))`; id = "<source name>:<raw id>" (a record
    without an id of its own uses its line/index number), source = the source name;
  - quarantine_path: one JSON line per rejected record:
    `{"source", "path", "line", "unit", "id", "field", "kind", "reason"}` where `unit` says what `line` counts
    ("line" of a JSONL file, "index" in a JSON list, "file", "row"), `kind` is a short reason code (REASON_KINDS);
  - stats_path: `{"sources": [{name, path, format, read, kept, quarantined, quarantined_by_kind, deduplicated}],
    "total": {...}}`, with read = kept + quarantined + deduplicated checked before writing.
Checks, beyond validate_trace: call arguments that are not (valid JSON) objects, a call missing a required
argument of its tool's schema, duplicate ids (within and across sources), and exact duplicates (same tools and
messages as a kept trace: counted as deduplicated, not quarantined; checked before the id, so a repeated record
is a duplicate, while a different record reusing an id is quarantined).
The seen ids and content hashes wait on disk (agenttune.common.spill.SeenSet, in a scratch folder beside out_path that
is removed at the end), so memory does not grow with the number of records. A source that cannot be read at all (missing file, not JSON,
wrong top-level type, unknown format) raises IngestError and nothing is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from agenttune.common.atomic import atomic_write, jsonl_line
from agenttune.common.spill import Scratch, SeenSet
from agenttune.traces.canonical import TraceError, validate_trace
from agenttune.traces.formats import get_reader
from agenttune.traces.readers.common import RawError, RawRecord, UnreadableFile

# Reason text prefix -> kind; reasons are written by readers/common.py, the readers and canonical.validate_trace.
REASON_KINDS = (
    ("not valid UTF-8", "not_utf8"),
    ("malformed JSON", "malformed_json"),
    ("arguments are not", "bad_arguments"),
    ("missing required argument", "missing_required_argument"),
    ("call to tool", "unknown_tool"),
    ("unknown role", "unknown_role"),
    ("empty trace", "empty_trace"),
    ("duplicate id", "duplicate_id"),
    ("invalid argument", "invalid_argument"),
    ("nested call", "nested_call"),
    ("unknown service", "unknown_service"),
)
OTHER_KIND = "invalid_trace"


@dataclass(frozen=True)
class SourceSpec:
    name: str
    path: str
    format: str
    limit: int | None = None


class IngestError(RuntimeError):
    """A source that cannot be read at all; names the source, file and why."""


def reason_kind(reason: str) -> str:
    return next((kind for prefix, kind in REASON_KINDS if reason.startswith(prefix)), OTHER_KIND)


def check_required_arguments(trace: dict) -> None:
    """Every call names each argument its tool's JSON schema marks `required` (run after validate_trace)."""
    schemas = {tool["name"]: tool["parameters"] for tool in trace["tools"]}
    for i, message in enumerate(trace["messages"]):
        for j, call in enumerate(message.get("tool_calls") or []):
            required = schemas[call["name"]].get("required")
            if not isinstance(required, list):
                continue
            missing = [arg for arg in required if isinstance(arg, str) and arg not in call["arguments"]]
            if missing:
                names = ", ".join(f"'{arg}'" for arg in missing)
                raise TraceError(
                    f"missing required argument {names} for tool '{call['name']}'",
                    f"messages[{i}].tool_calls[{j}].arguments",
                    trace_id=trace["id"],
                )


def content_key(trace: dict) -> bytes:
    text = json.dumps([trace["tools"], trace["messages"]], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).digest()


def _source_records(spec: SourceSpec, reader) -> Iterator[RawRecord]:
    """The reader's records, up to spec.limit; any failure to read the file becomes an IngestError."""
    where = f"source '{spec.name}' ({spec.format}) {spec.path}"
    iterator = itertools.islice(reader.records(Path(spec.path)), spec.limit)
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except UnreadableFile as exc:
            raise IngestError(f"{where}: cannot parse: {exc}") from exc
        except OSError as exc:
            raise IngestError(f"{where}: cannot read: {exc.strerror or exc}") from exc
        except Exception as exc:  # a reader that trips over its input (e.g. csv.Error) must still name the file
            raise IngestError(f"{where}: cannot parse: {type(exc).__name__}: {exc}") from exc
        yield record


def _to_trace(reader, record: RawRecord, source: str, trace_id: str) -> dict:
    if isinstance(record.data, RawError):
        raise TraceError(record.data.reason)
    mapped = reader.to_trace(record.data, source)
    trace = {"id": trace_id, "source": source, **{k: v for k, v in mapped.items() if k not in ("id", "source")}}
    validate_trace(trace)
    check_required_arguments(trace)
    return trace


def _ingest_source(spec: SourceSpec, out, quarantine, seen_ids: SeenSet, seen_content: SeenSet) -> dict:
    try:
        reader = get_reader(spec.format)
    except ValueError as exc:
        raise IngestError(f"source '{spec.name}' {spec.path}: {exc}") from None
    counts = {"read": 0, "kept": 0, "quarantined": 0, "deduplicated": 0}
    by_kind: Counter = Counter()
    for record in _source_records(spec, reader):
        counts["read"] += 1
        trace_id = f"{spec.name}:{record.raw_id if record.raw_id is not None else record.line}"
        try:
            trace = _to_trace(reader, record, spec.name, trace_id)
            key = content_key(trace)
            if key in seen_content:
                counts["deduplicated"] += 1
                continue
            if trace_id in seen_ids:
                raise TraceError("duplicate id: a record with this id was already kept", "id")
        except TraceError as exc:
            kind = reason_kind(exc.reason)
            counts["quarantined"] += 1
            by_kind[kind] += 1
            entry = {
                "source": spec.name,
                "path": record.path or spec.path,
                "line": record.line,
                "unit": record.unit,
                "id": None if isinstance(record.data, RawError) else trace_id,
                "field": exc.field,
                "kind": kind,
                "reason": exc.reason,
            }
            quarantine.write(jsonl_line(entry))
            continue
        seen_ids.add(trace_id)
        seen_content.add(key)
        out.write(jsonl_line(trace))
        counts["kept"] += 1
    stats = {"name": spec.name, "path": spec.path, "format": spec.format, **counts}
    stats["quarantined_by_kind"] = dict(sorted(by_kind.items()))
    return stats


@contextmanager
def _atomic_outputs(*paths: Path):
    """Text handles on temp files beside `paths`; the targets are replaced only if the block succeeds."""
    with ExitStack() as stack:
        yield [stack.enter_context(open(stack.enter_context(atomic_write(path)), "w", encoding="utf-8", newline="\n"))
               for path in paths]


def ingest(sources: list[SourceSpec], out_path, quarantine_path, stats_path) -> dict:
    """Read every source, write kept traces, quarantine and stats; return the stats dict."""
    with _atomic_outputs(Path(out_path), Path(quarantine_path), Path(stats_path)) as (out, quarantine, stats_file), \
            Scratch(Path(out_path).parent) as scratch:
        seen_ids, seen_content = SeenSet(scratch, "ids"), SeenSet(scratch, "content")
        per_source = [_ingest_source(spec, out, quarantine, seen_ids, seen_content) for spec in sources]
        total_kinds: Counter = Counter()
        for stats in per_source:
            total_kinds.update(stats["quarantined_by_kind"])
        total = {key: sum(s[key] for s in per_source) for key in ("read", "kept", "quarantined", "deduplicated")}
        total["quarantined_by_kind"] = dict(sorted(total_kinds.items()))
        result = {"sources": per_source, "total": total}
        for stats in per_source + [total]:
            if stats["read"] != stats["kept"] + stats["quarantined"] + stats["deduplicated"]:
                raise AssertionError(f"ingest accounting broken: {stats}")
            if stats["quarantined"] != sum(stats["quarantined_by_kind"].values()):
                raise AssertionError(f"ingest accounting broken: {stats}")
        stats_file.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return result
