from agenttune.report import build_report
from agenttune.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    metrics = [f"{d}/metrics.json" for d in snakemake.input.metrics]
    build_report(snakemake.params.run, snakemake.params.models, snakemake.input.scores, metrics,
                 snakemake.input.data_stats, snakemake.input.shards, snakemake.input.predictions, snakemake.output[0])
    log(f"wrote {snakemake.output[0]}")
