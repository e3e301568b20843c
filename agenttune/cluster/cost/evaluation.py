"""Sizing of the jobs that load a model to evaluate it: prediction (held-out split and each benchmark) and
general-loss. Training is sized by `fit`; these are the jobs the preflight also has to clear before anything runs,
so that a run which cannot evaluate is refused before days of training, not after.

Takes: the model shape, the device (`compute.device`), the `evaluate` section (engine, precision, batch size,
max_new_tokens, the server's concurrency), the number of items per job and the prompt lengths (the shards
manifest's max_len and mean row length).
Gives: `EvalEstimate` per job: GPUs, GPU memory per GPU (weights + KV cache + workspace), host memory, runtime, and
whether it fits; when it does not, the problem and the nearest configuration that fits.

The arithmetic (bytes, GiB = 2**30), stated so that a reader can check it:
- weights: N parameters × 2 bytes (bf16 on a GPU) or 4 (fp32: CPU, or `precision: fp32`), split evenly over the
  job's GPUs (accelerate's `device_map="auto"` gives each GPU a run of layers; vLLM's tensor parallelism splits
  every layer);
- KV cache: 2 (K and V) × layers × kv_heads × head_dim × bytes × sequences × (max_len + max_new_tokens): every
  sequence of a batch at the longest prompt the shards allow (an upper bound); sequences = evaluate.batch_size
  (`hf`, `exact`), the server's `concurrency` (`server`), 1 for general-loss (one conversation at a time, whose
  forward keeps its cache);
- workspace: the prefill activations of one batch (sequences × max_len × (4·hidden + 2·intermediate) × bytes), the
  fp32 logits the job holds (`hf`: sequences × vocab per step; general-loss: max_len × vocab, plus their bf16
  copy), and 2 GiB per GPU of CUDA context and allocator slack;
- usable memory per GPU: 90% of it (vLLM's default `gpu_memory_utilization`; the same margin for transformers);
- GPUs: the fewest, within one node, that hold the job (`server`: a power of two that divides the attention heads,
  as tensor parallelism needs);
- host memory: the weights once at the evaluation dtype (a checkpoint is read through host memory on its way to the
  GPUs) + 16 GiB (Python, CUDA, tokenizer, the server); a CPU job holds everything in host memory: weights, KV cache,
  workspace + 2 GiB. The Slurm request is at least the site's memory per GPU × GPUs;
- runtime: loading (weights at 1 GB/s from a shared file system) + prefill (2·N FLOPs per prompt token at 30% of
  the dense bf16 peak; `hf` over several GPUs runs one GPU at a time) + decode (every step reads all weights once at
  50% of the memory bandwidth; steps = ceil(items / sequences) × max_new_tokens, each batch runs to its longest
  answer, plus 30 ms of Python and kernel launches per step); general-loss: loading + 2·N FLOPs per token at 30%.
  Doubled, at least 30 minutes, rounded up to 10.
- LoRA / QLoRA (train.tuning): a merged epoch (train.lora.merge, auto: LoRA up to 20B) is a plain model, sized as
  above. Unmerged, the job loads the base + the adapter (its parameters and modules_to_save at the evaluation dtype):
  LoRA's base at the evaluation dtype, QLoRA's at 4 bits with its quantization constants (adapters.LoraSpec.base_bytes;
  bitsandbytes, so GPUs only). The adapters add 2·r·(in + out) FLOPs per adapted linear and token to the prefill.
  Loading and decoding are timed from the 16-bit base (the checkpoint on disk is 16-bit; the 4-bit layers dequantize
  their weights to 16 bits on every forward, so a decode step moves at least as many bytes as a 16-bit model's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from agenttune.cluster.cost.adapters import LoraSpec
from agenttune.cluster.cost.devices import GiB, GPU
from agenttune.cluster.cost.shapes import ModelShape

USABLE_FRACTION = 0.9
CONTEXT_BYTES = 2 * GiB
HOST_OVERHEAD_BYTES = 16 * GiB      # a GPU job: CUDA's host side, Python, the tokenizer, a server's processes
CPU_HOST_OVERHEAD_BYTES = 2 * GiB   # a CPU job: Python, torch, the tokenizer
LOAD_BYTES_PER_S = 1e9
PREFILL_MFU = 0.30
DECODE_BANDWIDTH_FRACTION = 0.50
STEP_OVERHEAD_S = 0.03  # per decode step: Python and kernel launches of transformers' generate()
RUNTIME_SAFETY = 2.0
MIN_RUNTIME_MIN = 30

# The rules that load a model to evaluate it (rules/evaluate.smk); candidate generation calls a remote endpoint.
EVAL_RULES = ("predict", "predict_benchmark", "general_loss")


@dataclass(frozen=True)
class EvalWork:
    """What one job does."""

    rule: str
    items: int             # prompts (predict) or conversations (general_loss)
    prompt_tokens: float   # mean prompt (or conversation) length, tokens: runtime
    max_len: int           # the longest prompt the shards allow: memory
    new_tokens: int = 0    # evaluate.max_new_tokens (0: general-loss generates nothing)


@dataclass(frozen=True)
class EvalEstimate:
    work: EvalWork
    engine: str
    dtype: str
    gpus: int                      # 0: a CPU job
    weights_bytes: int
    kv_bytes: int
    workspace_bytes: int
    per_gpu_bytes: int             # on each GPU (0 for a CPU job)
    host_bytes: int
    runtime_min: int
    fits: bool
    problems: list[str] = field(default_factory=list)
    nearest: str | None = None     # when it does not fit: the nearest configuration that does
    adapter: str | None = None     # an unmerged LoRA / QLoRA epoch: base + adapter (None: a plain model)

    def as_dict(self) -> dict:
        return {"rule": self.work.rule, "items": self.work.items, "engine": self.engine, "dtype": self.dtype,
                "gpus": self.gpus, "weights_gib": round(self.weights_bytes / GiB, 2),
                "kv_cache_gib": round(self.kv_bytes / GiB, 2), "workspace_gib": round(self.workspace_bytes / GiB, 2),
                "per_gpu_gib": round(self.per_gpu_bytes / GiB, 2), "mem_mb": math.ceil(self.host_bytes / 2**20),
                "runtime_min": self.runtime_min, "fits": self.fits, "problems": self.problems,
                "nearest": self.nearest, **({"adapter": self.adapter} if self.adapter else {})}


def _sequences(work: EvalWork, evaluate: dict, engine: str) -> int:
    if work.rule == "general_loss":
        return 1
    per_batch = evaluate["server"]["concurrency"] if engine == "server" else evaluate["batch_size"]
    return max(1, min(per_batch, work.items or 1))


def _tp_sizes(shape: ModelShape, per_node: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts within a node: powers of two that divide the attention heads, and either
    divide the KV heads or are a multiple of them (KV heads are then replicated)."""
    sizes, n = [], 1
    while n <= per_node:
        kv_ok = shape.kv_heads % n == 0 if n <= shape.kv_heads else n % shape.kv_heads == 0
        if shape.heads % n == 0 and kv_ok:
            sizes.append(n)
        n *= 2
    return sizes


