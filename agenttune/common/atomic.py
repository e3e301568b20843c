"""Atomic file writes and JSON Lines reads shared by the stages.

Every output is written to a temporary file beside its target and renamed over it (`os.replace`), so a job killed
mid-write leaves the old file or none, never a half-written one that a later run would trust. `atomic_write` is that
step for writers that want a path (Parquet, matplotlib); `write_text` and `write_jsonl` use it. JSON Lines rows are
compact (no spaces), UTF-8 unescaped, `\\n`-terminated: identical rows give identical bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to: renamed over `path` when the block succeeds, removed when it
    fails (the target keeps its old content)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def jsonl_line(row, compact: bool = True) -> str:
    """One row as a JSON Lines line, newline included: the one row format of every JSONL the pipeline writes, also
    of the writers that stream (ingest, formatting). `compact=False` keeps json.dumps' default `, ` and `: `
    separators: the bytes the demo traces file has always had (a change there would change every demo run's inputs)."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":") if compact else None) + "\n"


def write_jsonl(path: str | Path, rows, compact: bool = True) -> None:
    """One JSON object per line (`jsonl_line`)."""
    with atomic_write(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(jsonl_line(row, compact))


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """The rows of a JSON Lines file, one at a time (blank lines skipped): for files too large to hold at once."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSON Lines file the pipeline wrote (blank lines skipped)."""
    return list(iter_jsonl(path))
