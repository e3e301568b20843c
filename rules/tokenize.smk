# Scatter: a fixed number of shards per split, one job each; gather: one manifest.


rule tokenize_shard:
    input:
        samples=f"{OUT}/samples/{{split}}.jsonl",
        model=MODEL_DIR,
    output:
        shard=f"{OUT}/shards/{{split}}-{{shard}}.parquet",
        stats=f"{OUT}/shards/{{split}}-{{shard}}.stats.json",
    params:
        tokenize=config["tokenize"],
    log:
        f"{OUT}/logs/tokenize_shard/{{split}}-{{shard}}.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/tokenize_shard.py"


rule shards_manifest:
    input:
        stats=expand(f"{OUT}/shards/{{split}}-{{shard}}.stats.json", split=SPLITS, shard=SHARDS),
        model=MODEL_DIR,
    output:
        f"{OUT}/shards/manifest.json",
    params:
        tokenize=config["tokenize"],
    log:
        f"{OUT}/logs/shards_manifest.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/shards_manifest.py"
