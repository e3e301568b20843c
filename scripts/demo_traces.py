from agenttune.common.atomic import write_jsonl
from agenttune.common.runlog import stage_log
from agenttune.demo.generator import generate_traces

with stage_log(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    traces = generate_traces(demo["n_traces"], snakemake.params.seed, demo["no_tool_share"])
    # compact=False: the demo traces keep the bytes they have always had (json.dumps' default separators)
    write_jsonl(snakemake.output[0], traces, compact=False)
    log(f"wrote {len(traces)} demo traces to {snakemake.output[0]}")
