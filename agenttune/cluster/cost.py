"""Cost and memory estimation for full fine-tuning with HF Trainer + DeepSpeed ZeRO-3.

Takes: a model shape (a preset name or an HF `config.json`), a GPU type and count, a token count,
max_len and the training flags (gradient checkpointing, ZeRO offload).
Gives: training FLOPs, hours per epoch and GPU-hours at a stated MFU, a per-GPU memory breakdown,
a preflight verdict that names the nearest configuration that fits, and the reproduction of the
seed's cost table. CLI: `python -m agenttune.cluster.cost --help`. Formulas and sources: docs/cost.md.

Conventions (docs/cost.md explains each):
- FLOPs: 6·N·T for the dense part, N = every parameter except the input-embedding table (a lookup,
  no multiply); causal attention 12·L·(heads·head_dim)·k̄ per token for forward + backward, k̄ = the
  mean number of keys a token attends to, (s+1)/2 for a row of length s; gradient checkpointing adds
  one more forward of the decoder layers (HF checkpoints the layers, not the lm_head).
- "MFU" here is the fraction of the GPUs' dense bf16 peak spent on the FLOPs `training_flops` counts.
  With checkpointing off that is MFU as PaLM defines it; with it on it includes the recomputed
  forward (PaLM calls that HFU). Counting the recompute keeps one utilization figure valid whether
  a run checkpoints or not.
- Bytes, with GiB = 2**30 for everything this module prints.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

GiB = 2**30
MiB = 2**20

DEFAULT_MFU = 0.20
"""Assumed MFU when no run has been measured yet. The seed's own timings of this exact stack (HF
Trainer + ZeRO-3, micro batch 1, A100) imply 14.5-18.6% with 6·N·T + attention, 19-24.5% if they
checkpointed (see `seed_table`). A preflight that guesses too fast lets jobs die at the partition
time limit, so the default sits in that range rather than at the 35-50% that tuned Megatron-style
runs report. A measured MFU (--metrics) replaces it from the first epoch on."""

DEFAULT_MAX_LEN = 4096
FIXED_BUFFER_BYTES = 3 * GiB
"""CUDA context + NCCL buffers + ZeRO-3 prefetch/reduce buckets + allocator fragmentation."""

LOGITS_BYTES_PER_ELEMENT = 10
"""At the turn from forward to backward the loss holds, per (token, vocab) element: the bf16 logits
(2 bytes), their fp32 upcast for the loss (4) and the fp32 log-softmax saved for backward (4)."""

ACT_BYTES_PER_HIDDEN = 34
ACT_BYTES_PER_HEAD_SEQ = 5
"""Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1:
one layer keeps s·b·h·(34 + 5·a·s/h) bytes of 16-bit activations; flash-attn drops the 5·a·s term."""

DEFAULT_NODE_MEMORY_BYTES = 1024 * GiB
ZERO3_CPU_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor default
SEED_TOKENS = 470e6
EXIT_FITS, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3


# --------------------------------------------------------------------------- model shapes

@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder: embeddings, `layers` × (RMSNorm, GQA attention, RMSNorm, SwiGLU MLP),
    final RMSNorm, lm_head (absent when tied to the embeddings)."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 / Qwen1.5: bias on q, k, v
    o_bias: bool = False    # Llama with attention_bias=true also biases o_proj
    mlp_bias: bool = False
    head_dim_override: int | None = None  # config.json "head_dim" when it is not hidden // heads

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attention_params_per_layer(self) -> int:
        weights = self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim + self.q_dim * self.hidden
        biases = (self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0) + (self.hidden if self.o_bias else 0)
        return weights + biases

    @property
    def mlp_params_per_layer(self) -> int:
        biases = 2 * self.intermediate + self.hidden if self.mlp_bias else 0
        return 3 * self.hidden * self.intermediate + biases

    @property
    def layer_params(self) -> int:
        return self.attention_params_per_layer + self.mlp_params_per_layer + 2 * self.hidden  # 2 RMSNorms

    @property
    def decoder_params(self) -> int:
        """The parameters inside the decoder layers: what gradient checkpointing recomputes."""
        return self.layers * self.layer_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Total parameter count N, shared embedding counted once."""
        lm_head = 0 if self.tie_embeddings else self.vocab * self.hidden
        return self.embedding_params + self.decoder_params + self.hidden + lm_head

    @property
    def compute_params(self) -> int:
        """Parameters that cost 2 FLOPs per token forward: all but the input-embedding lookup. A tied
        table is counted once, as the lm_head. (Norm weights and biases are elementwise; <0.01%.)"""
        return self.params - (0 if self.tie_embeddings else self.embedding_params)

    @property
    def largest_layer_params(self) -> int:
        """DeepSpeed's "largest layer": the biggest single module's own parameters (an nn.Linear or
        the nn.Embedding), as `model_to_params` in deepspeed/runtime/zero/stage3.py counts them."""
        q_bias, kv_bias = (self.q_dim, self.kv_dim) if self.qkv_bias else (0, 0)
        return max(
            self.vocab * self.hidden,
            self.hidden * self.q_dim + q_bias,
            self.hidden * self.kv_dim + kv_bias,
            self.q_dim * self.hidden + (self.hidden if self.o_bias else 0),
            self.hidden * self.intermediate + (self.intermediate if self.mlp_bias else 0),
        )

    @classmethod
    def from_hf_config(cls, config: dict, name: str | None = None) -> "ModelShape":
        """Read a Llama / Qwen2 / Mistral `config.json` dict. Missing `num_key_value_heads` means
        plain multi-head attention; missing `tie_word_embeddings` means untied (the default of those
        three config classes)."""
        required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
        missing = [k for k in required if k not in config]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}: not a Llama-style decoder config")
        model_type = config.get("model_type", "")
        attention_bias = bool(config.get("attention_bias", False))
        is_qwen2 = model_type == "qwen2"
        return cls(
            name=name or config.get("_name_or_path") or model_type or "model",
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            heads=int(config["num_attention_heads"]),
            kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
            vocab=int(config["vocab_size"]),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=is_qwen2 or attention_bias,
            o_bias=attention_bias and not is_qwen2,
            mlp_bias=bool(config.get("mlp_bias", False)),
            head_dim_override=config.get("head_dim"),
        )


