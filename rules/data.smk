rule demo_traces:
    output:
        f"{OUT}/traces/demo.jsonl",
    params:
        demo=config["data"]["demo"],
        seed=config["seed"],
    log:
        f"{OUT}/logs/demo_traces.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/demo_traces.py"


rule format_samples:
    input:
        traces=trace_files,
    output:
        train=f"{OUT}/samples/train.jsonl",
        val=f"{OUT}/samples/val.jsonl",
        test=f"{OUT}/samples/test.jsonl",
        stats=f"{OUT}/samples/stats.json",
        manifest=f"{OUT}/samples/manifest.json",
    params:
        split=config["split"],
        format=config["format"],
        seed=config["seed"],
    log:
        f"{OUT}/logs/format_samples.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/format_samples.py"
