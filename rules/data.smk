# Canonical traces -> split, rendered samples (format_samples). docs/formatting.md.


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
    group:
        "data"
    conda:
        "../envs/data.yaml"
    params:
        roles={s["name"]: s["role"] for s in ingest_sources()},
        split=config["split"],
        format=config["format"],
        seed=config["seed"],
    script:
        "../scripts/format_samples.py"
