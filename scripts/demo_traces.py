from agenttune.demo.generator import generate_traces, write_jsonl
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    traces = generate_traces(demo["n_traces"], snakemake.params.seed, demo["no_tool_share"])
    write_jsonl(traces, snakemake.output[0])
    log(f"wrote {len(traces)} demo traces to {snakemake.output[0]}")
