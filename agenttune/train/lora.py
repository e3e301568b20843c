"""Train stage, parameter-efficient tuning: LoRA and QLoRA through PEFT (`train.tuning: lora | qlora`, `train.lora`).

Takes: the loaded base model and the `train` config. Gives: the model wrapped in PEFT LoRA adapters (qlora: on a
base loaded in 4 bits by bitsandbytes), the checks that refuse a bad `train.lora` before any training step, the
merge decision, the merged full model of an epoch, and the record (`lora.json` in the epoch folder) that
agenttune.train.checkpoint reads to load base + adapter for evaluation and serving.

`target_modules: all-linear` is resolved here into explicit names (the leaf names of every nn.Linear inside the
decoder layers, not lm_head), so that the adapter config an epoch folder keeps says which layers were adapted. An
explicit target or modules_to_save name must exist in the model AND be one the cost model sizes
(agenttune.cluster.cost.adapters.check_target_modules / check_modules_to_save: the preflight's own rule), so that the
trainer and the preflight accept the same runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from agenttune.cluster.cost import adapters as cost_adapters
from agenttune.common.manifest import write_json_atomic

PEFT_TUNINGS = ("lora", "qlora")
RECORD_NAME = "lora.json"  # in an epoch folder: tuning, settings, base model path, merged or not
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = "merged"


def parameter_count(model) -> int:
    """The model's parameters, each counted once at its full size: under zero.Init a parameter's numel() is its
    local partition (ds_numel is the full size), and a 4-bit bitsandbytes parameter packs 8 / 4 = 2 values per byte
    of its storage dtype (uint8: 2 per element; bf16 storage, used under ZeRO-3: 4 per element)."""
    total = 0
    for p in model.parameters():
        values = getattr(p, "ds_numel", p.numel())
        if getattr(p, "quant_state", None) is not None:
            values *= 2 * p.element_size()
        total += values
    return total


def is_peft(cfg: dict) -> bool:
    return cfg.get("tuning") in PEFT_TUNINGS


def decoder_layers(model):
    """The decoder layers (nn.ModuleList) of a causal LM: `model.model.layers` for Llama, Qwen2 and Mistral."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"train.lora.target_modules: cannot find the decoder layers of {type(model).__name__} "
                         "(expected model.model.layers)")
    return layers


def linear_module_names(model) -> list[str]:
    """The leaf names of the nn.Linear modules inside the decoder layers (bitsandbytes' Linear4bit is one too), in
    the order of their first appearance."""
    names: list[str] = []
    for full_name, module in decoder_layers(model).named_modules():
        if isinstance(module, torch.nn.Linear):
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def all_linear_names(model) -> list[str]:
    """Leaf names of every nn.Linear in the model (lm_head included): what an explicit target list may name."""
    names: list[str] = []
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and full_name:
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def resolve_target_modules(model, setting) -> list[str]:
    """`train.lora.target_modules` as explicit module names; a name that is no linear module of the model is an
    error naming the key, the missing name and the model's linear module names."""
    if setting == "all-linear":
        names = linear_module_names(model)
        if not names:
            raise ValueError(f"train.lora.target_modules: all-linear found no nn.Linear inside the decoder layers of "
                             f"{type(model).__name__}")
        return names
    available = all_linear_names(model)
    missing = [name for name in setting if name not in available]
    if missing:
        raise ValueError(f"train.lora.target_modules: {', '.join(repr(m) for m in missing)} is not a linear module "
                         f"of {type(model).__name__}; its linear modules are: {', '.join(available)}")
    cost_adapters.check_target_modules(setting)
    return list(setting)


def check_modules_to_save(model, names: list[str]) -> None:
    """Each `train.lora.modules_to_save` name must be a module of the model (matched on the last name part) and one
    the cost model sizes."""
    leaves = {full.rsplit(".", 1)[-1] for full, _ in model.named_modules() if full}
    missing = [n for n in names if n not in leaves]
    if missing:
        raise ValueError(f"train.lora.modules_to_save: {', '.join(repr(m) for m in missing)} is not a module of "
                         f"{type(model).__name__} (e.g. embed_tokens, lm_head)")
    cost_adapters.check_modules_to_save(names)


def resolve_modules_to_save(model, names: list[str]) -> list[str]:
    """The full names of the modules whose last name part is one of `names`: what PEFT is given. PEFT matches its
    modules_to_save as name suffixes, so a bare `norm` would also train every `input_layernorm` and
    `post_attention_layernorm`; the full names train exactly the named modules, as the cost model counts them."""
    return [full for full, _ in model.named_modules() if full and full.rsplit(".", 1)[-1] in names]


