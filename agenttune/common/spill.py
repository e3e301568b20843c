"""Bounded-memory bookkeeping for the streaming data stage.

The formatting passes (agenttune.data.format) must remember a little about every item: its split and category, whether
its id was seen before, the held-out query keys, one selection number per negative candidate and general item,
the mined negatives, and the held-out n-grams. Kept in memory that grows with the input (about 90 bytes per
input line measured); kept here it lives in files of one scratch folder and memory stays flat however large the
input is (bench/bench_format.py):

  - `Scratch`: the folder, and one SQLite database in it with a small page cache (sets, lookups and ordered
    selection; SQLite sorts on disk when a sort does not fit its cache);
  - `CodeFile`: one byte per item, written and read strictly in order;
  - `Partitions`: append-only int64 records routed to one of P files by a key, with a bounded write buffer
    (the n-gram join in agenttune.data.decontam.NgramOverlap works one partition at a time).

Nothing here changes a result: it only decides where the numbers wait between passes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from array import array
from pathlib import Path
from typing import Iterator

import numpy as np

# SQLite's page cache, per connection (negative = KiB): the database's share of memory whatever the input size.
CACHE_KIB = 512
# Records buffered in memory across all partitions before they go to their files.
BUFFER_RECORDS = 1 << 16


def signed64(key: int) -> int:
    """An unsigned 64-bit key as the signed integer SQLite stores (order-preserving shift)."""
    return key - (1 << 63)


class Scratch:
    """A scratch folder (removed on close) and a SQLite database in it, tuned for one writer and no durability:
    if the process is killed, the stage starts over, and the next Scratch in the same place removes the folder
    the dead process left behind."""

    def __init__(self, parent: str | Path | None = None):
        parent = Path(parent if parent is not None else tempfile.gettempdir())
        _remove_stale(parent)
        self.dir = Path(tempfile.mkdtemp(prefix=f".scratch-{os.getpid()}-", dir=parent))
        self.db = sqlite3.connect(self.dir / "state.sqlite", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE", "temp_store=FILE",
                       f"cache_size=-{CACHE_KIB}"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("BEGIN")

    def path(self, name: str) -> Path:
        return self.dir / name

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_stale(parent: Path) -> None:
    """Remove scratch folders of processes that no longer exist (a killed run's leftovers)."""
    for path in parent.glob(".scratch-*-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # someone else's live process
            pass


class Batched:
    """Rows for one INSERT statement, sent to SQLite in batches (executemany per row is the slow part)."""

    def __init__(self, db: sqlite3.Connection, sql: str, size: int = 4096):
        self.db, self.sql, self.size = db, sql, size
        self.rows: list[tuple] = []

    def add(self, *row) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.db.executemany(self.sql, self.rows)
            self.rows = []


class CodeFile:
    """One byte per item, appended in order, then read back in the same order (a file, not a bytearray)."""

    def __init__(self, path: Path):
        self.path = path
        self._out = open(path, "wb")
        self._buf = bytearray()

    def append(self, code: int) -> None:
        self._buf.append(code)
        if len(self._buf) >= 1 << 16:
            self._out.write(self._buf)
            self._buf = bytearray()

    def close(self) -> None:
        self._out.write(self._buf)
        self._buf = bytearray()
        self._out.close()

    def __iter__(self) -> Iterator[int]:
        with open(self.path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                yield from chunk


class Partitions:
    """Records of `width` int64 columns, routed by their first column (mod P) to P append-only files."""

    def __init__(self, folder: Path, name: str, parts: int, width: int = 1):
        self.folder, self.name, self.parts, self.width = folder, name, parts, width
        self._buffers = [array("q") for _ in range(parts)]
        # The buffers together hold at most about BUFFER_RECORDS records, whatever P is.
        self._flush_at = max(256, BUFFER_RECORDS // parts) * width
        self.records = 0

    def _file(self, part: int) -> Path:
        return self.folder / f"{self.name}.{part}"

    def add(self, keys: np.ndarray, *columns: np.ndarray) -> None:
        """Append records (keys[i], columns[0][i], ...)."""
        if not len(keys):
            return
        self.records += len(keys)
        rows = np.column_stack([keys, *columns]).astype(np.int64, copy=False) if columns else keys.astype(np.int64)
        part_of = np.mod(keys, self.parts)
        for part in np.unique(part_of).tolist():
            buf = self._buffers[part]
            buf.frombytes(np.ascontiguousarray(rows[part_of == part]).tobytes())
            if len(buf) >= self._flush_at:
                self._flush(part)

    def _flush(self, part: int) -> None:
        buf = self._buffers[part]
        if buf:
            with open(self._file(part), "ab") as fh:
                fh.write(buf.tobytes())
            self._buffers[part] = array("q")

    def close(self) -> None:
        for part in range(self.parts):
            self._flush(part)

    def read(self, part: int, chunk_records: int | None = None) -> Iterator[np.ndarray]:
        """A partition's records as (n, width) arrays (or n-vectors for width 1), in chunks if asked."""
        path = self._file(part)
        if not path.exists():
            return
        step = (chunk_records or -1) * self.width
        with open(path, "rb") as fh:
            while True:
                data = np.fromfile(fh, dtype=np.int64, count=step)
                if not len(data):
                    return
                yield data.reshape(-1, self.width) if self.width > 1 else data
                if step < 0:
                    return


class SeenSet:
    """A set on disk (one SQLite table): `key in seen`, `seen.add(key)`; keys are str or bytes."""

    def __init__(self, scratch: Scratch, name: str):
        self.db, self.name = scratch.db, name
        self.db.execute(f"CREATE TABLE {name} (k PRIMARY KEY) WITHOUT ROWID")
        self._contains = f"SELECT 1 FROM {name} WHERE k = ?"
        self._add = f"INSERT OR IGNORE INTO {name} VALUES (?)"

    def __contains__(self, key: str | bytes) -> bool:
        return self.db.execute(self._contains, (key,)).fetchone() is not None

    def add(self, key: str | bytes) -> None:
        self.db.execute(self._add, (key,))
