from agenttune.evaluate import predict
from agenttune.runlog import stage_log

with stage_log(snakemake.log[0], threads=snakemake.threads) as log:
    n = predict(snakemake.input.model, snakemake.input.samples, snakemake.output[0], snakemake.params.generation,
                snakemake.params.seed, log=log)
    log(f"wrote {n} predictions to {snakemake.output[0]}")
