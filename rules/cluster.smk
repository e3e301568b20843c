# Cost and memory preflight: runs before any training job; a plan that cannot fit stops the workflow here.


localrules:
    cost_preflight,


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
        tuning={
            k: config["train"].get(k) for k in ("tuning", "freeze_trainable_layers")
        },
    script:
        "../scripts/cost_preflight.py"