PRESETS: dict[str, ModelShape] = {
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters.
    "smollm2-135m": ModelShape("smollm2-135m", layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3,
                               vocab=49152, tie_embeddings=True),
    # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters.
    "llama2-7b": ModelShape("llama2-7b", layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32,
                            vocab=32000),
    # Qwen/Qwen1.5-14B (the original Qwen-14B has the same shape): 14,167,290,880 parameters.
    "qwen1.5-14b": ModelShape("qwen1.5-14b", layers=40, hidden=5120, intermediate=13696, heads=40, kv_heads=40,
                              vocab=152064, qkv_bias=True),
    # Qwen/Qwen2.5-14B, in case the seed's "14B" meant the Qwen2 generation: 14,770,033,664 parameters.
    "qwen2.5-14b": ModelShape("qwen2.5-14b", layers=48, hidden=5120, intermediate=13824, heads=40, kv_heads=8,
                              vocab=152064, qkv_bias=True),
    # Qwen/Qwen2-72B: 72,706,203,648 parameters.
    "qwen2-72b": ModelShape("qwen2-72b", layers=80, hidden=8192, intermediate=29568, heads=64, kv_heads=8,
                            vocab=152064, qkv_bias=True),
}
ALIASES = {"qwen-14b": "qwen1.5-14b", "qwen2-14b": "qwen1.5-14b"}  # there is no Qwen2-14B; see docs/cost.md


def load_shape(model: str) -> ModelShape:
    """A preset name, or a path to a config.json (or to the directory holding one)."""
    key = ALIASES.get(model.lower(), model.lower())
    if key in PRESETS:
        return PRESETS[key]
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unknown model {model!r}: not a preset ({', '.join(PRESETS)}) and no config.json there")
    return ModelShape.from_hf_config(json.loads(path.read_text()), name=model)


