"""Train stage, what an epoch folder holds and how to load it: the one place evaluation, serving and the report ask.

An epoch folder of full or freeze tuning is an HF model folder. An epoch of lora/qlora tuning (agenttune.train.lora)
holds the adapter (adapter_model.safetensors + adapter_config.json, PEFT's format), `lora.json` (settings, the base
folder) and, when merged, `merged/`: the base with the adapter merged in, an HF model folder.

`resolve_model(folder)` says which: `model` (load the folder), `merged` (load `merged/`) or `adapter` (load the base,
then the adapter). `load_model(folder, **from_pretrained_kwargs)` loads it. An unmerged LoRA adapter is merged into
the base in memory after loading (same weights as `merged/` in fp32, up to rounding in bf16; no extra matmuls per
token); a QLoRA adapter stays on its 4-bit base, the model that was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agenttune.train.lora import ADAPTER_CONFIG, MERGED_DIR, RECORD_NAME


@dataclass(frozen=True)
class ModelSource:
    """Where the weights of a model folder come from."""
    folder: Path  # what was asked for (an epoch folder, a base model folder)
    kind: str  # "model", "merged" or "adapter"
    weights_dir: Path  # the HF folder loaded with from_pretrained: the folder, its merged/, or the adapter's base
    adapter_dir: Path | None = None
    tuning: str | None = None  # full/freeze (model) or lora/qlora
    lora: dict | None = None  # the epoch's lora.json

    def describe(self) -> dict:
        """For predict.json / general.json `run`: how the weights were made up (nothing to add for a plain model
        folder, whose records stay as they were)."""
        if self.kind == "model":
            return {}
        info = {"weights": self.kind}
        if self.tuning:
            info["tuning"] = self.tuning
        if self.kind == "adapter":
            info["base_model"] = str(self.weights_dir)
            info["adapter"] = str(self.adapter_dir)
            info["adapter_merged_in_memory"] = self.tuning != "qlora"
        if self.kind == "merged":
            info["merged_dir"] = str(self.weights_dir)
        return info


def _base_of(folder: Path, record: dict | None) -> Path:
    """The base model folder of an adapter: lora.json's path relative to the folder, then its absolute path, then
    adapter_config.json's base_model_name_or_path; the first that exists."""
    candidates = []
    if record:
        candidates += [folder / record["base_model_relative"], Path(record["base_model"])]
    adapter_cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    if adapter_cfg.get("base_model_name_or_path"):
        candidates.append(Path(adapter_cfg["base_model_name_or_path"]))
    for c in candidates:
        if (c / "config.json").is_file():
            return c.resolve()
    raise FileNotFoundError(f"{folder}: the adapter's base model folder is not there (looked for "
                            f"{', '.join(str(c) for c in candidates) or 'nothing: no base recorded'})")


def resolve_model(folder) -> ModelSource:
    """What loading `folder` means (module docstring)."""
    folder = Path(folder)
    record_path = folder / RECORD_NAME
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if not (folder / ADAPTER_CONFIG).is_file():
        tuning = None
        info = folder / "metrics.json"
        if info.is_file():
            tuning = json.loads(info.read_text()).get("tuning")
        return ModelSource(folder, "model", folder, tuning=tuning)
    tuning = record["tuning"] if record else "lora"
    merged = folder / MERGED_DIR
    if record and record.get("merged") and (merged / "config.json").is_file():
        return ModelSource(folder, "merged", merged, folder, tuning, record)
    return ModelSource(folder, "adapter", _base_of(folder, record), folder, tuning, record)


def load_model(folder, log=print, **from_pretrained_kwargs):
    """(the causal LM of `folder`, its ModelSource). `from_pretrained_kwargs` (dtype, attn_implementation,
    device_map) apply to the weights folder."""
    from transformers import AutoModelForCausalLM

    source = resolve_model(folder)
    if source.kind != "adapter":
        return AutoModelForCausalLM.from_pretrained(source.weights_dir, **from_pretrained_kwargs), source
    from peft import PeftModel

    kwargs = dict(from_pretrained_kwargs)
    if source.tuning == "qlora":
        from agenttune.train.lora import quantization_config

        quant = source.lora["quantization"]
        kwargs["quantization_config"] = quantization_config({"quant_type": quant["quant_type"],
                                                             "double_quant": quant["double_quant"]})
        kwargs.setdefault("device_map", {"": 0})  # bitsandbytes places the 4-bit weights itself
    base = AutoModelForCausalLM.from_pretrained(source.weights_dir, **kwargs)
    model = PeftModel.from_pretrained(base, str(source.adapter_dir))
    if source.tuning == "qlora":
        log(f"{folder}: 4-bit base {source.weights_dir} + QLoRA adapter (not merged: the model that was trained)")
        return model, source
    log(f"{folder}: base {source.weights_dir} + LoRA adapter, merged in memory")
    return model.merge_and_unload(), source
