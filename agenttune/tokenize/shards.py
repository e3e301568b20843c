"""Tokenize stage: the samples of one plan entry -> one Parquet shard of token ids and labels, with its stats.

Takes: a split's samples file, the shard plan (`agenttune.tokenize.plan`), a tokenizer folder and the tokenize
config (max_len, overlong, packing).
Gives: `tokenize_shard` -> `<split>-<k>.parquet` (columns id, input_ids, labels, n_tokens, n_trained, sample_ids,
seq_lens; one sample per row, or several per row with `packing: true`) and its stats; `shard_table`,
`write_table_atomic`.

The samples the encoder drops (over max_len, no trained token) are counted by reason in the stats, with their ids.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agenttune.common.atomic import atomic_write
from agenttune.common.config import section_with_defaults
from agenttune.common.manifest import sha256_file
from agenttune.tokenize.encoder import IGNORE_INDEX, ChatEncoder, Dropped, Encoded
from agenttune.tokenize.pack import MAX_LEN_KEY, PACKING_KEY, best_fit_decreasing, packing_efficiency
from agenttune.tokenize.plan import read_shard_samples

# The columns training needs; a table with only these holds one sample per row.
SHARD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("n_tokens", pa.int32()),
    ("n_trained", pa.int32()),
])
# What tokenize_shard writes: plus the samples each row holds and their lengths (their sum is n_tokens).
SHARD_SCHEMA_FULL = SHARD_SCHEMA.append(pa.field("sample_ids", pa.list_(pa.string()))).append(
    pa.field("seq_lens", pa.list_(pa.int32())))

def _list_array(arrays: list[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values, type=pa.int32()))


def shard_table(kept: list[Encoded], max_len: int, packing: bool) -> pa.Table:
    """One row per sample, or (packing) rows of several samples by best-fit decreasing."""
    if packing:
        groups = best_fit_decreasing([len(e.input_ids) for e in kept], max_len)
    else:
        groups = [[i] for i in range(len(kept))]
    ids, labels, sample_ids, seq_lens, row_ids, n_tokens, n_trained = [], [], [], [], [], [], []
    for group in groups:
        members = [kept[i] for i in group]
        ids.append(np.concatenate([e.input_ids for e in members]))
        labels.append(np.concatenate([e.labels for e in members]))
        sample_ids.append([e.id for e in members])
        seq_lens.append([len(e.input_ids) for e in members])
        row_ids.append(members[0].id)
        n_tokens.append(len(ids[-1]))
        n_trained.append(int(np.count_nonzero(labels[-1] != IGNORE_INDEX)))
    schema = SHARD_SCHEMA_FULL.with_metadata({PACKING_KEY: b"true" if packing else b"false",
                                              MAX_LEN_KEY: str(max_len).encode()})
    return pa.Table.from_arrays([
        pa.array(row_ids, type=pa.string()),
        _list_array(ids),
        _list_array(labels),
        pa.array(n_tokens, type=pa.int32()),
        pa.array(n_trained, type=pa.int32()),
        pa.array(sample_ids, type=pa.list_(pa.string())),
        pa.array(seq_lens, type=pa.list_(pa.int32())),
    ], schema=schema)


def write_table_atomic(table: pa.Table, out_path: str | Path) -> None:
    with atomic_write(out_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def tokenize_shard(samples_path: str | Path, plan: dict, split: str, shard: int, tokenizer_dir: str | Path,
                   out_path: str | Path, cfg: dict, encoder: ChatEncoder | None = None) -> dict:
    """Tokenize the samples of one plan entry and write its Parquet shard atomically; return its stats."""
    split_plan = plan["splits"][split]
    entry = next((e for e in split_plan["shards"] if e["shard"] == shard), None)
    if entry is None:
        raise ValueError(f"shard {shard} of split {split} is not in the plan ({len(split_plan['shards'])} shards)")
    encoder = encoder or ChatEncoder.from_folder(tokenizer_dir)
    cfg = section_with_defaults(cfg, "tokenize")
    max_len, overlong, packing = cfg["max_len"], cfg["overlong"], bool(cfg["packing"])
    lines, samples = [], []
    for line_no, sample in read_shard_samples(samples_path, entry, split_plan["bytes"]):
        lines.append(line_no)
        samples.append(sample)
    before = Counter(encoder.counts)
    try:
        results = encoder.encode(samples, max_len, overlong)
    except ValueError as exc:
        # Name the file and line: find the sample that fails on its own.
        for line_no, sample in zip(lines, samples):
            try:
                encoder.encode([sample], max_len, overlong)
            except ValueError as one:
                raise ValueError(f"{samples_path}:{line_no}: {one}") from None
        raise ValueError(f"{samples_path}: {exc}") from None
    finally:
        encoder.clear()
    kept = [r for r in results if isinstance(r, Encoded)]
    dropped = [r for r in results if isinstance(r, Dropped)]
    table = shard_table(kept, max_len, packing)
    write_table_atomic(table, out_path)
    tokens = int(sum(len(e.input_ids) for e in kept))
    rows = table.num_rows
    counts = encoder.counts - before
    return {
        "split": split,
        "shard": shard,
        "path": Path(out_path).name,
        "rows": rows,
        "samples_in": len(samples),
        "samples_kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(Counter(d.reason for d in dropped).items())),
        "dropped_ids": {d.id: d.reason for d in dropped},
        "truncated": sum(e.truncated for e in kept),
        "tokens": tokens,
        "trained_tokens": int(sum(np.count_nonzero(e.labels != IGNORE_INDEX) for e in kept)),
        "slots": rows * max_len if packing else tokens,
        "packing_efficiency": round(packing_efficiency(tokens, rows, max_len), 6) if packing else None,
        "sample_lengths": {str(k): v for k, v in sorted(Counter(len(e.input_ids) for e in kept).items())},
        "templates": dict(sorted(Counter(str(s.get("template", "")) for s in samples).items())),
        "reference_path": counts["reference_path"],
        "special_tokens_in_content": counts["special_tokens_in_content"],
        "sha256": sha256_file(out_path),
    }
