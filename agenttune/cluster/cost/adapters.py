"""LoRA and QLoRA (`train.tuning: lora | qlora`): what the adapters add to a Llama-style decoder, and what a 4-bit
base weighs. The FLOP and memory estimates (`flops`, `memory`) and the evaluation sizing read these counts.

Takes: a `ModelShape` and the run config's `train` section (`train.tuning`, `train.lora`).
Gives: `LoraSpec` (`lora_spec(train_cfg)`: None for full and freeze tuning), with the adapter's parameter count
(r·(in + out) per adapted linear, GQA k/v widths from the shape; r·(hidden + vocab) on lm_head), the parameters
`modules_to_save` trains in full, the adapted linears' forward FLOPs per token, the bytes of the frozen base (16-bit,
or NF4/FP4 with its quantization constants), and whether evaluation loads a merged model; `check_target_modules` and
`check_modules_to_save`: the one rule for which `train.lora` names the preflight and the trainer accept (the names
this model can size).

QLoRA's 4-bit base, in bytes (docs/cost.md):
- every nn.Linear inside the decoder layers is quantized (transformers' bitsandbytes integration replaces them all and
  keeps lm_head in 16 bits); the embeddings, lm_head, norms and biases stay at 16 bits;
- 4 bits per weight, plus the blockwise quantization constants: one fp32 absmax per block of 64 weights is
  32/64 = 0.5 bit per weight; with double quantization the absmax values are themselves quantized to 8 bits in
  blocks of 256 with one fp32 constant each, 8/64 + 32/(64·256) = 0.127 bit per weight (Dettmers et al. 2023,
  "QLoRA: Efficient Finetuning of Quantized LLMs", section 3, Double Quantization).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from agenttune.cluster.cost.shapes import ModelShape

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The nn.Linear modules of a Llama / Qwen2 / Mistral decoder layer: what "all-linear" adapts (PEFT's all-linear
skips the output layer, lm_head)."""
TARGET_MODULES = LINEAR_MODULES + ("lm_head",)
"""The `train.lora.target_modules` names the cost model sizes: every nn.Linear of a Llama-style causal LM. The train
stage refuses any other name too (agenttune.train.lora calls `check_target_modules`), so that a run the trainer
accepts is one the preflight can size."""
SAVED_MODULES = LINEAR_MODULES + ("embed_tokens", "lm_head", "norm", "input_layernorm", "post_attention_layernorm")
"""The `train.lora.modules_to_save` names the cost model sizes (the trainer refuses any other, as for targets)."""

QUANT_BLOCK = 64            # bitsandbytes' 4-bit block size (weights per absmax)
DOUBLE_QUANT_BLOCK = 256    # absmax values per second-level fp32 constant
QUANT_CONSTANT_BITS = {
    False: 32 / QUANT_BLOCK,                                        # 0.5 bit per weight
    True: 8 / QUANT_BLOCK + 32 / (QUANT_BLOCK * DOUBLE_QUANT_BLOCK),  # 0.127 bit per weight
}
MERGE_AUTO_MAX_PARAMS = 20_000_000_000
"""train.lora.merge auto: merge LoRA when the base has at most this many parameters (a merged 72B copy is 145 GB per
epoch; config/schema.yaml). The train stage's merge decision reads it from here."""


def check_target_modules(names) -> None:
    """The one rule for explicit `train.lora.target_modules` names, shared by the preflight and the trainer."""
    unknown = [m for m in names if m not in TARGET_MODULES]
    if unknown:
        raise ValueError(f"train.lora.target_modules: {', '.join(unknown)} cannot be sized by the "
                         f"cost model (agenttune.cluster.cost.adapters), so neither the preflight nor the trainer "
                         f"accepts it; the names it sizes are the linear layers of a Llama-style causal LM: "
                         f"{', '.join(TARGET_MODULES)}")


