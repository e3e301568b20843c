"""Model shapes: the Llama-style decoders the estimates are made for, and their parameter counts.

Takes: a preset name or an HF `config.json` (Llama / Qwen2 / Mistral).
Gives: `ModelShape` (every parameter count the FLOP and memory estimates use), `PRESETS`, `load_shape`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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
    # Qwen/Qwen2.5-7B(-Instruct): 7,615,616,512 parameters ("7.61B"); config/agenttune-7b-lora.yaml's base.
    "qwen2.5-7b": ModelShape("qwen2.5-7b", layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4,
                             vocab=152064, qkv_bias=True),
    # meta-llama/Llama-3.1-70B(-Instruct): 70,553,706,496 parameters ("70.6B"); config/agenttune-70b-qlora.yaml's base.
    "llama3.1-70b": ModelShape("llama3.1-70b", layers=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8,
                               vocab=128256),
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
