"""Training FLOPs and time: what an epoch costs at a given MFU, and the MFU a measured epoch implies.

Takes: a `ModelShape`, tokens per epoch, the row lengths they come in, the checkpointing flag, freeze tuning's
trainable layers or LoRA's adapters (`adapters.LoraSpec`); a GPU and its count.
Gives: `training_flops` -> `FlopCount`, `estimate_time` -> `TimeEstimate` (hours per epoch, GPU-hours),
`implied_mfu` (its inverse) and `read_measured_mfu` (an epoch's metrics.json in this package's FLOP count).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agenttune.cluster.cost.adapters import LoraSpec
from agenttune.cluster.cost.devices import GPU, get_gpu
from agenttune.cluster.cost.shapes import ModelShape
from agenttune.common.config import section_with_defaults

DEFAULT_MFU = 0.20
"""Assumed MFU when no run has been measured yet. The seed's own timings of this exact stack (HF
Trainer + ZeRO-3, micro batch 1, A100) imply 14.5-18.6% with 6·N·T + attention, 19-24.5% if they
checkpointed (see `seed.seed_table`). A preflight that guesses too fast lets jobs die at the partition
time limit, so the default sits in that range rather than at the 35-50% that tuned Megatron-style
runs report. A measured MFU (--metrics) replaces it from the first epoch on."""

# Rows of unknown length count as this long: the schema's tokenize.max_len.
DEFAULT_MAX_LEN = section_with_defaults({}, "tokenize")["max_len"]
MFU_CONVENTION = "agenttune.cost"  # a format tag in metrics.json: the value from before the move into cluster/
"""How metrics.json marks an `mfu` counted with `training_flops` (the training job writes it, preflight reads it)."""

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
                   grad_checkpointing: bool = False, trainable_layers: int | None = None,
                   lora: LoraSpec | None = None) -> FlopCount:
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

    LoRA and QLoRA (`lora`; every decoder layer has adapters, so the backward pass runs down to the first layer):
    the forward is the base's plus the adapters' (2·r·(in + out) per adapted linear and token, A_f in total); the
    backward computes input gradients through every frozen linear and the lm_head (1 × their forward) but weight
    gradients only for the adapters (2 × the adapters' forward, with their input gradients) and for modules_to_save
    (a weight gradient, 1 × forward, for the matrix-multiplied ones; the embedding is a lookup). So
    dense = 4·N_compute·T + 3·A_f·T + 2·N_saved·T: about 2/3 of full tuning's 6·N·T; the attention (no weights)
    runs its full backward in every layer, 3 × its forward as in full tuning; the recompute is one forward of the
    decoder layers with their adapters (an adapter on lm_head counts in A_f, not in the recompute). With adapters on
    lm_head alone the backward would not need to pass the decoder layers; the count keeps them (an upper bound).
    QLoRA's dequantization of the 4-bit weights (elementwise, once per weight per forward and backward, not per
    token) is not counted: it is a few operations per weight per micro batch against 2 per weight per token of the
    matmuls; on hardware it shows as a lower MFU.
    """
    attention_forward = 4 * shape.q_dim * mean_keys_per_token(seq_len) * shape.layers * tokens
    if lora is not None:
        adapter = lora.adapter_forward_flops_per_token(shape)
        dense = (4 * shape.compute_params + 3 * adapter + 2 * lora.saved_linear_params(shape)) * tokens
        layer_adapter = lora.layer_adapter_forward_flops_per_token(shape)  # lm_head is not recomputed
        recompute = ((2 * shape.decoder_params + layer_adapter) * tokens + attention_forward) if grad_checkpointing \
            else 0.0
        return FlopCount(dense=dense, attention=3 * attention_forward, recompute=recompute)
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
                  epochs: float = 1, trainable_layers: int | None = None,
                  lora: LoraSpec | None = None) -> TimeEstimate:
    """time per epoch = training_flops(tokens per epoch) / (n_gpus · peak · mfu)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    flops = training_flops(shape, tokens, seq_len, grad_checkpointing, trainable_layers, lora).total
    return TimeEstimate(flops, n_gpus, get_gpu(gpu), mfu, epochs)


def implied_mfu(shape: ModelShape, tokens: float, hours: float, n_gpus: int, gpu: str | GPU,
                seq_len: SeqLens = DEFAULT_MAX_LEN, grad_checkpointing: bool = False,
                trainable_layers: int | None = None, lora: LoraSpec | None = None) -> float:
    """The MFU at which `tokens` take `hours` on `n_gpus`: the inverse of `estimate_time`. The training
    job should record this (with its own checkpointing flag, and `lora` for LoRA / QLoRA) as `mfu` in metrics.json."""
    flops = training_flops(shape, tokens, seq_len, grad_checkpointing, trainable_layers, lora).total
    return flops / (hours * 3600 * n_gpus * get_gpu(gpu).peak_flops)


def read_measured_mfu(path: str | Path, shape: ModelShape, seq_len: SeqLens = DEFAULT_MAX_LEN,
                      grad_checkpointing: bool = False, lora: LoraSpec | None = None) -> tuple[float, str]:
    """The `mfu` a training epoch recorded in metrics.json, in this module's FLOP count.

    A file marked `"mfu_convention": "agenttune.cost"` is taken as is. Anything else is read as
    agenttune/train/trainer.py writes it today, 6·`parameters`·T / wall / peak (no attention, no recompute),
    and rescaled by training_flops per token / (6·parameters). Returns (mfu, how it was read)."""
    metrics = json.loads(Path(path).read_text())
    mfu = metrics.get("mfu")
    if not isinstance(mfu, (int, float)) or isinstance(mfu, bool) or mfu <= 0:
        raise ValueError(f"{path}: no positive 'mfu' (was device_peak_flops set for that run?)")
    if metrics.get("mfu_convention") == MFU_CONVENTION:
        return float(mfu), f"measured, {path}"
    n_params = metrics.get("parameters") or shape.params
    per_token = training_flops(shape, 1, seq_len, grad_checkpointing, metrics.get("mfu_trainable_layers"), lora).total
    converted = float(mfu) * per_token / (6 * n_params)
    return converted, f"measured, {path}: 6·N·T MFU {mfu:.3f} → {converted:.3f} with attention" + (
        " and recompute" if grad_checkpointing else "")
