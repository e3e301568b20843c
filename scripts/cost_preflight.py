import json
import sys

from agenttune.cluster.cost.adapters import lora_spec
from agenttune.cluster.cost.flops import trainable_layers
from agenttune.cluster.cost.preflight import plan_for_run, run_preflight
from agenttune.cluster.cost.tables import format_markdown, write_csv
from agenttune.cluster.slurm import load_site, site_path
from agenttune.common.atomic import write_text
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log
from agenttune.train.step_checkpoints import step_checkpoint_problems

with stage_log(snakemake.log[0]) as log:
    p = snakemake.params
    model_config = json.loads(open(f"{snakemake.input.model}/config.json").read())
    manifest = json.loads(open(snakemake.input.manifest).read())
    # max_len as tokenization used it (the shards manifest records it), not as the config says now.
    offload = {k: bool(p.deepspeed and p.deepspeed[k]) for k in ("offload_optimizer", "offload_params")}
    try:
        lora = lora_spec(p.tuning)
    except ValueError as err:  # a train.lora name the cost model cannot size (the trainer refuses it too)
        sys.exit(f"preflight refused the run (no training job was submitted):\n{err}")
    plan = plan_for_run(model_config, manifest, p.compute, p.epochs, manifest["max_len"], p.grad_checkpointing,
                        offload["offload_optimizer"], offload["offload_params"], p.model_name,
                        trainable_layers(p.tuning), lora)
    verdict, rows = run_preflight(plan)
    log(verdict.message)
    if not verdict.fits:
        sys.exit(f"preflight refused the run (no training job was submitted):\n{verdict.message}")
    # Can each epoch's job make progress within the time limit (step checkpoints, retries)? Read from the config,
    # not params: changing how often an epoch saves must not re-run the preflight (and so the training).
    # The limit: compute.time_limit_hours, and on a cluster the site's runtime for an epoch's job, whichever is less.
    limits = [p.compute["time_limit_hours"] * 60] if p.compute.get("time_limit_hours") else []
    if site_path().is_file():
        limits.append(load_site().runtime_of("train_epoch"))
    problems = step_checkpoint_problems(snakemake.config["train"], min(limits) if limits else None,
                                        estimated_epoch_minutes=verdict.time.hours_per_epoch * 60)
    if problems:
        sys.exit("preflight refused the run (no training job was submitted):\n"
                 + "\n".join(f"  - {q}" for q in problems))
    write_text(snakemake.output.table, verdict.message + "\n\n" + format_markdown(rows))
    write_csv(rows, snakemake.output.csv)
    write_json_atomic(snakemake.output.verdict, {"fits": True, "message": verdict.message, "rows": rows})
