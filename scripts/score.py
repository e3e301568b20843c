from agenttune.evaluate.score import score_predictions
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    lam, fuzzy = snakemake.params.lam, snakemake.params.fuzzy
    scores = score_predictions(snakemake.input.predictions, lam, fuzzy)
    scores["benchmarks"] = {bench: score_predictions(path, lam, fuzzy)
                            for bench, path in zip(snakemake.params.benchmarks, snakemake.input.benchmarks)}
    write_json_atomic(snakemake.output[0], scores)
    for name, s in [("heldout", scores)] + list(scores["benchmarks"].items()):
        summ = s["summary"]
        if summ.get("n"):
            log(f"{name}: score {summ['score']:.3f} (EM {summ['em'] or 0:.3f}, fuzzy {summ['fuzzy'] or 0:.3f}) "
                f"over {summ['n']} items" + (f"; BFCL accuracy {s['bfcl']['accuracy']:.3f}" if "bfcl" in s else ""))
