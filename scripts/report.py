from agenttune.report.build import build_report
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    inp, params, out = snakemake.input, snakemake.params, snakemake.output
    models, benches = list(params.models), list(params.benchmarks)
    n = len(models)
    bench_manifests = list(inp.bench_manifests)
    paths = {
        "scores": list(inp.scores),
        "predictions": {"heldout": list(inp.predictions)},
        "items_files": {"heldout": inp.heldout_items},
        "items": dict(zip(["heldout"] + benches, inp.items_stats)),
        # expand() orders model-major: model 0's benchmarks, then model 1's ...
        "manifests": {"heldout": list(inp.manifests),
                      **{b: bench_manifests[k::len(benches)] for k, b in enumerate(benches)}},
        "general": list(inp.general),
        "general_items": inp.general_items,
        "metrics": [f"{d}/metrics.json" for d in inp.metrics],
        "data_stats": inp.data_stats,
        "shards": inp.shards,
        "human": inp.get("human"),
        "human_sheet": inp.human_sheet,
        "cost": inp.cost,
    }
    build_report(params.run, models, paths, out.md, out.html, {"score": out.score_plot, "loss": out.loss_plot},
                 params.examples)
    log(f"wrote {out.md}, {out.html} and the plots")
