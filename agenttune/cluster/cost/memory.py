"""Memory of ZeRO-3 training: model states, activations, loss buffers per GPU, and the CPU memory offload needs.

Takes: a `ModelShape`, GPUs and nodes, the offload and checkpointing flags, the longest row.
Gives: `zero3_model_states_mem` (DeepSpeed's own estimator, restated), `activation_bytes`, and
`estimate_memory_zero3` -> `MemoryEstimate` (the per-GPU breakdown).
"""

from __future__ import annotations

from dataclasses import dataclass

from agenttune.cluster.cost.adapters import LoraSpec, linear_dims
from agenttune.cluster.cost.devices import GiB
from agenttune.cluster.cost.flops import DEFAULT_MAX_LEN
from agenttune.cluster.cost.shapes import ModelShape

FIXED_BUFFER_BYTES = 3 * GiB
"""CUDA context + NCCL buffers + ZeRO-3 prefetch/reduce buckets + allocator fragmentation."""

LOGITS_BYTES_PER_ELEMENT = 10
"""At the turn from forward to backward the loss holds, per (token, vocab) element: the bf16 logits
(2 bytes), their fp32 upcast for the loss (4) and the fp32 log-softmax saved for backward (4)."""

ACT_BYTES_PER_HIDDEN = 34
ACT_BYTES_PER_HEAD_SEQ = 5
"""Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1:
one layer keeps s·b·h·(34 + 5·a·s/h) bytes of 16-bit activations; flash-attn drops the 5·a·s term."""

ZERO3_CPU_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor default


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
    # LoRA / QLoRA only (None otherwise): the parts of model_states on each GPU, the frozen base's share and the
    # trainable adapter's (weights, gradients, optimizer states), and the adapters' own activations.
    frozen_base: int | None = None
    adapter_states: int | None = None
    adapter_activations: int | None = None

    @property
    def per_gpu(self) -> int:
        return self.model_states + self.activations + self.logits + self.fixed_buffer

    def breakdown_gib(self) -> dict[str, float]:
        out = {"model_states": self.model_states / GiB, "activations": self.activations / GiB,
               "logits": self.logits / GiB, "fixed_buffer": self.fixed_buffer / GiB,
               "total_per_gpu": self.per_gpu / GiB, "cpu_per_node": self.cpu_per_node / GiB}
        if self.frozen_base is not None:  # full and freeze tuning keep their columns as they were
            out |= {"frozen_base": self.frozen_base / GiB, "adapter_states": self.adapter_states / GiB,
                    "adapter_activations": self.adapter_activations / GiB}
        return out


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


def lora_model_states_mem(shape: ModelShape, lora: LoraSpec, num_gpus_per_node: int = 1, num_nodes: int = 1,
                          cpu_offload: bool = False, cpu_offload_params: bool = False, dtype_bytes: int = 2,
                          additional_buffer_factor: float = ZERO3_CPU_BUFFER_FACTOR) -> tuple[int, int, int, int, int]:
    """(cpu bytes per node, gpu bytes per GPU, largest layer bytes, frozen base bytes per GPU, adapter bytes per GPU)
    for LoRA / QLoRA under ZeRO-3: DeepSpeed's estimator with the parameters split into a frozen base and A
    trainable parameters (the adapters + modules_to_save):

      base  = N · dtype_bytes (LoRA), or the 4-bit base with its constants (QLoRA; LoraSpec.base_bytes)
      largest = 2 · P_L   (the gathered 16-bit weights of the largest module; a frozen module has no gradient)
                + 2 · P_L when modules_to_save trains a module that large (embed_tokens, lm_head): its gradient
      no offload:          gpu = largest + (base + 18·A) / gpus          cpu = 1.5 · 4 · P_L · gpus_per_node
      optimizer offload:   gpu = largest + (base + 2·A) / gpus           cpu = 1.5 · 16 · A / nodes
      + param offload:     gpu = largest                                 cpu = 1.5 · (base + 18·A) / nodes

    ZeRO-3 partitions every parameter, frozen or not (zero.Init does not look at requires_grad), so the frozen base
    is split over the GPUs like the trainable part; for QLoRA the 4-bit weights are packed into bf16 storage
    (bnb_4bit_quant_storage) precisely so that ZeRO-3 can partition them. Only the trainable parameters have
    gradients (4 bytes, fp32) and Adam states (12 bytes: fp32 master weights, m and v): 18 bytes with their 16-bit
    copy, as DeepSpeed counts a trainable parameter (PEFT keeps adapters in fp32 without DeepSpeed: 16 bytes, so 18
    is the upper figure)."""
    total_gpus = num_gpus_per_node * num_nodes
    base = lora.base_bytes(shape, dtype_bytes)
    trainable = lora.trainable_params(shape)
    saves_largest = any(m in ("embed_tokens", "lm_head") for m in lora.modules_to_save) and (
        shape.vocab * shape.hidden >= shape.largest_layer_params)
    largest = 2 * shape.largest_layer_params * (2 if saves_largest else 1)
    if cpu_offload and cpu_offload_params:
        gpu_base, gpu_adapter = 0, 0
        cpu = (base + 18 * trainable) / num_nodes * additional_buffer_factor
    elif cpu_offload:
        gpu_base, gpu_adapter = base / total_gpus, 2 * trainable / total_gpus
        cpu = 16 * trainable / num_nodes * additional_buffer_factor
    else:
        gpu_base, gpu_adapter = base / total_gpus, 18 * trainable / total_gpus
        cpu = shape.largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
    gpu = largest + int(gpu_base) + int(gpu_adapter)
    return int(cpu), gpu, largest, int(gpu_base), int(gpu_adapter)


