from agenttune.evaluate.general import general_loss
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0], threads=snakemake.threads) as log:
    result = general_loss(snakemake.input.model, snakemake.input.general_items, snakemake.params.precision, log=log,
                          attn_implementation=snakemake.params.attn_implementation)
    write_json_atomic(snakemake.output[0], result)
