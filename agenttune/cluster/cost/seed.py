"""The seed's cost table reproduced: its three runs' hours per epoch next to this package's estimate.

Takes: an MFU, tokens per epoch, max_len and a GPU (defaults: the seed's); optionally LoRA / QLoRA to set beside it.
Gives: `seed_table` -> one row per seed run, with the MFU the seed's own timings imply (docs/cost.md), and per
LoRA / QLoRA the same run's estimate with adapters (all-linear, rank as given) and the fewest GPUs it fits on.
"""

from __future__ import annotations

import math
from dataclasses import replace

from agenttune.cluster.cost.adapters import LoraSpec
from agenttune.cluster.cost.devices import GPU, GiB, get_gpu
from agenttune.cluster.cost.fit import SEED_TOKENS, Plan, check
from agenttune.cluster.cost.flops import DEFAULT_MAX_LEN, DEFAULT_MFU, implied_mfu
from agenttune.cluster.cost.shapes import PRESETS

SEED_ROWS = (  # (preset, GPUs, epochs, seed's hours per epoch); all A100-80G, ~470M tokens, max_len 4096
    ("llama2-7b", 4, 5, 25.0),
    ("qwen1.5-14b", 8, 4, 24.0),
    ("qwen2-72b", 32, 2, 40.0),
)


def seed_table(mfu: float = DEFAULT_MFU, tokens: float = SEED_TOKENS, max_len: int = DEFAULT_MAX_LEN,
               gpu: str | GPU = "a100-80g", adapters: tuple[LoraSpec, ...] = ()) -> list[dict]:
    """The seed's three rows next to ours. Every row is taken as max_len long (packed), an upper bound
    for attention. Checkpointing is switched on for our estimate only where memory needs it; the
    seed's implied MFU is given both ways because the seed does not say whether it checkpointed.
    `adapters`: LoRA / QLoRA specs; each adds columns `<method>_...` (see `_adapter_columns`)."""
    gpu = get_gpu(gpu)
    rows = []
    for preset, n_gpus, epochs, seed_hours in SEED_ROWS:
        shape = PRESETS[preset]
        nodes = math.ceil(n_gpus / gpu.per_node)
        plan = Plan(shape, gpu, n_gpus, nodes, epochs, tokens, max_len, mfu=mfu)
        if not check(plan).fits:
            plan = replace(plan, grad_checkpointing=True)
        verdict = check(plan)
        rows.append({
            "model": preset,
            "params_B": round(shape.params / 1e9, 2),
            "gpus": f"{n_gpus}×{gpu.name}",
            "epochs": epochs,
            "checkpointing": "yes" if plan.grad_checkpointing else "no",
            "mem_per_gpu_GiB": round(verdict.memory.per_gpu / GiB, 1),
            "seed_h_per_epoch": seed_hours,
            "mfu": mfu,
            "est_h_per_epoch": round(verdict.time.hours_per_epoch, 1),
            "seed_gpu_hours": round(seed_hours * epochs * n_gpus),
            "est_gpu_hours": round(verdict.time.gpu_hours),
            "seed_mfu_no_ckpt": round(implied_mfu(shape, tokens, seed_hours, n_gpus, gpu, max_len), 4),
            "seed_mfu_ckpt": round(implied_mfu(shape, tokens, seed_hours, n_gpus, gpu, max_len, True), 4),
            **{k: v for spec in adapters for k, v in _adapter_columns(
                Plan(shape, gpu, n_gpus, nodes, epochs, tokens, max_len, mfu=mfu, lora=spec)).items()},
        })
    return rows


def _fits(plan: Plan) -> Plan | None:
    """The plan, or the plan with checkpointing, whichever fits first (None: neither)."""
    for candidate in (plan, replace(plan, grad_checkpointing=True)):
        if check(candidate).fits:
            return candidate
    return None


def _adapter_columns(plan: Plan) -> dict:
    """The seed run (same GPUs, tokens, MFU) with LoRA / QLoRA: checkpointing if memory needs it, GiB per GPU,
    hours per epoch, GPU-hours; and the fewest GPUs (1, 2, 4, 8, then whole nodes) on which it fits, with its
    GPU-hours. At the same MFU the adapters' runs take about 2/3 of the time (flops.training_flops)."""
    m = plan.lora.method
    fitted = _fits(plan) or replace(plan, grad_checkpointing=True)
    verdict = check(fitted)
    fewest = None
    n = 1
    while n <= plan.n_gpus:
        fewest = _fits(replace(plan, n_gpus=n, n_nodes=math.ceil(n / plan.gpu.per_node)))
        if fewest is not None:
            break
        n = 2 * n if n < plan.gpu.per_node else n + plan.gpu.per_node
    return {
        f"{m}_checkpointing": "yes" if fitted.grad_checkpointing else "no",
        f"{m}_mem_per_gpu_GiB": round(verdict.memory.per_gpu / GiB, 1),
        f"{m}_h_per_epoch": round(verdict.time.hours_per_epoch, 1),
        f"{m}_gpu_hours": round(verdict.time.gpu_hours),
        f"{m}_fewest_gpus": fewest.n_gpus if fewest else "none",
        f"{m}_fewest_gpus_hours": round(check(fewest).time.gpu_hours) if fewest else "",
    }
