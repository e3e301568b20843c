# Samples -> token shards. A checkpoint plans the shards (samples_per_shard lines each, by streaming the samples
# files); one job per shard tokenizes its byte range; the manifest gathers the per-shard stats. docs/tokenize.md.
# shard_files / all_shard_stats (the input functions that read the plan) are in common.smk.


localrules:
    plan_shards,


checkpoint plan_shards:
    input:
        samples=expand(f"{OUT}/samples/{{split}}.jsonl", split=SPLITS),
        code=library_code("scripts/plan_shards.py"),
    output:
        f"{OUT}/shards/plan.json",
    log:
        f"{OUT}/logs/plan_shards.log",
    conda:
        "../envs/data.yaml"
    params:
        splits=SPLITS,
        samples_per_shard=config["tokenize"]["samples_per_shard"],
    script:
        "../scripts/plan_shards.py"


rule tokenize_shard:
    input:
        samples=f"{OUT}/samples/{{split}}.jsonl",
        plan=f"{OUT}/shards/plan.json",
        model=MODEL_DIR,
        code=library_code("scripts/tokenize_shard.py"),
    output:
        shard=f"{OUT}/shards/{{split}}-{{shard}}.parquet",
        stats=f"{OUT}/shards/{{split}}-{{shard}}.stats.json",
    log:
        f"{OUT}/logs/tokenize_shard/{{split}}-{{shard}}.log",
    group:
        "tokenize"
    conda:
        "../envs/data.yaml"
    threads: 2
    params:
        tokenize=config["tokenize"],
    script:
        "../scripts/tokenize_shard.py"


rule shards_manifest:
    input:
        stats=all_shard_stats,
        plan=f"{OUT}/shards/plan.json",
        model=MODEL_DIR,
        code=library_code("scripts/shards_manifest.py"),
    output:
        f"{OUT}/shards/manifest.json",
    log:
        f"{OUT}/logs/shards_manifest.log",
    group:
        "tokenize"
    conda:
        "../envs/data.yaml"
    params:
        tokenize=config["tokenize"],
    script:
        "../scripts/shards_manifest.py"
