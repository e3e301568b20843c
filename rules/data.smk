# Raw sources -> canonical traces (ingest) -> split, rendered samples (format_samples). docs/formatting.md.


rule demo_traces:
    input:
        code=library_code("scripts/demo_traces.py"),
    output:
        f"{OUT}/traces/demo.jsonl",
    log:
        f"{OUT}/logs/demo_traces.log",
    conda:
        "../envs/data.yaml"
    params:
        demo=config["data"]["demo"],
        seed=config["seed"],
    script:
        "../scripts/demo_traces.py"


rule ingest:
    input:
        ingest_inputs,
        code=library_code("scripts/ingest.py"),
    output:
        traces=f"{OUT}/traces/traces.jsonl",
        quarantine=f"{OUT}/traces/quarantine.jsonl",
        stats=f"{OUT}/traces/ingest_stats.json",
        manifest=f"{OUT}/traces/manifest.json",
    log:
        f"{OUT}/logs/ingest.log",
    conda:
        "../envs/data.yaml"
    params:
        sources=ingest_sources(),
    script:
        "../scripts/ingest.py"


rule format_samples:
    input:
        unpack(format_inputs),
        code=library_code("scripts/format_samples.py"),
    output:
        train=f"{OUT}/samples/train.jsonl",
        val=f"{OUT}/samples/val.jsonl",
        test=f"{OUT}/samples/test.jsonl",
        stats=f"{OUT}/samples/stats.json",
        manifest=f"{OUT}/samples/manifest.json",
    log:
        f"{OUT}/logs/format_samples.log",
    conda:
        "../envs/data.yaml"
    params:
        roles={s["name"]: s["role"] for s in ingest_sources()},
        split=config["split"],
        format=config["format"],
        seed=config["seed"],
    script:
        "../scripts/format_samples.py"