def estimate_eval_job(shape: ModelShape, device: GPU | None, work: EvalWork, evaluate: dict,
                      max_gpus: int | None = None, lora: LoraSpec | None = None) -> EvalEstimate:
    """One evaluation job on `device` (None: a CPU job). `max_gpus` caps the GPUs (default: one node's). `lora`:
    the run's LoRA / QLoRA; an unmerged epoch is loaded as base + adapter."""
    engine = "hf" if work.rule == "general_loss" else evaluate["engine"]
    on_gpu = device is not None
    if on_gpu and engine == "exact":
        engine = "hf"  # the exact engine falls back to hf on a GPU (agenttune.evaluate.generate.choose_engine)
    bytes_per = 2 if (on_gpu and evaluate["precision"] == "bf16") else 4
    dtype = "bf16" if bytes_per == 2 else "fp32"
    seqs = _sequences(work, evaluate, engine)
    context = work.max_len + work.new_tokens
    weights = shape.params * bytes_per
    stream_weights, adapter_flops, adapter = weights, 0, None  # stream: what loading and decoding move
    problems: list[str] = []
    if lora is not None and not lora.merged(shape):
        adapter_bytes = lora.trainable_params(shape) * bytes_per
        adapter_flops = lora.adapter_forward_flops_per_token(shape)
        stream_weights = weights + adapter_bytes
        if lora.quantized:
            weights = lora.base_bytes(shape) + adapter_bytes
            dtype = f"{lora.quant_type}+{dtype}"
            if not on_gpu:
                problems.append("an unmerged QLoRA epoch loads a 4-bit base (bitsandbytes), which needs a GPU; "
                                "compute.device is cpu")
        else:
            weights += adapter_bytes
        adapter = f"{lora.method} r{lora.rank}, unmerged"
    kv = 2 * shape.layers * shape.kv_dim * bytes_per * seqs * context
    prefill = seqs * work.max_len * (4 * shape.hidden + 2 * shape.intermediate) * bytes_per
    if work.rule == "general_loss":
        logits = work.max_len * shape.vocab * (4 + bytes_per)
    else:
        logits = seqs * shape.vocab * 4 * 2
    workspace = prefill + logits
    gpus, per_gpu = 0, 0
    if on_gpu:
        per_node = max_gpus or device.per_node
        usable = device.memory_bytes * USABLE_FRACTION
        candidates = _tp_sizes(shape, per_node) if engine == "server" else list(range(1, per_node + 1))
        need = lambda n: (weights + kv + workspace) / n + CONTEXT_BYTES  # noqa: E731
        fitting = [n for n in candidates if need(n) <= usable]
        if fitting:
            gpus = fitting[0]
        else:
            gpus = candidates[-1] if candidates else 1
            problems.append(f"needs {need(gpus) / GiB:.1f} GiB per GPU on {gpus} × {device.name} "
                            f"({USABLE_FRACTION:.0%} usable: {usable / GiB:.1f} GiB): weights {weights / GiB:.1f} GiB "
                            f"({dtype}), KV cache {kv / GiB:.1f} GiB ({seqs} sequences × {context} tokens), "
                            f"workspace {workspace / GiB:.1f} GiB")
        per_gpu = int(need(gpus))
    host = weights + (HOST_OVERHEAD_BYTES if on_gpu else CPU_HOST_OVERHEAD_BYTES + kv + workspace)
    runtime_min = _runtime_min(shape, device, work, engine, stream_weights, seqs, gpus, adapter_flops)
    estimate = EvalEstimate(work, engine, dtype, gpus, weights, kv, workspace, per_gpu, host, runtime_min,
                            not problems, problems, adapter=adapter)
    if problems:
        estimate = replace(estimate, nearest=_nearest(shape, device, work, evaluate, max_gpus, lora))
    return estimate


