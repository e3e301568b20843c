"""Token shards for the training tests: random ids, the first half of each row masked out of the loss."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from agenttune.tokenize.encoder import IGNORE_INDEX
from agenttune.tokenize.shards import SHARD_SCHEMA

# The optimisation hyper-parameters every training test shares; tests add what they vary.
CFG = {"epochs": 2, "learning_rate": 1e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.0,
       "batch_size": 1, "grad_accum": 2, "tuning": "full", "precision": "fp32", "attn_implementation": "sdpa"}


def write_shards(out: Path, n_shards: int = 2, rows_per_shard: int = 6, min_len: int = 12, max_len: int = 40,
                 seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(n_shards):
        rows = {k: [] for k in SHARD_SCHEMA.names}
        for i in range(rows_per_shard):
            n = rng.randint(min_len, max_len)
            ids = [rng.randint(10, 2000) for _ in range(n)]
            labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2:]
            rows["id"].append(f"s{shard}-{i}")
            rows["input_ids"].append(ids)
            rows["labels"].append(labels)
            rows["n_tokens"].append(n)
            rows["n_trained"].append(n - n // 2)
        path = out / f"train-{shard}.parquet"
        pq.write_table(pa.table(rows, schema=SHARD_SCHEMA), path)
        paths.append(path)
    return paths
