from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log
from agenttune.tokenize.plan import plan_shards

with stage_log(snakemake.log[0]) as log:
    samples = dict(zip(snakemake.params.splits, snakemake.input.samples))
    plan = plan_shards(samples, snakemake.params.samples_per_shard)
    write_json_atomic(snakemake.output[0], plan)
    for split, p in plan["splits"].items():
        log(f"{split}: {p['samples']} samples -> {len(p['shards'])} shard(s)")
