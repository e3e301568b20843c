"""DeepSpeed ZeRO-3 for the train stage: the config generated from the run config, resume checks, and the export of
a ZeRO checkpoint to plain safetensors.

Takes: the `train` section of the run config (its `deepspeed` block: stage, offload flags), the model's hidden size,
and whether the job runs on GPUs.
Gives: the DeepSpeed config dict that the HF Trainer receives (each epoch folder keeps a copy as
`deepspeed_config.json`); checks that a checkpoint can be resumed by this job; a plain `model.safetensors` rebuilt from
the ZeRO shards when a folder lacks one (`python -m agenttune.train.deepspeed export FOLDER`).

The optimizer and LR scheduler stay the HF Trainer's (torch AdamW), so a ZeRO run and a plain run follow the same
update rule, except with optimizer offload, where DeepSpeed's CPU Adam does the step (torch's AdamW over offloaded
fp32 partitions would be several times slower). This module imports DeepSpeed only where it needs it: building a
config works without it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from agenttune.common.config import section_with_defaults

CONFIG_NAME = "deepspeed_config.json"

# HF's "auto" rules for ZeRO-3 buckets, in elements: reduce h², prefetch 0.9·h², params below 10·h stay unpartitioned.
# For h = 4096 (7B) that is 16.8M / 15.1M / 41k; for h = 8192 (72B) 67.1M / 60.4M / 82k: a few hundred MB per bucket
# in bf16, large enough to keep NCCL busy, small enough next to the per-GPU model states.
REDUCE_BUCKET_PER_H2 = 1.0
PREFETCH_BUCKET_PER_H2 = 0.9
PERSISTENCE_PER_H = 10


def zero3_config(train_cfg: dict, hidden_size: int, on_gpu: bool) -> dict:
    """The DeepSpeed config of a training job, from the run config's `train` section.

    bf16 when `precision: bf16` and the job has GPUs, fp32 otherwise (bf16 on this kind of CPU is ~20x slower and the
    Trainer refuses it with DeepSpeed). The 16-bit weights are gathered on save so that every epoch folder holds a
    full `model.safetensors`. Values the Trainer also knows (micro batch, accumulation, clipping, precision) are
    written out, not "auto", so that the file is a complete record of the job; the Trainer checks they agree.
    """
    train_cfg = section_with_defaults(train_cfg, "train")
    ds = section_with_defaults(train_cfg.get("deepspeed"), "train", "deepspeed")
    stage = ds["stage"]
    if stage != 3:
        raise ValueError(f"train.deepspeed.stage: only ZeRO stage 3 is supported, got {stage!r}")
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be positive, got {hidden_size}")
    offload_optimizer = bool(ds["offload_optimizer"])
    offload_params = bool(ds["offload_params"])
    if offload_params and not offload_optimizer:
        # DeepSpeed's memory estimator (and agenttune.cluster.cost) count parameter offload only with optimizer offload.
        raise ValueError("train.deepspeed.offload_params needs offload_optimizer: true as well")
    h2 = hidden_size * hidden_size
    zero = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": int(REDUCE_BUCKET_PER_H2 * h2),
        "stage3_prefetch_bucket_size": int(PREFETCH_BUCKET_PER_H2 * h2),
        "stage3_param_persistence_threshold": PERSISTENCE_PER_H * hidden_size,
        "stage3_max_live_parameters": 10**9,
        "stage3_max_reuse_distance": 10**9,
        "sub_group_size": 10**9,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config = {
        "train_micro_batch_size_per_gpu": int(train_cfg["batch_size"]),
        "gradient_accumulation_steps": int(train_cfg["grad_accum"]),
        "gradient_clipping": float(train_cfg["max_grad_norm"]),
        "bf16": {"enabled": bool(on_gpu and train_cfg.get("precision") == "bf16")},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the Trainer logs every step already
        "wall_clock_breakdown": False,
    }
    if offload_optimizer:
        # Same hyper-parameters as the Trainer's torch AdamW (betas and eps are its defaults).
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": float(train_cfg["learning_rate"]), "betas": [0.9, 0.999], "eps": 1e-8,
            "weight_decay": float(train_cfg["weight_decay"])}}
    return config


def validate_with_deepspeed(config: dict) -> None:
    """Parse the ZeRO block with DeepSpeed's own pydantic model (unknown keys are errors there)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    DeepSpeedZeroConfig(**config["zero_optimization"])


