"""The seed's cost table reproduced: its three runs' hours per epoch next to this package's estimate.

Takes: an MFU, tokens per epoch, max_len and a GPU (defaults: the seed's).
Gives: `seed_table` -> one row per seed run, with the MFU the seed's own timings imply (docs/cost.md).
"""

from __future__ import annotations

import math
from dataclasses import replace

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
               gpu: str | GPU = "a100-80g") -> list[dict]:
    """The seed's three rows next to ours. Every row is taken as max_len long (packed), an upper bound
    for attention. Checkpointing is switched on for our estimate only where memory needs it; the
    seed's implied MFU is given both ways because the seed does not say whether it checkpointed."""
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
        })
    return rows