def check_config(cfg: dict, log=print) -> None:
    """What can be refused from the config alone, before any model is loaded. `cfg`: the train section with
    defaults."""
    tuning = cfg["tuning"]
    if not is_peft(cfg):
        return
    if tuning == "qlora":
        problems = []
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            problems.append("bitsandbytes is not installed")
        if not torch.cuda.is_available():
            problems.append("this job has no CUDA device")
        if problems:
            raise ValueError(f"train.tuning: qlora loads the base in 4 bits with bitsandbytes on a GPU (GPU envs only: "
                             f"envs/train-gpu.yaml), but {' and '.join(problems)}; use tuning: lora here")
    if cfg.get("freeze_trainable_layers") is not None:
        # The default config sets it for its freeze tuning; switching that config to lora must not fail on it.
        log(f"train.freeze_trainable_layers is ignored with tuning: {tuning} (the base is frozen, the adapters train)")


def check_resume(folder, cfg: dict) -> None:
    """A checkpoint resumes only under the tuning and the `train.lora` settings that wrote it: the Trainer would load
    a full model's weights into an adapter model (or the reverse) without an error and train from the wrong start,
    and PEFT loads an adapter of another rank or other modules with a warning or fails deep inside. Compared here
    from the previous epoch's lora.json: rank, alpha, dropout, modules_to_save and (qlora) the quantization;
    target_modules once the model is built (`check_resume_targets`: all-linear resolves on the model)."""
    has_adapter = (Path(folder) / ADAPTER_WEIGHTS).is_file()
    if has_adapter != is_peft(cfg):
        written = "an adapter (lora/qlora)" if has_adapter else "full model weights (full/freeze)"
        raise ValueError(f"train.tuning: {cfg['tuning']}, but {folder} holds {written}: every epoch of a run must be "
                         "trained with the same tuning")
    if not has_adapter:
        return
    record_path = Path(folder) / RECORD_NAME
    if not record_path.is_file():
        raise ValueError(f"train.tuning: {cfg['tuning']}, but {folder} holds an adapter without its {RECORD_NAME}: "
                         "its settings cannot be checked against train.lora (not an epoch folder of this trainer?)")
    before = json.loads(record_path.read_text())
    if before["tuning"] != cfg["tuning"]:
        raise ValueError(f"train.tuning: {cfg['tuning']}, but {folder} was trained with {before['tuning']}: every "
                         "epoch of a run must be trained with the same tuning")
    now = _resume_settings(cfg["tuning"], cfg["lora"])
    was = _resume_settings(before["tuning"], {**before, **before.get("quantization", {})})
    for key, value in now.items():
        if was[key] != value:
            raise ValueError(f"train.lora.{key}: {folder} was trained with {was[key]!r}, now {value!r}: every epoch "
                             "of a run must be trained with the same train.lora settings")


def _resume_settings(tuning: str, lora_cfg: dict) -> dict:
    """The `train.lora` settings an adapter's training depends on, in comparable form (merge is not one of them:
    it only decides what is written after training)."""
    settings = {"rank": int(lora_cfg["rank"]), "alpha": float(lora_cfg["alpha"]),
                "dropout": float(lora_cfg["dropout"]), "modules_to_save": sorted(lora_cfg["modules_to_save"])}
    if tuning == "qlora":
        settings |= {"quant_type": lora_cfg["quant_type"], "double_quant": bool(lora_cfg["double_quant"])}
    return settings


def check_resume_targets(folder, target_modules: list[str]) -> None:
    """The adapted modules of the model about to train (target_modules resolved) against the previous epoch's."""
    before = json.loads((Path(folder) / RECORD_NAME).read_text())["target_modules"]
    if sorted(before) != sorted(target_modules):
        raise ValueError(f"train.lora.target_modules: {folder} was trained with adapters on {sorted(before)}, now "
                         f"on {sorted(target_modules)}: every epoch of a run must be trained with the same "
                         "train.lora settings")


def merge_decision(tuning: str, merge, n_params: int) -> tuple[bool, str]:
    """(write the merged model?, why): `train.lora.merge` auto merges lora of at most
    agenttune.cluster.cost.adapters.MERGE_AUTO_MAX_PARAMS (20B) parameters, never qlora."""
    if merge is True:
        if tuning == "qlora":
            return True, ("train.lora.merge: true with qlora: the merged model is the adapter added to the 16-bit base; "
                          "it is NOT the 4-bit model that was trained, and its outputs differ from it")
        return True, "train.lora.merge: true"
    if merge is False:
        return False, "train.lora.merge: false"
    if tuning == "qlora":
        return False, ("train.lora.merge: auto does not merge qlora (a 16-bit merge is not the 4-bit model that was "
                       "trained); evaluation loads the 4-bit base + adapter")
    limit = cost_adapters.MERGE_AUTO_MAX_PARAMS
    if n_params > limit:
        return False, (f"train.lora.merge: auto does not merge a base of {n_params / 1e9:.1f}B parameters (more than "
                       f"{limit / 1e9:.0f}B: a merged copy per epoch costs {n_params * 2 / 1e9:.0f} GB in bf16); "
                       "evaluation loads base + adapter")
    return True, (f"train.lora.merge: auto merges a base of {n_params / 1e9:.3g}B parameters (at most "
                  f"{limit / 1e9:.0f}B)")