# --------------------------------------------------------------------------- checkpoints

_RANK_FILE = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_\d+_model_states\.pt$")


def zero_checkpoint_dir(folder: str | Path) -> Path | None:
    """The ZeRO checkpoint inside an epoch folder (`<folder>/<tag>` named by the `latest` file), or None."""
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        return None
    tag_dir = folder / latest.read_text().strip()
    if not tag_dir.is_dir():
        raise ValueError(f"{latest} names {tag_dir.name!r}, which is not a folder in {folder}")
    return tag_dir


def zero_checkpoint_world_size(folder: str | Path) -> int | None:
    """How many data-parallel ranks wrote the ZeRO checkpoint in `folder` (None when it holds none)."""
    tag_dir = zero_checkpoint_dir(folder)
    if tag_dir is None:
        return None
    ranks = {int(m.group(1)) for p in tag_dir.iterdir() if (m := _RANK_FILE.match(p.name))}
    if not ranks:
        raise ValueError(f"{tag_dir}: no zero_pp_rank_*_model_states.pt files")
    return max(ranks) + 1


def check_resumable(folder: str | Path, use_deepspeed: bool, world_size: int) -> None:
    """Refuse a resume that the HF Trainer would do silently wrong.

    A plain checkpoint resumed under ZeRO (or the reverse) would start a fresh optimizer without a word, and a ZeRO
    checkpoint's optimizer shards only load on the world size that wrote them.
    """
    folder = Path(folder)
    ranks = zero_checkpoint_world_size(folder)
    if use_deepspeed and ranks is None:
        raise ValueError(f"{folder} was saved without DeepSpeed (no 'latest' / ZeRO shards) but train.deepspeed is "
                         "set: the optimizer state could not be resumed. Train every epoch of a run the same way.")
    if not use_deepspeed and ranks is not None:
        raise ValueError(f"{folder} holds a DeepSpeed ZeRO checkpoint but train.deepspeed is not set: the optimizer "
                         "state could not be resumed. Train every epoch of a run the same way.")
    if ranks is not None and ranks != world_size:
        raise ValueError(f"{folder} was saved by {ranks} ZeRO rank(s) but this job has {world_size}: ZeRO optimizer "
                         "shards only load on the world size that wrote them (keep train.nodes and "
                         "train.nproc_per_node for the whole run).")
    if not use_deepspeed and not (folder / "optimizer.pt").is_file():
        raise ValueError(f"{folder} has no optimizer.pt: not a resumable epoch folder")


def export_zero_checkpoint(folder: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write plain HF weights (`model.safetensors`, fp32) consolidated from the ZeRO shards in `folder`.

    DeepSpeed's `zero_to_fp32` merges the fp32 master partitions of every rank; the result is loaded into the model
    built from `config.json` on the meta device (no second copy in memory) and saved with `save_pretrained`, which
    handles tied embeddings and sharding of large models. `out_dir` defaults to `folder` itself.
    """
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    out_dir = Path(out_dir) if out_dir else folder
    if zero_checkpoint_dir(folder) is None:
        raise ValueError(f"{folder}: no DeepSpeed checkpoint ('latest' file) to export")
    state = get_fp32_state_dict_from_zero_checkpoint(str(folder))
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{folder}: ZeRO state does not match config.json (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    if tied:
        model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def has_plain_weights(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agenttune.train.deepspeed",
                                 description="Write plain fp32 safetensors from a ZeRO checkpoint folder.")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="consolidate the ZeRO shards of FOLDER into model.safetensors")
    ex.add_argument("folder")
    ex.add_argument("--out", help="write here instead of into FOLDER (config and tokenizer are not copied)")
    args = ap.parse_args(argv)
    try:
        out = export_zero_checkpoint(args.folder, args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
