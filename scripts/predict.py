from agenttune.evaluate.predict import predict
from agenttune.common.manifest import write_manifest
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0], threads=snakemake.threads) as log:
    # batch_size and the server's concurrency/timeouts from the config, not params: they do not change outputs, so
    # they must not trigger a re-run (the server's command is a param).
    evaluate = snakemake.config["evaluate"]
    cfg = {k: v for k, v in snakemake.params.generation.items() if k != "server_command"}
    cfg |= {"batch_size": evaluate["batch_size"], "server": evaluate["server"]}
    stats = predict(snakemake.input.model, snakemake.input.benchmark_items, snakemake.output.predictions, cfg,
                    snakemake.params.seed, log=log, server_log=snakemake.log[0] + ".server")
    # Provenance for the report: sha256 of the model folder and the items. No times: identical runs, identical files.
    write_manifest(snakemake.output.manifest, "predict", {"model": snakemake.input.model, "items": snakemake.input.benchmark_items},
                   dict(snakemake.params.generation),
                   {"items": stats["items"], "generated_tokens": stats["generated_tokens"], "finish": stats["finish"],
                    "engine": stats.get("engine"), "run": stats.get("run")})
    log(f"wrote {stats['items']} predictions to {snakemake.output.predictions}")
