"""The pipeline's cost and memory preflight before any training job: what scripts/cost_preflight.py calls.

Takes: the base model's config.json, the shards manifest, the run config's `compute` section and training flags.
Gives: `plan_for_run` -> the run's `Plan`; `run_preflight` -> its `Verdict` and the table rows for the report;
`eval_jobs_for_run` -> the evaluation jobs that load a model (prediction, benchmark prediction, general-loss),
sized (agenttune.cluster.cost.evaluation), and the problems that refuse the run.
"""

from __future__ import annotations

import math
from dataclasses import replace

from agenttune.cluster.cost.adapters import LoraSpec, lora_spec
from agenttune.cluster.cost.devices import GiB, get_gpu
from agenttune.cluster.cost.fit import DEFAULT_NODE_MEMORY_BYTES, Plan, Verdict, preflight
from agenttune.cluster.cost.flops import read_measured_mfu
from agenttune.cluster.cost.shapes import ModelShape
from agenttune.cluster.cost.tables import plan_rows


def plan_for_run(model_config: dict, manifest: dict, compute: dict, epochs: int, max_len: int,
                 grad_checkpointing: bool = False, offload_optimizer: bool = False,
                 offload_params: bool = False, model_name: str | None = None,
                 trainable_layers: int | None = None, lora: LoraSpec | None = None) -> Plan:
    """The Plan of one pipeline run: model shape from its config.json, tokens per epoch from the shards manifest,
    devices and limits from the run config's `compute` section, MFU measured (a metrics.json) when given; `lora`:
    LoRA / QLoRA (`adapters.lora_spec` of the run config's `train` section)."""
    shape = ModelShape.from_hf_config(model_config, name=model_name)
    gpu = get_gpu(compute["device"], compute.get("device_peak_flops"), compute.get("device_memory_gib"))
    tokens = float(manifest.get("total_tokens") or 0)
    if tokens <= 0:
        raise ValueError("the shards manifest counts no training tokens")
    n_gpus = compute.get("devices", 1)
    nodes = compute.get("nodes") or math.ceil(n_gpus / gpu.per_node)
    plan = Plan(shape, gpu, n_gpus, nodes, epochs, tokens, max_len, manifest.get("row_lengths") or None,
                grad_checkpointing, offload_optimizer or offload_params, offload_params,
                time_limit_hours=compute.get("time_limit_hours"),
                node_memory_bytes=int(compute.get("node_memory_gib", DEFAULT_NODE_MEMORY_BYTES / GiB) * GiB),
                trainable_layers=trainable_layers, lora=lora)
    if compute.get("mfu_metrics"):
        mfu, source = read_measured_mfu(compute["mfu_metrics"], shape, plan.lengths, grad_checkpointing, lora)
        return replace(plan, mfu=mfu, mfu_source=source)
    if compute.get("mfu"):
        return replace(plan, mfu=float(compute["mfu"]), mfu_source=compute.get("mfu_source", "given in config"))
    return plan


def run_preflight(plan: Plan) -> tuple[Verdict, list[dict]]:
    """Verdict (with the nearest fit when refused) and the table rows for the report."""
    verdict = preflight(plan)
    return verdict, plan_rows(verdict)


def bfcl_item_count(bfcl: dict) -> int:
    """Items of the BFCL benchmark job: the per-category cap × categories, or the questions in the files."""
    from pathlib import Path

    total = 0
    for category in bfcl["categories"]:
        path = Path(bfcl["path"]) / f"BFCL_v3_{category}.json"
        n = sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else 0
        cap = bfcl.get("max_items_per_category")
        total += min(n, cap) if (cap and n) else (cap or n)
    return total


def eval_jobs_for_run(model_config: dict | ModelShape, manifest: dict, compute: dict, evaluate: dict,
                      test_items: int, val_items: int | None, model_name: str | None = None,
                      train: dict | None = None) -> tuple[dict, list[str]]:
    """The sized evaluation jobs of one run ({rule: EvalEstimate}) and the problems that refuse it. GPU jobs when
    `compute.device` is a GPU (the paper configs), else CPU jobs. `model_config`: the base model's config.json, or
    its shape. `train`: the run config's `train` section (its `tuning` and `lora`): an unmerged LoRA / QLoRA
    epoch is evaluated as base + adapter (a 4-bit base for QLoRA)."""
    from agenttune.cluster.cost.evaluation import eval_problems, item_counts, plan_eval_jobs
    from agenttune.common.config import section_with_defaults

    evaluate = section_with_defaults(evaluate, "evaluate")
    shape = (model_config if isinstance(model_config, ModelShape)
             else ModelShape.from_hf_config(model_config, name=model_name))
    device = None
    if compute["device"] != "cpu":
        device = get_gpu(compute["device"], compute.get("device_peak_flops"), compute.get("device_memory_gib"))
    lengths = manifest.get("row_lengths") or {}
    n = sum(int(c) for c in lengths.values())
    mean = sum(int(k) * int(c) for k, c in lengths.items()) / n if n else manifest["max_len"]
    bfcl = bfcl_item_count(evaluate["bfcl"]) if evaluate.get("bfcl") else None
    counts = item_counts(evaluate, test_items, val_items, bfcl)
    jobs = plan_eval_jobs(shape, device, evaluate, manifest["max_len"], mean, counts, lora_spec(train))
    return jobs, eval_problems(jobs, compute.get("time_limit_hours"))
