"""The tokenize stage for one split in one process: plan, every shard in turn, manifest (benchmarks and tests; the
pipeline runs the same steps as separate jobs, rules/tokenize.smk).

Takes: a samples file, a tokenizer folder, an output folder and the tokenize config.
Gives: `tokenize_split` -> plan.json, the shards with their stats and manifest.json in the output folder; returns the
manifest.
"""

from __future__ import annotations

from pathlib import Path

from agenttune.common.manifest import write_json_atomic
from agenttune.tokenize.encoder import ChatEncoder
from agenttune.tokenize.manifest import gather_manifest, manifest_extra
from agenttune.tokenize.plan import plan_shards
from agenttune.tokenize.shards import tokenize_shard


def tokenize_split(samples_path: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, cfg: dict,
                   split: str = "train", encoder: ChatEncoder | None = None) -> dict:
    """Plan, tokenize every shard in turn and gather, in one process (benchmarks and tests; the pipeline runs the
    same steps as separate jobs)."""
    out_dir = Path(out_dir)
    plan = plan_shards({split: samples_path}, cfg["samples_per_shard"])
    write_json_atomic(out_dir / "plan.json", plan)
    encoder = encoder or ChatEncoder.from_folder(tokenizer_dir)
    stat_paths = []
    for entry in plan["splits"][split]["shards"]:
        stats = tokenize_shard(samples_path, plan, split, entry["shard"], tokenizer_dir,
                               out_dir / f"{split}-{entry['shard']}.parquet", cfg, encoder)
        stat_path = out_dir / f"{split}-{entry['shard']}.stats.json"
        write_json_atomic(stat_path, stats)
        stat_paths.append(stat_path)
    return gather_manifest(stat_paths, out_dir / "manifest.json", manifest_extra(cfg, encoder, plan))
