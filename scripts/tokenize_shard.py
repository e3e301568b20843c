import json
import os

# The Rust tokenizer's thread pool: as many threads as Snakemake gave the job (set before tokenizers loads).
os.environ["RAYON_NUM_THREADS"] = str(snakemake.threads)

from agenttune.common.manifest import write_json_atomic  # noqa: E402
from agenttune.common.runlog import stage_log  # noqa: E402
from agenttune.tokenize.shards import tokenize_shard  # noqa: E402

with stage_log(snakemake.log[0]) as log:
    plan = json.loads(open(snakemake.input.plan, encoding="utf-8").read())
    split, shard = snakemake.wildcards.split, int(snakemake.wildcards.shard)
    stats = tokenize_shard(snakemake.input.samples, plan, split, shard, snakemake.input.model,
                           snakemake.output.shard, snakemake.params.tokenize)
    write_json_atomic(snakemake.output.stats, stats)
    eff = f", packing efficiency {stats['packing_efficiency']:.4f}" if stats["packing_efficiency"] is not None else ""
    log(f"{stats['samples_in']} samples -> {stats['rows']} rows, {stats['tokens']} tokens, {stats['dropped']} dropped "
        f"{stats['dropped_by_reason']}, {stats['truncated']} truncated{eff} -> {snakemake.output.shard}")