def check_modules_to_save(names) -> None:
    """The one rule for `train.lora.modules_to_save` names, shared by the preflight and the trainer."""
    unknown = [m for m in names if m not in SAVED_MODULES]
    if unknown:
        raise ValueError(f"train.lora.modules_to_save: {', '.join(unknown)} cannot be sized by the "
                         f"cost model (agenttune.cluster.cost.adapters), so neither the preflight nor the trainer "
                         f"accepts it; the modules it sizes are: {', '.join(SAVED_MODULES)}")


@dataclass(frozen=True)
class LoraSpec:
    """What the cost model needs from `train.lora` for `train.tuning` lora or qlora. A field left None takes
    config/schema.yaml's train.lora default (the only place the defaults are written)."""

    method: str = "lora"                                   # lora | qlora
    rank: int | None = None
    target_modules: tuple[str, ...] | None = None          # explicit names (all-linear: LINEAR_MODULES)
    modules_to_save: tuple[str, ...] | None = None
    dropout: float | None = None
    merge: bool | str | None = None                        # auto | True | False
    double_quant: bool | None = None
    quant_type: str | None = None                          # nf4 | fp4: the same 4 bits per weight either way

    def __post_init__(self):
        if self.method not in ("lora", "qlora"):
            raise ValueError(f"train.tuning: {self.method!r} is not lora or qlora")
        if any(getattr(self, f.name) is None for f in fields(self)):
            from agenttune.common.config import section_with_defaults

            for name, value in _spec_fields(section_with_defaults(None, "train", "lora")).items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        check_target_modules(self.target_modules)
        check_modules_to_save(self.modules_to_save)

    @property
    def quantized(self) -> bool:
        return self.method == "qlora"

    def merged(self, shape: ModelShape) -> bool:
        """Does evaluation load a merged 16-bit model (else base + adapter)? auto: LoRA up to 20B, never QLoRA."""
        if self.merge == "auto":
            return self.method == "lora" and shape.params <= MERGE_AUTO_MAX_PARAMS
        return bool(self.merge)

    @property
    def layer_targets(self) -> tuple[str, ...]:
        """The adapted linears inside the decoder layers (target_modules but lm_head)."""
        return tuple(m for m in self.target_modules if m != "lm_head")

    def layer_adapter_params(self, shape: ModelShape) -> int:
        """lora_A (r × in) and lora_B (out × r) of every adapted linear of the decoder layers, no biases (PEFT's
        default lora_bias)."""
        return shape.layers * sum(self.rank * (i + o) for i, o in _linear_dims(shape, self.layer_targets))

    def adapter_params(self, shape: ModelShape) -> int:
        """The decoder layers' adapters, plus r·(hidden + vocab) with an adapter on lm_head."""
        lm_head = self.rank * (shape.hidden + shape.vocab) if "lm_head" in self.target_modules else 0
        return self.layer_adapter_params(shape) + lm_head

    def adapter_forward_flops_per_token(self, shape: ModelShape) -> int:
        """2 FLOPs per multiply-add: x·A (r·in) then ·B (r·out), per adapted linear and token."""
        return 2 * self.adapter_params(shape)

    def layer_adapter_forward_flops_per_token(self, shape: ModelShape) -> int:
        """The part of `adapter_forward_flops_per_token` inside the decoder layers (what checkpointing recomputes)."""
        return 2 * self.layer_adapter_params(shape)

    def saved_params(self, shape: ModelShape) -> int:
        """The parameters `modules_to_save` trains in full (PEFT trains a copy; the original stays, frozen)."""
        return sum(_module_params(shape, m) for m in self.modules_to_save)

    def saved_linear_params(self, shape: ModelShape) -> int:
        """The part of `saved_params` that is matrix-multiplied (every module but the embedding lookup and norms):
        what costs weight-gradient FLOPs."""
        return sum(_module_params(shape, m) for m in self.modules_to_save if m not in (
            "embed_tokens", "norm", "input_layernorm", "post_attention_layernorm"))

    def trainable_params(self, shape: ModelShape) -> int:
        return self.adapter_params(shape) + self.saved_params(shape)

    def base_bytes(self, shape: ModelShape, dtype_bytes: int = 2) -> int:
        """The frozen base: every parameter at `dtype_bytes` (LoRA), or (QLoRA) the decoder layers' linear
        weights at 4 bits + their quantization constants and the rest at 16 bits."""
        if not self.quantized:
            return shape.params * dtype_bytes
        quantized = quantized_params(shape)
        bits = 4 + QUANT_CONSTANT_BITS[self.double_quant]
        return int(quantized * bits / 8) + (shape.params - quantized) * 2

    def describe(self, shape: ModelShape) -> str:
        targets = "all-linear" if self.target_modules == LINEAR_MODULES else ",".join(self.target_modules)
        base = "4-bit base" if self.quantized else "16-bit base"
        saved = f" + {'/'.join(self.modules_to_save)} in full" if self.modules_to_save else ""
        return (f"{self.method} r{self.rank} {targets} ({self.trainable_params(shape):,} trainable parameters, "
                f"{base}{saved})")


