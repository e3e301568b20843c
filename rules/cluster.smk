# Cost and memory preflight: runs before any training job; a plan that cannot fit stops the workflow here.


localrules:
    cost_preflight,
    eval_preflight,


rule cost_preflight:
    input:
        manifest=f"{OUT}/shards/manifest.json",
        model=MODEL_DIR,
        code=library_code("scripts/cost_preflight.py"),
    output:
        verdict=f"{OUT}/cost/preflight.json",
        table=report(
            f"{OUT}/cost/cost.md",
            caption="../docs/cost-caption.rst",
            category="Cost",
        ),
        csv=f"{OUT}/cost/cost.csv",
    log:
        f"{OUT}/logs/cost_preflight.log",
    conda:
        "../envs/data.yaml"
    params:
        compute=config["compute"],
        epochs=config["train"]["epochs"],
        grad_checkpointing=config["train"]["gradient_checkpointing"],
        deepspeed=config["train"].get("deepspeed"),
        model_name=config["model"]["name"],
        # freeze tuning trains the top layers only: fewer backward FLOPs (agenttune.cluster.cost.flops.training_flops)
        # lora / qlora: the adapters' memory and FLOPs (agenttune.cluster.cost.adapters)
        tuning={
            k: config["train"].get(k) for k in ("tuning", "freeze_trainable_layers")
        }
        | adapter_params(config["train"]),
    script:
        "../scripts/cost_preflight.py"


# The jobs that load a model to evaluate it (predict, predict_benchmark, general_loss), sized before any training or
# evaluation job is submitted (agenttune.cluster.cost.evaluation): a run that cannot evaluate stops here. Its output
# gives those jobs their GPUs, memory and runtime (agenttune.cluster.slurm.eval_resources). Training and evaluation
# take it as ancient(): they wait for it, but re-sizing (say, a new batch size) re-runs neither.
rule eval_preflight:
    input:
        manifest=f"{OUT}/shards/manifest.json",
        model=MODEL_DIR,
        test=f"{OUT}/samples/test.jsonl",
        val=f"{OUT}/samples/val.jsonl",
        code=library_code("scripts/eval_preflight.py"),
    output:
        f"{OUT}/cost/eval_jobs.json",
    log:
        f"{OUT}/logs/eval_preflight.log",
    conda:
        "../envs/data.yaml"
    params:
        compute=config["compute"],
        model_name=config["model"]["name"],
        # What sizes the jobs, and nothing else (a new λ must not re-size anything).
        evaluate={
            k: config["evaluate"].get(k)
            for k in (
                "engine",
                "precision",
                "batch_size",
                "max_new_tokens",
                "max_items",
                "server",
                "val",
                "bfcl",
                "general",
            )
        }
        # an unmerged LoRA / QLoRA epoch is evaluated as base + adapter (a 4-bit base for QLoRA)
        | (
            {"train": adapter_params(config["train"])}
            if adapter_params(config["train"])
            else {}
        ),
    script:
        "../scripts/eval_preflight.py"
