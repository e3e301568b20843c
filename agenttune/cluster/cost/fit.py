"""Preflight of a training plan: does it fit the GPUs, the nodes' memory and the time limit, and if not, what is
the nearest configuration that does.

Takes: a `Plan` (model shape, GPUs and nodes, tokens and row lengths, training flags, MFU, limits).
Gives: `check(plan)` and `preflight(plan)` -> `Verdict` (fits or not, why, the memory and time estimates, and on a
refusal the nearest fit with what it changes: checkpointing, offload, more GPUs, then a shorter max_len).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from agenttune.cluster.cost.adapters import LoraSpec
from agenttune.cluster.cost.devices import GPU, GiB
from agenttune.cluster.cost.flops import (DEFAULT_MAX_LEN, DEFAULT_MFU, SeqLens, TimeEstimate, estimate_time,
                                          truncate_lengths)
from agenttune.cluster.cost.memory import MemoryEstimate, estimate_memory_lora, estimate_memory_zero3
from agenttune.cluster.cost.shapes import ModelShape

DEFAULT_NODE_MEMORY_BYTES = 1024 * GiB
SEED_TOKENS = 470e6
"""Tokens per epoch of the seed's runs: a plan's default, and the seed table's."""


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    gpu: GPU
    n_gpus: int
    n_nodes: int = 1
    epochs: float = 1
    tokens: float = SEED_TOKENS          # per epoch
    max_len: int = DEFAULT_MAX_LEN
    seq_lens: SeqLens | None = None      # row lengths; None: every row is max_len long (attention upper bound)
    grad_checkpointing: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False
    mfu: float = DEFAULT_MFU
    mfu_source: str = "default"
    time_limit_hours: float | None = None  # per epoch: each epoch is one job
    node_memory_bytes: int = DEFAULT_NODE_MEMORY_BYTES
    micro_batch: int = 1
    flash_attn: bool = True
    trainable_layers: int | None = None  # freeze tuning: the top k layers train (time only; memory assumes full)
    lora: LoraSpec | None = None         # LoRA / QLoRA: frozen base + adapters (time and memory)

    @property
    def lengths(self) -> dict[int, int]:
        return truncate_lengths(self.seq_lens if self.seq_lens is not None else self.max_len, self.max_len)

    def memory(self) -> MemoryEstimate:
        if self.lora is not None:
            return estimate_memory_lora(self.shape, self.lora, self.n_gpus, self.n_nodes, self.offload_optimizer,
                                        self.offload_params, max(self.lengths), self.grad_checkpointing,
                                        self.micro_batch, flash_attn=self.flash_attn)
        return estimate_memory_zero3(self.shape, self.n_gpus, self.n_nodes, self.offload_optimizer,
                                     self.offload_params, max(self.lengths), self.grad_checkpointing,
                                     self.micro_batch, flash_attn=self.flash_attn)

    def time(self) -> TimeEstimate:
        return estimate_time(self.shape, self.tokens, self.n_gpus, self.gpu, self.mfu, self.lengths,
                             self.grad_checkpointing, self.epochs, self.trainable_layers, self.lora)

    def hardware(self) -> str:
        per_node = self.n_gpus // self.n_nodes
        nodes = f"{self.n_nodes} node{'s' if self.n_nodes > 1 else ''} × {per_node}"
        return f"{self.n_gpus} GPU{'s' if self.n_gpus > 1 else ''} ({nodes})"

    def options(self) -> str:
        opts = [name for flag, name in ((self.grad_checkpointing, "gradient checkpointing"),
                                        (self.offload_optimizer, "optimizer offload"),
                                        (self.offload_params, "parameter offload")) if flag]
        if self.trainable_layers is not None:
            opts.append(f"freeze tuning (top {self.trainable_layers} layers; memory counted as full tuning)")
        if self.lora is not None:
            opts.append(self.lora.describe(self.shape))
        return " + ".join(opts) or "no checkpointing or offload"


@dataclass
class Verdict:
    plan: Plan
    fits: bool
    problems: list[str]
    memory: MemoryEstimate
    time: TimeEstimate
    nearest: "Verdict | None" = None
    changes: list[str] = field(default_factory=list)  # set on a nearest fit: what it changes
    searched: bool = True  # False: no alternative can help (QLoRA on a CPU), none was searched

    @property
    def message(self) -> str:
        p = self.plan
        head = f"{p.shape.name} on {p.hardware()} of {p.gpu.name}, max_len {p.max_len}, {p.options()}"
        summary = (f"{self.memory.per_gpu / GiB:.1f} GiB per GPU of {p.gpu.memory_gib:.0f} GiB, "
                   f"{self.time.hours_per_epoch:.1f} h/epoch, {self.time.gpu_hours:.0f} GPU-hours for "
                   f"{p.epochs:g} epoch{'s' if p.epochs != 1 else ''} (MFU {p.mfu:.2f}, {p.mfu_source})")
        if self.fits:
            return f"fits: {head}: {summary}"
        lines = [f"does not fit: {head}: " + "; ".join(self.problems)]
        if self.nearest is None:
            if self.searched:
                lines.append("no configuration fits within 8× the GPUs and max_len ≥ 1024")
        else:
            n = self.nearest
            lines.append(f"nearest fit: {n.plan.hardware()} with {n.plan.options()}, max_len {n.plan.max_len}: "
                         f"{n.memory.per_gpu / GiB:.1f} GiB per GPU, {n.time.hours_per_epoch:.1f} h/epoch, "
                         f"{n.time.gpu_hours:.0f} GPU-hours (changes: {', '.join(n.changes)})")
            if n.plan.offload_optimizer:
                lines.append(f"  offload needs {n.memory.cpu_per_node / GiB:.0f} GiB CPU memory per node; "
                             "the time estimate leaves out the CPU optimizer step, expect it slower")
        return "\n".join(lines)