def lora_activation_bytes(shape: ModelShape, lora: LoraSpec, seq_len: int, grad_checkpointing: bool,
                          micro_batch: int = 1, dtype_bytes: int = 2) -> int:
    """What the adapters keep for backward on top of the base's activations (which LoRA leaves as they are: the
    forward is the same and the input gradients still flow through every frozen layer). Per adapted linear and
    token: lora_B's input, r values; with dropout > 0 also lora_A's input, the dropped-out copy of x (in values,
    PEFT applies the dropout per adapter) and its mask (1 byte each). With dropout 0, lora_A's input is the base
    layer's own input, already counted. Per layer, all layers, or one rebuilt layer with checkpointing; an adapter
    on lm_head (its input: hidden values) is outside the checkpointed layers and always kept."""
    def per_token(in_dim: int) -> int:
        return lora.rank * dtype_bytes + (in_dim * (dtype_bytes + 1) if lora.dropout > 0 else 0)

    per_token_layer = sum(per_token(in_dim) for in_dim, _ in linear_dims(shape, lora.layer_targets))
    per_token_head = per_token(shape.hidden) if "lm_head" in lora.target_modules else 0
    layers = 1 if grad_checkpointing else shape.layers
    return micro_batch * seq_len * (layers * per_token_layer + per_token_head)


def estimate_memory_lora(shape: ModelShape, lora: LoraSpec, n_gpus: int, n_nodes: int = 1,
                         offload_optimizer: bool = False, offload_params: bool = False,
                         seq_len: int = DEFAULT_MAX_LEN, grad_checkpointing: bool = False, micro_batch: int = 1,
                         dtype_bytes: int = 2, flash_attn: bool = True) -> MemoryEstimate:
    """Per-GPU bytes of LoRA / QLoRA training under ZeRO-3: `lora_model_states_mem` + the base's activations +
    the adapters' (`lora_activation_bytes`) + the loss buffers + the fixed buffer, as for full tuning."""
    if n_gpus < 1 or n_nodes < 1 or n_gpus % n_nodes:
        raise ValueError(f"{n_gpus} GPUs do not split evenly over {n_nodes} nodes")
    cpu, gpu, _, base, adapter = lora_model_states_mem(shape, lora, n_gpus // n_nodes, n_nodes, offload_optimizer,
                                                       offload_params, dtype_bytes)
    adapter_act = lora_activation_bytes(shape, lora, seq_len, grad_checkpointing, micro_batch, dtype_bytes)
    return MemoryEstimate(
        model_states=gpu,
        activations=activation_bytes(shape, seq_len, grad_checkpointing, micro_batch, dtype_bytes, flash_attn)
        + adapter_act,
        logits=micro_batch * seq_len * shape.vocab * LOGITS_BYTES_PER_ELEMENT,
        fixed_buffer=FIXED_BUFFER_BYTES,
        cpu_per_node=cpu,
        largest_layer_params=shape.largest_layer_params,
        frozen_base=base, adapter_states=adapter, adapter_activations=adapter_act,
    )
