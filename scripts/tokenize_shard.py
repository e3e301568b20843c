from agenttune.manifest import write_json_atomic
from agenttune.runlog import stage_log
from agenttune.tokenize import tokenize_shard

with stage_log(snakemake.log[0]) as log:
    cfg = snakemake.params.tokenize
    shard = int(snakemake.wildcards.shard)
    stats = tokenize_shard(snakemake.input.samples, snakemake.input.model, snakemake.output.shard, shard,
                           cfg["num_shards"], cfg["max_len"], cfg["overlong"])
    write_json_atomic(snakemake.output.stats, {"split": snakemake.wildcards.split, "shard": shard, **stats})
    log(f"{stats['rows']} rows, {stats['tokens']} tokens, {len(stats['dropped'])} dropped -> {snakemake.output.shard}")
