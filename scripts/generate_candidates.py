import json

from agenttune.evaluate.candidates import endpoint_from_config, generate_candidates, tool_sets_from_traces, write_candidates
from agenttune.data.format import read_samples
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    cfg = dict(snakemake.params.endpoint)
    endpoint = endpoint_from_config(cfg, log)
    # Tool lists of training traces only: candidates test new queries over tools the model was tuned with.
    train_ids = {s["trace_id"] for s in read_samples(snakemake.input.train)}
    tmp = snakemake.output.candidates + ".tools.tmp"
    with open(snakemake.input.traces, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        for line in src:
            if line.strip() and json.loads(line)["id"] in train_ids:
                dst.write(line)
    tool_sets = tool_sets_from_traces([tmp])
    rows, stats = generate_candidates(endpoint, tool_sets, cfg["n"], cfg["negative_share"],
                                      snakemake.params.seed, cfg["max_tokens"], cfg["temperature"],
                                      log)
    import os

    os.remove(tmp)
    write_candidates(snakemake.output.candidates, rows)
    write_json_atomic(snakemake.output.stats, stats)
