from agenttune.evaluate import score_predictions
from agenttune.manifest import write_json_atomic
from agenttune.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    scores = score_predictions(snakemake.input[0], snakemake.params.lam, snakemake.params.fuzzy)
    write_json_atomic(snakemake.output[0], scores)
    s = scores["summary"]
    log(f"score {s['score']:.3f} (EM {s['em']:.3f}, fuzzy {s['fuzzy']:.3f}) over {s['n']} items")