# --------------------------------------------------------------------------- accelerators

@dataclass(frozen=True)
class GPU:
    name: str
    peak_flops: float   # dense bf16 tensor-core peak, FLOP/s, no sparsity
    memory_bytes: int   # what nvidia-smi reports as total
    per_node: int = 8

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


GPUS: dict[str, GPU] = {
    "a100-80g": GPU("A100-80G", 312e12, 81920 * MiB),
    "a100-40g": GPU("A100-40G", 312e12, 40960 * MiB),
    "h100-80g": GPU("H100-80G SXM", 989e12, 81559 * MiB),
    "h200": GPU("H200 SXM", 989e12, 143771 * MiB),
    # Placeholder for CPU smoke runs: set the peak and memory to the machine's (get_gpu overrides).
    "cpu": GPU("CPU", 1e12, 64 * GiB, per_node=1),
}


def get_gpu(name: str | GPU, peak_flops: float | None = None, memory_gib: float | None = None) -> GPU:
    gpu = name if isinstance(name, GPU) else GPUS.get(name.lower())
    if gpu is None:
        raise ValueError(f"unknown gpu {name!r}; known: {', '.join(GPUS)}")
    if peak_flops is not None:
        gpu = replace(gpu, peak_flops=float(peak_flops))
    if memory_gib is not None:
        gpu = replace(gpu, memory_bytes=int(memory_gib * GiB))
    return gpu


# --------------------------------------------------------------------------- FLOPs and time

SeqLens = int | list | tuple | dict
"""One row length; a list of row lengths; or a histogram {length: number of rows}."""


def _length_histogram(seq_len: SeqLens) -> dict[int, int]:
    if isinstance(seq_len, dict):
        hist = {int(k): int(v) for k, v in seq_len.items()}
    elif isinstance(seq_len, (list, tuple)):
        hist = {}
        for s in seq_len:
            hist[int(s)] = hist.get(int(s), 0) + 1
    else:
        hist = {int(seq_len): 1}
    hist = {s: n for s, n in hist.items() if s > 0 and n > 0}
    if not hist:
        raise ValueError("no positive sequence lengths")
    return hist


def truncate_lengths(seq_len: SeqLens, max_len: int) -> dict[int, int]:
    hist: dict[int, int] = {}
    for s, n in _length_histogram(seq_len).items():
        hist[min(s, max_len)] = hist.get(min(s, max_len), 0) + n
    return hist


def mean_keys_per_token(seq_len: SeqLens) -> float:
    """Under causal masking token i of a row attends to i keys, so a row of length s costs
    Σ i = s(s+1)/2 key visits over s tokens. Token-weighted mean over the rows."""
    hist = _length_histogram(seq_len)
    visits = sum(n * s * (s + 1) / 2 for s, n in hist.items())
    tokens = sum(n * s for s, n in hist.items())
    return visits / tokens


@dataclass(frozen=True)
class FlopCount:
    dense: float      # 6·N·T (forward 2·N·T + backward 4·N·T)
    attention: float  # QK^T and A·V, forward + backward, causal
    recompute: float  # gradient checkpointing: one more forward of the decoder layers

    @property
    def total(self) -> float:
        return self.dense + self.attention + self.recompute


def trainable_layers(train_cfg: dict) -> int | None:
    """The run config's trainable top layers: `freeze_trainable_layers` with freeze tuning, None (all) otherwise."""
    return train_cfg["freeze_trainable_layers"] if train_cfg.get("tuning", "full") == "freeze" else None