def check(plan: Plan) -> Verdict:
    """Fits or not, without searching for alternatives."""
    mem, time = plan.memory(), plan.time()
    problems = []
    if mem.per_gpu > plan.gpu.memory_bytes:
        problems.append(f"needs {mem.per_gpu / GiB:.1f} GiB per GPU > {plan.gpu.memory_gib:.0f} GiB")
    if mem.cpu_per_node > plan.node_memory_bytes:
        problems.append(f"needs {mem.cpu_per_node / GiB:.0f} GiB CPU memory per node "
                        f"> {plan.node_memory_bytes / GiB:.0f} GiB")
    if plan.time_limit_hours is not None and time.hours_per_epoch > plan.time_limit_hours:
        problems.append(f"an epoch takes {time.hours_per_epoch:.1f} h > time limit {plan.time_limit_hours:g} h")
    problems += qlora_problems(plan)
    return Verdict(plan, not problems, problems, mem, time)


def qlora_problems(plan: Plan) -> list[str]:
    """What QLoRA cannot run on: a CPU (bitsandbytes' 4-bit layers are GPU kernels; GPU envs only), and DeepSpeed
    offload (PEFT's DeepSpeed guide: ZeRO-3 + QLoRA with CPU offload uses more GPU memory than without, and its
    ZeRO-3 + QLoRA set-up, bnb_4bit_quant_storage bf16 with zero3_init, offloads nothing)."""
    if plan.lora is None or not plan.lora.quantized:
        return []
    out = []
    if plan.gpu.name == "CPU":
        out.append("train.tuning qlora needs GPUs (bitsandbytes 4-bit); compute.device is cpu: use lora")
    if plan.offload_optimizer or plan.offload_params:
        out.append("train.tuning qlora with train.deepspeed offload_optimizer/offload_params is not supported "
                   "(ZeRO-3 + QLoRA runs without offload): switch offload off, or use lora")
    return out


def _more_gpus(plan: Plan) -> list[tuple[int, int]]:
    """(gpus, nodes) up to 8× the plan's GPUs: fill the node first, then whole nodes."""
    per_node, limit, out = plan.gpu.per_node, 8 * plan.n_gpus, []
    n = plan.n_gpus
    while n < limit:
        n = min(2 * n, per_node) if n < per_node else (n // per_node + 1) * per_node
        if n <= limit:
            out.append((n, math.ceil(n / per_node)))
    return out


def _candidates(plan: Plan):
    """Alternatives in order of how much they change: checkpointing, optimizer offload, parameter
    offload on the same GPUs; then more GPUs (first without offload); then shorter max_len."""
    quantized = plan.lora is not None and plan.lora.quantized
    base = dict(grad_checkpointing=plan.grad_checkpointing, offload_optimizer=plan.offload_optimizer and not quantized,
                offload_params=plan.offload_params and not quantized)
    gc = {**base, "grad_checkpointing": True}
    gc_opt = {**gc, "offload_optimizer": True}
    gc_all = {**gc_opt, "offload_params": True}
    offload = () if quantized else (gc_opt, gc_all)  # qlora: no offload (qlora_problems)
    here = [(plan.n_gpus, plan.n_nodes)]
    more = _more_gpus(plan)
    if base != {k: getattr(plan, k) for k in base}:
        yield replace(plan, **base)
    for flags in (gc, *offload):
        yield replace(plan, **flags)
    for n, nodes in more:
        for flags in (base, gc):
            yield replace(plan, n_gpus=n, n_nodes=nodes, **flags)
    for n, nodes in more:
        for flags in offload:
            yield replace(plan, n_gpus=n, n_nodes=nodes, **flags)
    max_len = plan.max_len // 2
    while max_len >= 1024:
        for n, nodes in here + more:
            for flags in (base, gc, *offload):
                yield replace(plan, n_gpus=n, n_nodes=nodes, max_len=max_len, **flags)
        max_len //= 2


def _changes(old: Plan, new: Plan) -> list[str]:
    out = []
    if new.n_gpus != old.n_gpus:
        out.append(f"{old.n_gpus} → {new.n_gpus} GPUs")
    for attr, name in (("grad_checkpointing", "gradient checkpointing"), ("offload_optimizer", "optimizer offload"),
                       ("offload_params", "parameter offload")):
        if getattr(new, attr) != getattr(old, attr):
            out.append(f"{name} {'on' if getattr(new, attr) else 'off'}")
    if new.max_len != old.max_len:
        out.append(f"max_len {old.max_len} → {new.max_len} (longer rows truncated)")
    return out


def preflight(plan: Plan) -> Verdict:
    """Check a plan; when it does not fit, attach the nearest configuration that does."""
    verdict = check(plan)
    if verdict.fits:
        return verdict
    if plan.lora is not None and plan.lora.quantized and plan.gpu.name == "CPU":
        verdict.searched = False  # no GPU count, offload or length makes bitsandbytes run on a CPU
        return verdict
    def key(p: Plan) -> tuple:
        return p.n_gpus, p.n_nodes, p.max_len, p.grad_checkpointing, p.offload_optimizer, p.offload_params

    seen = {key(plan)}
    for candidate in _candidates(plan):
        if key(candidate) in seen:
            continue
        seen.add(key(candidate))
        alt = check(candidate)
        if alt.fits:
            alt.changes = _changes(plan, candidate)
            verdict.nearest = alt
            break
    return verdict
