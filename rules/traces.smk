# Raw sources -> canonical traces: the demo traces and ingest (readers, quarantine). docs/readers.md.


rule demo_traces:
    input:
        code=library_code("scripts/demo_traces.py"),
    output:
        f"{OUT}/traces/demo.jsonl",
    log:
        f"{OUT}/logs/demo_traces.log",
    group:
        "data"
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
    group:
        "data"
    conda:
        "../envs/data.yaml"
    params:
        sources=ingest_sources(),
    script:
        "../scripts/ingest.py"