def training_flops(shape: ModelShape, tokens: float, seq_len: SeqLens = DEFAULT_MAX_LEN,
                   grad_checkpointing: bool = False, trainable_layers: int | None = None) -> FlopCount:
    """FLOPs to train on `tokens` tokens arranged in rows of `seq_len` (an int, a list of row lengths
    or a {length: rows} histogram; only its shape matters, it is rescaled to `tokens`).

    Full tuning (trainable_layers None):
    dense     = 6 · N_compute · T
    attention = 3 · (2 matmuls · 2 FLOP/MAC · heads·head_dim · k̄) · layers · T,  k̄ = mean keys per token
    recompute = (2 · N_decoder · T + attention / 3)  when checkpointing, else 0

    Freeze tuning (the top `trainable_layers` decoder layers train, everything else is frozen): the forward pass
    is the same; the backward pass runs only down to the lowest trainable layer: weight and input gradients
    (2 × forward) in the trainable layers, the input gradient only (1 × forward) through the frozen lm_head, and
    nothing below. So dense = 2·N_compute·T + 4·k·N_layer·T + 2·N_lm_head·T, the attention backward and the
    recompute cover k of the layers.
    """
    attention_forward = 4 * shape.q_dim * mean_keys_per_token(seq_len) * shape.layers * tokens
    if trainable_layers is None:
        dense = 6 * shape.compute_params * tokens
        recompute = 2 * shape.decoder_params * tokens + attention_forward if grad_checkpointing else 0.0
        return FlopCount(dense=dense, attention=3 * attention_forward, recompute=recompute)
    # freeze tuning keeps the embeddings and the lm_head frozen even when every decoder layer trains
    k = min(max(0, int(trainable_layers)), shape.layers)
    share = k / shape.layers
    lm_head = shape.vocab * shape.hidden
    dense = 2 * shape.compute_params * tokens + (4 * k * shape.layer_params + 2 * lm_head) * tokens
    recompute = (2 * k * shape.layer_params * tokens + share * attention_forward) if grad_checkpointing else 0.0
    return FlopCount(dense=dense, attention=(1 + 2 * share) * attention_forward, recompute=recompute)


@dataclass(frozen=True)
class TimeEstimate:
    flops_per_epoch: float
    n_gpus: int
    gpu: GPU
    mfu: float
    epochs: float = 1

    @property
    def hours_per_epoch(self) -> float:
        return self.flops_per_epoch / (self.n_gpus * self.gpu.peak_flops * self.mfu) / 3600

    @property
    def total_hours(self) -> float:
        return self.hours_per_epoch * self.epochs

    @property
    def gpu_hours(self) -> float:
        return self.total_hours * self.n_gpus