def _linear_dims(shape: ModelShape, names) -> list[tuple[int, int]]:
    """(in, out) of the named linears of one decoder layer; k and v are kv_heads·head_dim wide (GQA)."""
    dims = {"q_proj": (shape.hidden, shape.q_dim), "k_proj": (shape.hidden, shape.kv_dim),
            "v_proj": (shape.hidden, shape.kv_dim), "o_proj": (shape.q_dim, shape.hidden),
            "gate_proj": (shape.hidden, shape.intermediate), "up_proj": (shape.hidden, shape.intermediate),
            "down_proj": (shape.intermediate, shape.hidden)}
    return [dims[n] for n in names]


def linear_dims(shape: ModelShape, names=LINEAR_MODULES) -> list[tuple[int, int]]:
    return _linear_dims(shape, names)


def quantized_params(shape: ModelShape) -> int:
    """The weights bitsandbytes stores in 4 bits: the seven linears of every decoder layer (not their biases)."""
    return shape.layers * sum(i * o for i, o in _linear_dims(shape, LINEAR_MODULES))


def _module_params(shape: ModelShape, name: str) -> int:
    if name in ("embed_tokens", "lm_head"):
        return shape.vocab * shape.hidden
    if name == "norm":
        return shape.hidden
    if name in ("input_layernorm", "post_attention_layernorm"):
        return shape.layers * shape.hidden
    (i, o), = _linear_dims(shape, [name])
    bias = {"q_proj": shape.qkv_bias, "k_proj": shape.qkv_bias, "v_proj": shape.qkv_bias, "o_proj": shape.o_bias}
    return shape.layers * (i * o + (o if bias.get(name, shape.mlp_bias) else 0))


def _spec_fields(lora: dict) -> dict:
    """LoraSpec's fields from a `train.lora` section with its defaults filled in."""
    targets = lora["target_modules"]
    return {"rank": int(lora["rank"]), "target_modules": LINEAR_MODULES if targets == "all-linear" else tuple(targets),
            "modules_to_save": tuple(lora["modules_to_save"]), "dropout": float(lora["dropout"]),
            "merge": lora["merge"], "double_quant": bool(lora["double_quant"]), "quant_type": lora["quant_type"]}


def lora_spec(train_cfg: dict | None) -> LoraSpec | None:
    """The LoraSpec of a run config's `train` section (`train.tuning` lora or qlora, `train.lora` with the schema's
    defaults); None for full and freeze tuning."""
    from agenttune.common.config import section_with_defaults

    train_cfg = train_cfg or {}
    method = train_cfg.get("tuning", "full")
    if method not in ("lora", "qlora"):
        return None
    return LoraSpec(method=method, **_spec_fields(section_with_defaults(train_cfg.get("lora"), "train", "lora")))
