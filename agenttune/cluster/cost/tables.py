"""Tables of the estimates: the rows of a verdict (the plan and its nearest fit), as Markdown and as CSV.

Takes: a `Verdict`, or any list of flat dict rows (the seed table's, a memory breakdown).
Gives: `plan_rows`, `format_markdown`, `write_csv` (written atomically).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from agenttune.cluster.cost.fit import Verdict
from agenttune.common.atomic import write_text

def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:,.1f}".removesuffix(".0")
    return str(value)


def format_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def plan_rows(verdict: Verdict) -> list[dict]:
    """One row per configuration (the plan, and the nearest fit if any) for format_markdown / write_csv."""
    rows = []
    for label, v in (("plan", verdict), ("nearest fit", verdict.nearest)):
        if v is None:
            continue
        p = v.plan
        rows.append({"config": label, "model": p.shape.name, "params": p.shape.params, "gpus": p.n_gpus,
                     "nodes": p.n_nodes, "gpu": p.gpu.name, "max_len": p.max_len,
                     "trainable_layers": "all" if p.trainable_layers is None else p.trainable_layers,
                     # LoRA / QLoRA only, so that full and freeze tables stay as they were
                     **({"tuning": p.lora.method, "lora_rank": p.lora.rank,
                         "trainable_params": p.lora.trainable_params(p.shape)} if p.lora is not None else {}),
                     "checkpointing": p.grad_checkpointing, "offload_optimizer": p.offload_optimizer,
                     "offload_params": p.offload_params, "mfu": p.mfu, "mfu_source": p.mfu_source,
                     "tflops_per_epoch": round(v.time.flops_per_epoch / 1e12),
                     "h_per_epoch": round(v.time.hours_per_epoch, 2),
                     "s_per_epoch": round(v.time.hours_per_epoch * 3600, 1), "epochs": p.epochs,
                     "gpu_hours": round(v.time.gpu_hours, 1),
                     **{f"{k}_GiB": round(x, 2) for k, x in v.memory.breakdown_gib().items()},
                     "fits": v.fits})
    return rows