def estimate_time(shape: ModelShape, tokens: float, n_gpus: int, gpu: str | GPU, mfu: float = DEFAULT_MFU,
                  seq_len: SeqLens = DEFAULT_MAX_LEN, grad_checkpointing: bool = False,
                  epochs: float = 1, trainable_layers: int | None = None) -> TimeEstimate:
    """time per epoch = training_flops(tokens per epoch) / (n_gpus · peak · mfu)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    flops = training_flops(shape, tokens, seq_len, grad_checkpointing, trainable_layers).total
    return TimeEstimate(flops, n_gpus, get_gpu(gpu), mfu, epochs)


def implied_mfu(shape: ModelShape, tokens: float, hours: float, n_gpus: int, gpu: str | GPU,
                seq_len: SeqLens = DEFAULT_MAX_LEN, grad_checkpointing: bool = False,
                trainable_layers: int | None = None) -> float:
    """The MFU at which `tokens` take `hours` on `n_gpus`: the inverse of `estimate_time`. The training
    job should record this (with its own checkpointing flag) as `mfu` in metrics.json."""
    flops = training_flops(shape, tokens, seq_len, grad_checkpointing, trainable_layers).total
    return flops / (hours * 3600 * n_gpus * get_gpu(gpu).peak_flops)


def read_measured_mfu(path: str | Path, shape: ModelShape, seq_len: SeqLens = DEFAULT_MAX_LEN,
                      grad_checkpointing: bool = False) -> tuple[float, str]:
    """The `mfu` a training epoch recorded in metrics.json, in this module's FLOP count.

    A file marked `"mfu_convention": "agenttune.cluster.cost"` is taken as is. Anything else is read as
    agenttune/train/trainer.py writes it today, 6·`parameters`·T / wall / peak (no attention, no recompute),
    and rescaled by training_flops per token / (6·parameters). Returns (mfu, how it was read)."""
    metrics = json.loads(Path(path).read_text())
    mfu = metrics.get("mfu")
    if not isinstance(mfu, (int, float)) or isinstance(mfu, bool) or mfu <= 0:
        raise ValueError(f"{path}: no positive 'mfu' (was device_peak_flops set for that run?)")
    if metrics.get("mfu_convention") == "agenttune.cluster.cost":
        return float(mfu), f"measured, {path}"
    n_params = metrics.get("parameters") or shape.params
    per_token = training_flops(shape, 1, seq_len, grad_checkpointing, metrics.get("mfu_trainable_layers")).total
    converted = float(mfu) * per_token / (6 * n_params)
    return converted, f"measured, {path}: 6·N·T MFU {mfu:.3f} → {converted:.3f} with attention" + (
        " and recompute" if grad_checkpointing else "")


# --------------------------------------------------------------------------- memory

def zero3_model_states_mem(total_params: int, largest_layer_params: int, num_gpus_per_node: int = 1,
                           num_nodes: int = 1, cpu_offload: bool = False, cpu_offload_params: bool = False,
                           zero_init: bool = True,
                           additional_buffer_factor: float = ZERO3_CPU_BUFFER_FACTOR) -> tuple[int, int, int]:
    """(cpu bytes per node, gpu bytes per GPU, largest layer bytes) for ZeRO-3 model states.

    The formulas of DeepSpeed's `estimate_zero3_model_states_mem_needs` (deepspeed/runtime/zero/stage3.py,
    read from a current master snapshot; tests/test_cost.py compares with the installed deepspeed), restated:
      largest = 4 · largest_layer_params            (gathered 16-bit params + grads of one module)
      no offload:          gpu = largest + 18·N / gpus
                           cpu = 1.5 · 4 · largest_layer_params · gpus_per_node   (zero_init; else 4·N·gpn)
      optimizer offload:   gpu = largest + 2·N / gpus
                           cpu = 1.5 · 16 · N / nodes                    (zero_init; else max(4·gpn, 16/nodes)·N)
      + param offload:     gpu = largest
                           cpu = 1.5 · 18 · N / nodes                    (zero_init; else max(4·gpn, 18/nodes)·N)
    18 bytes/param = 2 (bf16 weights) + 4 (fp32 gradients) + 12 (fp32 master weights, Adam m and v).
    `cpu_offload` is offload_optimizer; `cpu_offload_params` only counts together with it, as in DeepSpeed.
    """
    total_gpus = num_gpus_per_node * num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload and cpu_offload_params:
        gpu_mem = largest_layer_memory
        per_param = 18 / num_nodes if zero_init else max(4 * num_gpus_per_node, 18 / num_nodes)
        cpu_mem = total_params * per_param * additional_buffer_factor
    elif cpu_offload:
        gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
        per_param = 16 / num_nodes if zero_init else max(4 * num_gpus_per_node, 16 / num_nodes)
        cpu_mem = total_params * per_param * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


def activation_bytes(shape: ModelShape, seq_len: int, grad_checkpointing: bool, micro_batch: int = 1,
                     dtype_bytes: int = 2, flash_attn: bool = True) -> int:
    """Activations kept for backward, per GPU (Korthikanti et al. 2022, scaled from 2-byte to dtype_bytes).

    one layer, per token:  34·h (+ 5·heads·s without flash-attn)  bytes
    no checkpointing:      every layer's activations
    full checkpointing:    each layer's input (h values per token) + one layer's activations, rebuilt
                           in backward."""
    per_token_layer = ACT_BYTES_PER_HIDDEN * shape.hidden
    if not flash_attn:
        per_token_layer += ACT_BYTES_PER_HEAD_SEQ * shape.heads * seq_len
    per_token_layer = per_token_layer * dtype_bytes // 2
    tokens = micro_batch * seq_len
    if grad_checkpointing:
        return tokens * (shape.layers * shape.hidden * dtype_bytes + per_token_layer)
    return tokens * shape.layers * per_token_layer


@dataclass(frozen=True)
class MemoryEstimate:
    model_states: int   # DeepSpeed's ZeRO-3 gpu_mem (params, grads, optimizer shard + largest layer)
    activations: int
    logits: int         # loss buffers: bf16 logits + fp32 upcast + fp32 log-softmax
    fixed_buffer: int
    cpu_per_node: int   # DeepSpeed's ZeRO-3 cpu_mem
    largest_layer_params: int

    @property
    def per_gpu(self) -> int:
        return self.model_states + self.activations + self.logits + self.fixed_buffer

    def breakdown_gib(self) -> dict[str, float]:
        return {"model_states": self.model_states / GiB, "activations": self.activations / GiB,
                "logits": self.logits / GiB, "fixed_buffer": self.fixed_buffer / GiB,
                "total_per_gpu": self.per_gpu / GiB, "cpu_per_node": self.cpu_per_node / GiB}


def estimate_memory_zero3(shape: ModelShape, n_gpus: int, n_nodes: int = 1, offload_optimizer: bool = False,
                          offload_params: bool = False, seq_len: int = DEFAULT_MAX_LEN,
                          grad_checkpointing: bool = False, micro_batch: int = 1, dtype_bytes: int = 2,
                          flash_attn: bool = True, zero_init: bool = True) -> MemoryEstimate:
    """Per-GPU bytes for ZeRO-3 training at a row length of `seq_len`, and CPU bytes per node.

    `n_gpus` counts all GPUs; it must split evenly over `n_nodes`. Parameter offload needs optimizer
    offload (DeepSpeed's estimator ignores it otherwise; so does this)."""
    if n_gpus < 1 or n_nodes < 1 or n_gpus % n_nodes:
        raise ValueError(f"{n_gpus} GPUs do not split evenly over {n_nodes} nodes")
    cpu, gpu, _ = zero3_model_states_mem(shape.params, shape.largest_layer_params, n_gpus // n_nodes, n_nodes,
                                         cpu_offload=offload_optimizer, cpu_offload_params=offload_params,
                                         zero_init=zero_init)
    return MemoryEstimate(
        model_states=gpu,
        activations=activation_bytes(shape, seq_len, grad_checkpointing, micro_batch, dtype_bytes, flash_attn),
        logits=micro_batch * seq_len * shape.vocab * LOGITS_BYTES_PER_ELEMENT,
        fixed_buffer=FIXED_BUFFER_BYTES,
        cpu_per_node=cpu,
        largest_layer_params=shape.largest_layer_params,
    )


# --------------------------------------------------------------------------- preflight

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

    @property
    def lengths(self) -> dict[int, int]:
        return truncate_lengths(self.seq_lens if self.seq_lens is not None else self.max_len, self.max_len)

    def memory(self) -> MemoryEstimate:
        return estimate_memory_zero3(self.shape, self.n_gpus, self.n_nodes, self.offload_optimizer,
                                     self.offload_params, max(self.lengths), self.grad_checkpointing,
                                     self.micro_batch, flash_attn=self.flash_attn)

    def time(self) -> TimeEstimate:
        return estimate_time(self.shape, self.tokens, self.n_gpus, self.gpu, self.mfu, self.lengths,
                             self.grad_checkpointing, self.epochs, self.trainable_layers)

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
    return Verdict(plan, not problems, problems, mem, time)


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
    base = dict(grad_checkpointing=plan.grad_checkpointing, offload_optimizer=plan.offload_optimizer,
                offload_params=plan.offload_params)
    gc = {**base, "grad_checkpointing": True}
    gc_opt = {**gc, "offload_optimizer": True}
    gc_all = {**gc_opt, "offload_params": True}
    here = [(plan.n_gpus, plan.n_nodes)]
    more = _more_gpus(plan)
    for flags in (gc, gc_opt, gc_all):
        yield replace(plan, **flags)
    for n, nodes in more:
        for flags in (base, gc):
            yield replace(plan, n_gpus=n, n_nodes=nodes, **flags)
    for n, nodes in more:
        for flags in (gc_opt, gc_all):
            yield replace(plan, n_gpus=n, n_nodes=nodes, **flags)
    max_len = plan.max_len // 2
    while max_len >= 1024:
        for n, nodes in here + more:
            for flags in (base, gc, gc_opt, gc_all):
                yield replace(plan, n_gpus=n, n_nodes=nodes, max_len=max_len, **flags)
        max_len //= 2


def _changes(old: Plan, new: Plan) -> list[str]:
    out = []
    if new.n_gpus != old.n_gpus:
        out.append(f"{old.n_gpus} → {new.n_gpus} GPUs")
    for attr, name in (("grad_checkpointing", "gradient checkpointing"), ("offload_optimizer", "optimizer offload"),
                       ("offload_params", "parameter offload")):
        if getattr(new, attr) != getattr(old, attr):
            out.append(f"{name} on")
    if new.max_len != old.max_len:
        out.append(f"max_len {old.max_len} → {new.max_len} (longer rows truncated)")
    return out


def preflight(plan: Plan) -> Verdict:
    """Check a plan; when it does not fit, attach the nearest configuration that does."""
    verdict = check(plan)
    if verdict.fits:
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


# --------------------------------------------------------------------------- seed table

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


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
                     "checkpointing": p.grad_checkpointing, "offload_optimizer": p.offload_optimizer,
                     "offload_params": p.offload_params, "mfu": p.mfu, "mfu_source": p.mfu_source,
                     "tflops_per_epoch": round(v.time.flops_per_epoch / 1e12),
                     "h_per_epoch": round(v.time.hours_per_epoch, 2),
                     "s_per_epoch": round(v.time.hours_per_epoch * 3600, 1), "epochs": p.epochs,
                     "gpu_hours": round(v.time.gpu_hours, 1),
                     **{f"{k}_GiB": round(x, 2) for k, x in v.memory.breakdown_gib().items()},
                     "fits": v.fits})
    return rows


