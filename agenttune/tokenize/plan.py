"""Shard plan: which lines of each split's samples file go to which shard.

Takes: the samples files per split (JSON Lines) and `samples_per_shard`.
Gives: `plan_shards` -> the content of `plan.json` (per split: size, sha256, and per shard its first line, sample
count and byte range); `read_shard_samples` -> the samples of one plan entry.

Memory is bounded by a shard: the plan is made by streaming the samples file, and a shard job reads only its byte
range of it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterator


def _count_lines(path: Path) -> tuple[int, str, int]:
    """(non-blank lines, sha256, size in bytes), streaming."""
    h = hashlib.sha256()
    n = size = 0
    with open(path, "rb") as fh:
        for line in fh:
            h.update(line)
            size += len(line)
            if line.strip():
                n += 1
    return n, h.hexdigest(), size


def plan_split(path: str | Path, samples_per_shard: int) -> dict:
    """Cut one samples file into shards of at most `samples_per_shard` samples, as even as possible (at least one
    shard, empty for an empty split). Two streaming passes; memory does not grow with the file."""
    if samples_per_shard < 1:
        raise ValueError("tokenize.samples_per_shard must be >= 1")
    path = Path(path)
    n, sha, size = _count_lines(path)
    n_shards = max(1, math.ceil(n / samples_per_shard))
    sizes = [n // n_shards + (k < n % n_shards) for k in range(n_shards)]
    shards, k, in_shard, offset, line_no = [], 0, 0, 0, 0
    current = {"shard": 0, "first_line": 1, "samples": sizes[0], "byte_start": 0}
    with open(path, "rb") as fh:
        for line in fh:
            line_no += 1
            if line.strip():
                if in_shard == sizes[k] and k + 1 < n_shards:
                    current["byte_end"] = offset
                    shards.append(current)
                    k += 1
                    in_shard = 0
                    current = {"shard": k, "first_line": line_no, "samples": sizes[k], "byte_start": offset}
                in_shard += 1
            offset += len(line)
    current["byte_end"] = offset
    shards.append(current)
    return {"path": str(path), "samples": n, "bytes": size, "sha256": sha, "shards": shards}


def plan_shards(samples: dict[str, str | Path], samples_per_shard: int) -> dict:
    return {"samples_per_shard": samples_per_shard,
            "splits": {split: plan_split(path, samples_per_shard) for split, path in sorted(samples.items())}}


def read_shard_samples(path: str | Path, entry: dict, expect_bytes: int | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, sample) for the lines of one plan entry, reading only its byte range."""
    path = Path(path)
    if expect_bytes is not None and path.stat().st_size != expect_bytes:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, the shard plan expected {expect_bytes}: "
                         "the samples changed after planning; re-run the plan")
    with open(path, "rb") as fh:
        fh.seek(entry["byte_start"])
        data = fh.read(entry["byte_end"] - entry["byte_start"])
    line_no = entry["first_line"]
    n = 0
    for raw in data.split(b"\n"):
        if raw.strip():
            try:
                yield line_no, json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({exc.msg}, column {exc.colno})") from None
            n += 1
        line_no += 1
    if n != entry["samples"]:
        raise ValueError(f"{path}: shard {entry['shard']} holds {n} samples, the plan says {entry['samples']}")
