from agenttune.evaluate.human import import_sheets
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    summary = import_sheets(snakemake.input.key, dict(snakemake.params.sheets))
    write_json_atomic(snakemake.output[0], summary)
    for model, s in summary["models"].items():
        log(f"{model}: {s['n']} ratings, mean {s['mean']:.2f}, usable {s['usable_rate']:.2f}")
