from agenttune.runlog import stage_log
from agenttune.train import train_epoch

with stage_log(snakemake.log[0], threads=snakemake.threads) as log:
    previous = snakemake.input.previous[0] if snakemake.input.previous else None
    train_epoch(snakemake.input.model, snakemake.input.shards, previous, snakemake.output[0],
                int(snakemake.wildcards.epoch), snakemake.params.train, snakemake.params.seed, log=log)
