from agenttune.evaluate.predict import predict
from agenttune.common.manifest import write_manifest
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0], threads=snakemake.threads) as log:
    # batch_size from the config, not params: it does not change outputs, so it must not trigger a re-run.
    cfg = {**snakemake.params.generation, "batch_size": snakemake.config["evaluate"]["batch_size"]}
    stats = predict(snakemake.input.model, snakemake.input.benchmark_items, snakemake.output.predictions, cfg,
                    snakemake.params.seed, log=log)
    # Provenance for the report: sha256 of the model folder and the items. No times: identical runs, identical files.
    write_manifest(snakemake.output.manifest, "predict", {"model": snakemake.input.model, "items": snakemake.input.benchmark_items},
                   dict(snakemake.params.generation),
                   {"items": stats["items"], "generated_tokens": stats["generated_tokens"], "finish": stats["finish"],
                    "engine": stats.get("engine")})
    log(f"wrote {stats['items']} predictions to {snakemake.output.predictions}")