def _runtime_min(shape: ModelShape, device: GPU | None, work: EvalWork, engine: str, weights: int, seqs: int,
                 gpus: int, adapter_flops_per_token: int = 0) -> int:
    peak = device.peak_flops if device is not None else 1e12
    bandwidth = device.memory_bandwidth if device is not None else 50e9
    # hf with device_map runs one GPU at a time; tensor parallelism (server) uses all of them at once.
    parallel = gpus if (engine == "server" and gpus) else 1
    seconds = weights / LOAD_BYTES_PER_S
    flops = (2 * shape.compute_params + adapter_flops_per_token) * work.prompt_tokens * work.items
    seconds += flops / (peak * PREFILL_MFU * parallel)
    if work.new_tokens:
        steps = math.ceil(work.items / seqs) * work.new_tokens
        seconds += steps * (weights / (bandwidth * DECODE_BANDWIDTH_FRACTION * parallel) + STEP_OVERHEAD_S)
    minutes = max(MIN_RUNTIME_MIN, seconds * RUNTIME_SAFETY / 60)
    return int(math.ceil(minutes / 10) * 10)


def _nearest(shape: ModelShape, device: GPU | None, work: EvalWork, evaluate: dict, max_gpus: int | None,
             lora: LoraSpec | None = None) -> str | None:
    """The first change that makes the job fit, in the order a user would try them."""
    tries = []
    if evaluate["precision"] != "bf16":
        tries.append(("evaluate.precision: bf16", {**evaluate, "precision": "bf16"}))
    if work.rule != "general_loss":
        for batch in (8, 4, 1):
            if batch < evaluate["batch_size"]:
                tries.append((f"evaluate.batch_size: {batch}", {**evaluate, "batch_size": batch}))
        if evaluate["engine"] != "server":
            tries.append(("evaluate.engine: server (vLLM, tensor parallel)", {**evaluate, "engine": "server"}))
    for change, cfg in tries:
        est = estimate_eval_job(shape, device, work, cfg, max_gpus, lora)
        if est.fits:
            return f"{change}: {est.gpus} GPU(s), {est.per_gpu_bytes / GiB:.1f} GiB per GPU"
    shorter = replace(work, max_len=max(1024, work.max_len // 2))
    if shorter.max_len < work.max_len:
        est = estimate_eval_job(shape, device, shorter, evaluate, max_gpus, lora)
        if est.fits:
            return (f"tokenize.max_len: {shorter.max_len} (shorter prompts): {est.gpus} GPU(s), "
                    f"{est.per_gpu_bytes / GiB:.1f} GiB per GPU")
    return None


def item_counts(evaluate: dict, test_items: int, val_items: int | None, bfcl_items: int | None) -> dict[str, int]:
    """Items per job: the held-out split's (capped by evaluate.max_items), the largest benchmark job's (val, BFCL),
    and the general-chat conversations (evaluate.general.max_items, an upper bound)."""
    heldout = min(test_items, evaluate.get("max_items") or test_items)
    benchmarks = []
    if evaluate.get("val") is not None and val_items is not None:
        benchmarks.append(min(val_items, evaluate["val"].get("max_items") or val_items))
    if evaluate.get("bfcl") is not None and bfcl_items is not None:
        benchmarks.append(bfcl_items)
    counts = {"predict": heldout, "general_loss": evaluate["general"]["max_items"]}
    if benchmarks:
        counts["predict_benchmark"] = max(benchmarks)
    return counts


def plan_eval_jobs(shape: ModelShape, device: GPU | None, evaluate: dict, max_len: int, mean_prompt_tokens: float,
                   counts: dict[str, int], lora: LoraSpec | None = None) -> dict[str, EvalEstimate]:
    """Every evaluation job that loads a model, sized; `device` None: CPU jobs; `lora`: the run's LoRA / QLoRA."""
    out = {}
    for rule in EVAL_RULES:
        if rule not in counts:
            continue
        new = 0 if rule == "general_loss" else evaluate["max_new_tokens"]
        work = EvalWork(rule, counts[rule], min(mean_prompt_tokens, max_len), max_len, new)
        out[rule] = estimate_eval_job(shape, device, work, evaluate, lora=lora)
    return out


def eval_problems(estimates: dict[str, EvalEstimate], time_limit_hours: float | None) -> list[str]:
    """What the preflight refuses: a job that does not fit its GPUs (with the nearest fit), or one that would run
    past the time limit of one job."""
    problems = []
    for rule, est in estimates.items():
        for p in est.problems:
            near = f"; nearest fit: {est.nearest}" if est.nearest else "; no nearby configuration fits"
            problems.append(f"{rule} ({est.work.items} items, engine {est.engine}, {est.dtype}): {p}{near}")
        if time_limit_hours and est.runtime_min > time_limit_hours * 60:
            problems.append(f"{rule}: estimated {est.runtime_min} min, over compute.time_limit_hours "
                            f"({time_limit_hours:g} h); lower evaluate.max_items or evaluate.max_new_tokens")
    return problems
