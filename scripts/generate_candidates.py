from agenttune.common.atomic import read_jsonl
from agenttune.common.config import section_with_defaults
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log
from agenttune.evaluate.candidates import endpoint_from_config, generate_candidates, tool_sets_from_traces, write_candidates

with stage_log(snakemake.log[0]) as log:
    cfg = section_with_defaults(snakemake.params.endpoint, "evaluate", "generate_candidates")
    endpoint = endpoint_from_config(cfg, log)
    # Tool lists of training traces only: candidates test new queries over tools the model was tuned with.
    train_ids = {s["trace_id"] for s in read_jsonl(snakemake.input.train)}
    tool_sets = tool_sets_from_traces([snakemake.input.traces], train_ids)
    rows, stats = generate_candidates(endpoint, tool_sets, cfg["n"], cfg["negative_share"],
                                      snakemake.params.seed, cfg["max_tokens"], cfg["temperature"],
                                      log)
    write_candidates(snakemake.output.candidates, rows)
    write_json_atomic(snakemake.output.stats, stats)