# --------------------------------------------------------------------------- CLI

def _read_manifest(path: str) -> tuple[float, SeqLens | None]:
    manifest = json.loads(Path(path).read_text())
    if not manifest.get("total_tokens"):
        raise ValueError(f"{path}: no positive 'total_tokens'")
    return float(manifest["total_tokens"]), manifest.get("row_lengths") or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agenttune.cluster.cost",
                                 description="Estimate hours, GPU-hours and per-GPU memory of a ZeRO-3 fine-tune; "
                                             "refuse (exit 3) a plan that does not fit and name the nearest that does.")
    ap.add_argument("--model", help=f"preset ({', '.join(PRESETS)}) or path to config.json")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs in total (all nodes)")
    ap.add_argument("--gpu", default="a100-80g", help=f"one of {', '.join(GPUS)}")
    ap.add_argument("--nodes", type=int, default=None, help="nodes (default: as few as hold --gpus)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--tokens", type=float, help="tokens per epoch, e.g. 470e6")
    ap.add_argument("--manifest", help="shards manifest.json: tokens from 'total_tokens', row lengths from 'row_lengths'")
    ap.add_argument("--metrics", help="an epoch's metrics.json: measured MFU from 'mfu'")
    ap.add_argument("--mfu", type=float, help=f"assumed MFU (default {DEFAULT_MFU})")
    ap.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--offload-optimizer", action="store_true")
    ap.add_argument("--offload-params", action="store_true", help="also offload parameters (implies --offload-optimizer)")
    ap.add_argument("--time-limit-hours", type=float, help="partition time limit for one epoch's job")
    ap.add_argument("--node-memory-gib", type=float, default=DEFAULT_NODE_MEMORY_BYTES / GiB)
    ap.add_argument("--peak-flops", type=float, help="override the device's peak FLOP/s (needed for --gpu cpu)")
    ap.add_argument("--gpu-memory-gib", type=float, help="override the device's memory")
    ap.add_argument("--seed-table", action="store_true", help="print the seed table reproduction")
    ap.add_argument("--out-md", help="write the table (seed table, or the plan's breakdown) as Markdown")
    ap.add_argument("--out-csv", help="write the same table as CSV")
    args = ap.parse_args(argv)

    try:
        gpu = get_gpu(args.gpu, args.peak_flops, args.gpu_memory_gib)
        rows: list[dict] = []
        if args.seed_table:
            rows = seed_table(args.mfu or DEFAULT_MFU, gpu=gpu)
            print(format_markdown(rows))
        if not args.model:
            if not args.seed_table:
                ap.error("--model is required (or --seed-table alone)")
            _write_tables(rows, args)
            return EXIT_FITS
        shape = load_shape(args.model)
        tokens, seq_lens = (None, None)
        if args.manifest:
            tokens, seq_lens = _read_manifest(args.manifest)
        if args.tokens:
            tokens = args.tokens
        if not tokens:
            ap.error("give --tokens or --manifest")
        nodes = args.nodes or math.ceil(args.gpus / gpu.per_node)
        plan = Plan(shape, gpu, args.gpus, nodes, args.epochs, tokens, args.max_len, seq_lens,
                    args.grad_checkpointing, args.offload_optimizer or args.offload_params, args.offload_params,
                    time_limit_hours=args.time_limit_hours, node_memory_bytes=int(args.node_memory_gib * GiB))
        if args.metrics:
            mfu, source = read_measured_mfu(args.metrics, shape, plan.lengths, plan.grad_checkpointing)
            plan = replace(plan, mfu=mfu, mfu_source=source)
        elif args.mfu:
            plan = replace(plan, mfu=args.mfu, mfu_source="given")
        else:
            plan = replace(plan, mfu_source="default")
        verdict = preflight(plan)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    print(f"{shape.name}: {shape.params:,} parameters, {tokens:,.0f} tokens/epoch, "
          f"{verdict.time.flops_per_epoch:.3e} FLOPs/epoch")
    print(format_markdown([{"component": k, "GiB": round(v, 2)} for k, v in verdict.memory.breakdown_gib().items()]))
    if not args.seed_table:
        rows = plan_rows(verdict)
    _write_tables(rows, args)
    if verdict.fits:
        print(verdict.message)
        return EXIT_FITS
    print(verdict.message, file=sys.stderr)
    return EXIT_REFUSED


