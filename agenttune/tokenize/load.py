"""Training's view of the shards: the rows a training job reads.

Takes: Parquet shard paths (written by `agenttune.tokenize.shards`).
Gives: `load_shards` -> rows of id, input_ids, labels and (when the shard has them) seq_lens. A row longer than the
max_len its shard records (its Parquet metadata) is refused, naming the shard and the row: such a shard was not
written by the tokenize stage, and training would size its batches and cost estimate wrongly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq

from agenttune.tokenize.pack import MAX_LEN_KEY


def load_shards(paths: Sequence[str | Path]) -> list[dict]:
    """Rows for training: id, input_ids, labels, and seq_lens (the lengths of the samples in a packed row; one
    length for an unpacked row)."""
    rows = []
    for p in paths:
        table = pq.read_table(p)
        columns = ["id", "input_ids", "labels"] + (["seq_lens"] if "seq_lens" in table.column_names else [])
        shard_rows = table.select(columns).to_pylist()
        recorded = (table.schema.metadata or {}).get(MAX_LEN_KEY)
        if recorded is not None:
            max_len = int(recorded)
            for r in shard_rows:
                if len(r["input_ids"]) > max_len:
                    raise ValueError(f"{p}: row {r['id']} has {len(r['input_ids'])} tokens, more than the max_len "
                                     f"{max_len} the shard records")
        rows.extend(shard_rows)
    return rows
