from agenttune.evaluate.human import export_sheet
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    predictions = dict(zip(snakemake.params.models, snakemake.input.predictions))
    stats = export_sheet(snakemake.input.benchmark_items, predictions, snakemake.params.n_items, snakemake.params.seed,
                         snakemake.output.sheet, snakemake.output.key)
    write_json_atomic(snakemake.output.stats, stats)
    log(f"rating sheet: {stats['rows']} rows ({stats['items']} items x {len(stats['models'])} models); copy it "
        "before filling it in (a re-run overwrites this file)")
