from agenttune.evaluate.items import write_items
from agenttune.evaluate.general import general_items
from agenttune.common.manifest import stage_manifest, write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    cfg, inp = dict(snakemake.params.general), snakemake.input
    items, info = general_items(cfg["source"], cfg["max_items"], snakemake.params.seed,
                                val_samples_path=inp.val, test_samples_path=inp.test, traces_path=inp.traces,
                                alpaca_path=inp.get("alpaca"), train_samples_path=inp.get("train"), log=log)
    write_items(snakemake.output.general_items, items)
    info["manifest"] = stage_manifest("general_items", dict(inp.items()), {"general": cfg, "seed": snakemake.params.seed})
    write_json_atomic(snakemake.output.stats, info)
