rule prepare_base_model:
    output:
        directory(MODEL_DIR),
    params:
        model=config["model"],
        seed=config["seed"],
    log:
        f"results/logs/prepare_base_model/{config['model']['name']}.log",
    conda:
        "../envs/train-cpu.yaml"
    script:
        "../scripts/prepare_base_model.py"


# Each epoch is its own job; it resumes model, optimizer, scheduler, RNG and data order from the previous epoch.
rule train_epoch:
    input:
        model=MODEL_DIR,
        shards=expand(f"{OUT}/shards/train-{{shard}}.parquet", shard=SHARDS),
        manifest=f"{OUT}/shards/manifest.json",
        preflight=f"{OUT}/cost/preflight.json",
        previous=previous_epoch,
    output:
        directory(f"{OUT}/checkpoints/epoch-{{epoch}}"),
    params:
        train=config["train"],
        seed=config["seed"],
    threads: 2
    resources:
        mem_mb=8000,
    log:
        f"{OUT}/logs/train_epoch/epoch-{{epoch}}.log",
    conda:
        "../envs/train-cpu.yaml"
    script:
        "../scripts/train_epoch.py"