def quantization_config(lora_cfg: dict, use_deepspeed: bool = False):
    """bitsandbytes 4-bit loading of the frozen base for qlora: the configured data type and double quantisation,
    bf16 compute. Under ZeRO-3 the packed 4-bit weights are stored as bf16 so that DeepSpeed can partition them."""
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": torch.bfloat16} if use_deepspeed else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=lora_cfg["quant_type"],
                              bnb_4bit_use_double_quant=bool(lora_cfg["double_quant"]),
                              bnb_4bit_compute_dtype=torch.bfloat16, **extra)


def lora_config(model, lora_cfg: dict):
    """PEFT's LoraConfig for `model` from `train.lora` (target modules resolved to explicit names, checked)."""
    from peft import LoraConfig

    targets = resolve_target_modules(model, lora_cfg["target_modules"])
    check_modules_to_save(model, list(lora_cfg["modules_to_save"]))
    saved = resolve_modules_to_save(model, list(lora_cfg["modules_to_save"]))
    return LoraConfig(r=int(lora_cfg["rank"]), lora_alpha=lora_cfg["alpha"], lora_dropout=float(lora_cfg["dropout"]),
                      target_modules=targets, modules_to_save=saved or None, bias="none", task_type="CAUSAL_LM")


def apply_lora(model, cfg: dict, base_model_dir, seed: int, gradient_checkpointing: bool, log=print,
               sharded: bool = False):
    """Wrap `model` (already loaded; for qlora in 4 bits) in LoRA adapters. The adapters' initial values come from
    `seed` (chained and uninterrupted runs start from the same adapters). The adapter config records the base
    folder as an absolute path, so that transformers' own loading of an epoch folder finds the base.

    `sharded` (ZeRO-3): a 4-bit base is not passed through prepare_model_for_kbit_training, which would cast its
    16-bit parameters to fp32 beside ZeRO's bf16 partitions (TRL's SFTTrainer skips it for sharded QLoRA too)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    lora_cfg = cfg["lora"]
    config = lora_config(model, lora_cfg)
    if cfg["tuning"] == "qlora" and not sharded:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # The frozen embeddings give no grad to the inputs; checkpointed layers then would give no grad at all.
        model.enable_input_require_grads()
    model.name_or_path = str(Path(base_model_dir).resolve())
    torch.manual_seed(seed)
    model = get_peft_model(model, config)
    log(f"{cfg['tuning']}: rank {config.r}, alpha {config.lora_alpha}, dropout {config.lora_dropout}, target modules "
        f"{', '.join(sorted(config.target_modules))}"
        + (f", modules to save {', '.join(lora_cfg['modules_to_save'])} ({len(config.modules_to_save)} modules)"
           if config.modules_to_save else ""))
    return model


def record(cfg: dict, target_modules: list[str], base_model_dir, n_trainable: int, merged: bool, merge_reason: str,
           epoch_dir) -> dict:
    """The epoch folder's account of its adapter (also in metrics.json under `lora`)."""
    base = Path(base_model_dir).resolve()
    lora_cfg = cfg["lora"]
    entry = {
        "tuning": cfg["tuning"],
        "rank": int(lora_cfg["rank"]), "alpha": lora_cfg["alpha"], "dropout": float(lora_cfg["dropout"]),
        "target_modules": list(target_modules), "modules_to_save": list(lora_cfg["modules_to_save"]),
        "merge_setting": lora_cfg["merge"], "merged": merged, "merge_reason": merge_reason,
        "trainable_parameters": n_trainable,
        "adapter": ADAPTER_WEIGHTS,
        "merged_dir": MERGED_DIR if merged else None,
        "base_model": str(base),
        # Relative to the epoch folder: survives moving the results tree with its models folder.
        "base_model_relative": os.path.relpath(base, Path(epoch_dir).resolve()),
    }
    if cfg["tuning"] == "qlora":
        entry["quantization"] = {"bits": 4, "quant_type": lora_cfg["quant_type"],
                                 "double_quant": bool(lora_cfg["double_quant"]), "compute_dtype": "bf16"}
    return entry


def write_record(folder, entry: dict) -> None:
    write_json_atomic(Path(folder) / RECORD_NAME, entry)


def merge_adapter_into_base(base_model_dir, adapter_dir, out_dir, tokenizer, log=print) -> Path:
    """Write base + adapter merged into one HF-loadable folder (`out_dir`, with the tokenizer), in the base's dtype.
    The merge is done in fp32 (the adapter update is added before rounding to the base dtype)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    base_dtype = getattr(AutoConfig.from_pretrained(base_model_dir), "dtype", None) or torch.float32
    if isinstance(base_dtype, str):
        base_dtype = getattr(torch, base_dtype)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(base_dtype)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    log(f"merged the adapter into the base: {out_dir} ({str(base_dtype).removeprefix('torch.')})")
    return out_dir
