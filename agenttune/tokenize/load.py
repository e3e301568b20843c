"""Training's view of the shards: the rows a training job reads.

Takes: Parquet shard paths (written by `agenttune.tokenize.shards`).
Gives: `load_shards` -> rows of id, input_ids, labels and (when the shard has them) seq_lens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq


def load_shards(paths: Sequence[str | Path]) -> list[dict]:
    """Rows for training: id, input_ids, labels, and seq_lens (the lengths of the samples in a packed row; one
    length for an unpacked row)."""
    rows = []
    for p in paths:
        table = pq.read_table(p)
        columns = ["id", "input_ids", "labels"] + (["seq_lens"] if "seq_lens" in table.column_names else [])
        rows.extend(table.select(columns).to_pylist())
    return rows
