import json
import sys

from agenttune.cluster.cost.preflight import eval_jobs_for_run
from agenttune.common.atomic import iter_jsonl
from agenttune.common.manifest import write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    p = snakemake.params
    model_config = json.loads(open(f"{snakemake.input.model}/config.json").read())
    manifest = json.loads(open(snakemake.input.manifest).read())
    test_items = sum(1 for _ in iter_jsonl(snakemake.input.test))
    val_items = sum(1 for _ in iter_jsonl(snakemake.input.val))
    evaluate = dict(p.evaluate)
    train = evaluate.pop("train", None)  # LoRA / QLoRA runs only (rules/cluster.smk, adapter_params)
    jobs, problems = eval_jobs_for_run(model_config, manifest, p.compute, evaluate, test_items, val_items,
                                       p.model_name, train)
    for rule, est in jobs.items():
        d = est.as_dict()
        log(f"{rule}: {d['items']} items, engine {d['engine']}, {d['dtype']}, "
            + (f"{d['gpus']} GPU(s) × {d['per_gpu_gib']} GiB, " if d["gpus"] else "CPU, ")
            + f"host {d['mem_mb']} MB, ~{d['runtime_min']} min")
    if problems:
        sys.exit("evaluation preflight refused the run (no training or evaluation job was submitted):\n"
                 + "\n".join(f"  - {p}" for p in problems))
    write_json_atomic(snakemake.output[0], {"fits": True, "jobs": {r: e.as_dict() for r, e in jobs.items()}})
