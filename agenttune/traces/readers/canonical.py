"""Canonical reader: traces already in the canonical schema (docs/trace-schema.md), e.g. an earlier ingest's output.

Takes: a .jsonl file (or a .json list, or a directory of them) of canonical traces.
Gives: each trace as is; ingest re-assigns `id` ("<source name>:<old id>") and `source`, and validates it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from agenttune.traces.readers.common import RawRecord, expect_object, read_path

FORMAT = "canonical"


def records(path: Path) -> Iterator[RawRecord]:
    return read_path(path)


def to_trace(record_data: object, source: str) -> dict:
    return {**expect_object(record_data), "source": source}
