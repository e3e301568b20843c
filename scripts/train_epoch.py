from agenttune.train.launch import run_epoch_job
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0], threads=snakemake.threads) as log:
    previous = snakemake.input.previous[0] if snakemake.input.previous else None
    resources = {k: snakemake.resources.get(k) for k in ("nodes", "tasks", "mpi", "cpus_per_gpu")}
    run_epoch_job(snakemake.input.model, snakemake.input.shards, previous, snakemake.output[0],
                  int(snakemake.wildcards.epoch), snakemake.params.train, snakemake.params.seed,
                  compute=snakemake.params.compute, threads=snakemake.threads, resources=resources, log=log)
