from agenttune.train.base_model import prepare_base_model
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    info = prepare_base_model(snakemake.params.model, snakemake.output[0], snakemake.params.seed)
    log(f"base model ready in {snakemake.output[0]}: {info}")
