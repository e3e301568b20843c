from agenttune.cluster.slurm import train_resources


rule prepare_base_model:
    input:
        code=library_code("scripts/prepare_base_model.py"),
    output:
        directory(MODEL_DIR),
    log:
        f"results/logs/prepare_base_model/{config['model']['name']}.log",
    conda:
        "../envs/train-cpu.yaml"
    params:
        model=config["model"],
        seed=config["seed"],
    script:
        "../scripts/prepare_base_model.py"


# How the ranks of a training job start is checked at planning time by train_resources (agenttune.cluster), so
# that a bad launcher/nodes/processes combination fails before any job runs. Multi-process Slurm jobs get `mpi`,
# `nodes` and `tasks`, GPU jobs their gres per node (docs/training.md) and the GPU environment.
TRAIN_ENV = (
    "../envs/train-cpu.yaml"
    if config["compute"]["device"] == "cpu"
    else "../envs/train-gpu.yaml"
)


# Each epoch is its own job; it resumes model, optimizer, scheduler, RNG and data order from the previous epoch.
# A failed try (killed, preempted, past the time limit) is retried and resumes from the newest step checkpoint
# in epoch-<e>.steps/, beside the output (docs/training.md). How often an epoch saves is read from the config by
# the script, not a param: changing it must not re-run finished epochs.
rule train_epoch:
    input:
        model=MODEL_DIR,
        shards=shard_files("train"),
        manifest=f"{OUT}/shards/manifest.json",
        preflight=f"{OUT}/cost/preflight.json",
        # Waits for the evaluation preflight (a run that cannot evaluate never trains); re-sizing retrains nothing.
        eval_preflight=ancient(f"{OUT}/cost/eval_jobs.json"),
        previous=previous_epoch,
        code=library_code("scripts/train_epoch.py"),
    output:
        directory(f"{OUT}/checkpoints/epoch-{{epoch}}"),
    log:
        f"{OUT}/logs/train_epoch/epoch-{{epoch}}.log",
    retries: config["train"]["retries"]
    conda:
        TRAIN_ENV
    threads: 2
    resources:
        **train_resources(config["train"], compute=config["compute"]),
    params:
        train={
            k: v
            for k, v in config["train"].items()
            if k not in ("step_checkpoints", "retries")
        },
        compute=config["compute"],
        seed=config["seed"],
    script:
        "../scripts/train_epoch.py"
