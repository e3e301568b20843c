from agenttune.train.launch import run_epoch_job
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0], threads=snakemake.threads) as log:
    previous = snakemake.input.previous[0] if snakemake.input.previous else None
    resources = {k: snakemake.resources.get(k) for k in ("nodes", "tasks", "mpi", "cpus_per_gpu")}
    # How often the epoch saves step checkpoints (and how often it is retried) comes from the config, not the
    # rule's params: changing it must not re-run finished epochs. A retried job resumes from the newest one.
    train = dict(snakemake.params.train, **{k: snakemake.config["train"][k] for k in ("step_checkpoints", "retries")})
    run_epoch_job(snakemake.input.model, snakemake.input.shards, previous, snakemake.output[0],
                  int(snakemake.wildcards.epoch), train, snakemake.params.seed,
                  compute=snakemake.params.compute, threads=snakemake.threads, resources=resources, log=log)
