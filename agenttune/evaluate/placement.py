"""Evaluate stage, model placement: where and in which dtype an evaluation job holds the model it evaluates.

Takes: a model folder, `evaluate.precision` and `evaluate.attn_implementation`. Gives: the model in eval mode, on
the job's devices, and a record of how it ran (`run_info`: engine, dtype, attention implementation, devices) that
predict.json, general.json and the report carry beside every number.

- CPU: fp32 (bf16 matmuls on this kind of CPU are ~20x slower; the notes), one device.
- One GPU: the model's weights on it, in bf16 when `precision: bf16` (the paper configs), else fp32.
- Several GPUs (a job given N GPUs sees N): the layers spread over all of them with accelerate's
  `device_map="auto"` (each GPU holds a contiguous run of layers; one forward visits them in turn), so a model too
  big for one GPU (72B in bf16 is ~145 GB) still loads. Throughput is one GPU's at a time: for 72B the `server`
  engine (vLLM, tensor parallel) is the fast choice (docs/evaluation.md).
Prediction (the `hf` engine) and general-loss share this placement, so both numbers of a model come from the same
weights in the same dtype.
"""

from __future__ import annotations

import torch


def evaluation_dtype(precision: str) -> torch.dtype:
    """bf16 only on a GPU; fp32 everywhere else."""
    return torch.bfloat16 if (precision == "bf16" and torch.cuda.is_available()) else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def load_placed_model(model_dir, precision: str, attn_implementation: str, log=print,
                      key: str = "evaluate.attn_implementation"):
    """The causal LM of `model_dir` placed as the module docstring says, in eval mode. `attn_implementation`
    is a transformers name (or a registered custom one); `auto` and an explicit `flash_attention_2` go through the
    same choice as training (an explicit flash_attention_2 that cannot run is an error naming `key`)."""
    from agenttune.train.checkpoint import load_model
    from agenttune.train.trainer import pick_attn_implementation

    dtype = evaluation_dtype(precision)
    if attn_implementation in ("auto", "flash_attention_2"):
        attn_implementation = pick_attn_implementation(attn_implementation, log, dtype != torch.float32, key=key)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if gpus > 1:
        kwargs["device_map"] = "auto"
    # An epoch of lora/qlora tuning loads as base + adapter, or its merged folder (agenttune.train.checkpoint).
    model, source = load_model(model_dir, log, **kwargs)
    model._agenttune_weights = source.describe()
    if gpus <= 1 and not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit base is placed by bitsandbytes
        model = model.to("cuda" if gpus else "cpu")
    model.eval()
    log(f"model {model_dir}: {dtype_name(dtype)}, attention {attn_implementation}, on {', '.join(devices(model))}")
    return model


def devices(model) -> list[str]:
    """The devices holding the model's parameters, in order of first use."""
    seen: list[str] = []
    for p in model.parameters():
        d = str(p.device)
        if d not in seen:
            seen.append(d)
    return seen


def run_info(model, engine: str) -> dict:
    """How a number was produced: engine, dtype, attention implementation, devices (with the GPU's name)."""
    info = {"engine": engine, "dtype": dtype_name(next(model.parameters()).dtype),
            "attn_implementation": model.config._attn_implementation, "devices": devices(model)}
    info.update(getattr(model, "_agenttune_weights", None) or {})  # adapter or merged (lora/qlora epochs)
    cuda = [d for d in info["devices"] if d.startswith("cuda")]
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(torch.device(cuda[0]))
    return info