def _write_tables(rows: list[dict], args) -> None:
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(format_markdown(rows))
    if args.out_csv:
        write_csv(rows, args.out_csv)


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- pipeline preflight

def plan_for_run(model_config: dict, manifest: dict, compute: dict, epochs: int, max_len: int,
                 grad_checkpointing: bool = False, offload_optimizer: bool = False,
                 offload_params: bool = False, model_name: str | None = None,
                 trainable_layers: int | None = None) -> Plan:
    """The Plan of one pipeline run: model shape from its config.json, tokens per epoch from the shards manifest,
    devices and limits from the run config's `compute` section, MFU measured (a metrics.json) when given."""
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
                trainable_layers=trainable_layers)
    if compute.get("mfu_metrics"):
        mfu, source = read_measured_mfu(compute["mfu_metrics"], shape, plan.lengths, grad_checkpointing)
        return replace(plan, mfu=mfu, mfu_source=source)
    if compute.get("mfu"):
        return replace(plan, mfu=float(compute["mfu"]), mfu_source=compute.get("mfu_source", "given in config"))
    return plan


def run_preflight(plan: Plan) -> tuple[Verdict, list[dict]]:
    """Verdict (with the nearest fit when refused) and the table rows for the report."""
    verdict = preflight(plan)
    return verdict, plan_rows(verdict)
