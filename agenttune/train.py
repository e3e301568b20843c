"""Train stage: one epoch per call, resuming the previous epoch's checkpoint exactly.

Takes: the base model folder, the train shards, the previous epoch's folder (none for epoch 1) and the train config.
Gives: `epoch-<e>/`: an HF-loadable folder (model.safetensors, config, tokenizer) that also holds the Trainer state
needed to resume (optimizer, scheduler, RNG, trainer_state.json) and `metrics.json`.

The LR schedule always spans `train.epochs` epochs, so epoch e of a chained run equals epoch e of an uninterrupted
run. The epoch is written to `<out>.partial` first and renamed when complete: a killed job leaves nothing that
looks finished.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from agenttune.tokenize import IGNORE_INDEX, load_shards


class TokenizedDataset(Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class PadCollator:
    """Right-pads a batch; padding is masked out of attention and of the loss."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def freeze_lower_layers(model, trainable_layers: int) -> int:
    """LLaMA-Factory's "freeze" tuning: train only the top `trainable_layers` decoder layers and the final norm.
    Cuts the backward pass on small hardware. Returns the number of trainable parameters."""
    layers = model.model.layers
    n_frozen = max(0, len(layers) - trainable_layers)
    for p in model.parameters():
        p.requires_grad = False
    for layer in layers[n_frozen:]:
        for p in layer.parameters():
            p.requires_grad = True
    for p in model.model.norm.parameters():
        p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pick_attn_implementation(requested: str, log) -> str:
    """flash_attention_2 when the package imports (GPU nodes), else sdpa; the choice is logged."""
    if requested in ("auto", "flash_attention_2"):
        try:
            import flash_attn  # noqa: F401

            if torch.cuda.is_available():
                log("attention: flash_attention_2 (flash-attn installed, CUDA present)")
                return "flash_attention_2"
            log("attention: sdpa (flash-attn installed but no CUDA device)")
        except ImportError:
            log("attention: sdpa (flash-attn not installed)")
        return "sdpa"
    log(f"attention: {requested} (from config)")
    return requested


def _stop_after_epoch_callback(epoch: int):
    from transformers import TrainerCallback

    class StopAfterEpoch(TrainerCallback):
        """Ends the process after `epoch`; the epoch-end checkpoint is still saved (save_strategy='epoch')."""

        def on_epoch_end(self, args, state, control, **kwargs):
            if state.epoch is not None and state.epoch >= epoch - 1e-9:
                control.should_training_stop = True
            return control

    return StopAfterEpoch()


def train_epoch(base_model_dir: str | Path, shard_paths: list[str | Path], prev_epoch_dir: str | Path | None,
                out_dir: str | Path, epoch: int, cfg: dict, seed: int, log=print) -> dict:
    """Train epoch `epoch` (1-based), resuming `prev_epoch_dir` for epoch > 1; write `out_dir`."""
    if epoch > 1 and prev_epoch_dir is None:
        raise ValueError(f"epoch {epoch} needs the checkpoint of epoch {epoch - 1}")
    if epoch == 1 and prev_epoch_dir is not None:
        raise ValueError("epoch 1 starts from the base model, not from a checkpoint")
    return run_training(base_model_dir, shard_paths, prev_epoch_dir, out_dir, epoch, cfg, seed, log)


def run_training(base_model_dir: str | Path, shard_paths: list[str | Path], resume_from: str | Path | None,
                 out_dir: str | Path, until_epoch: int, cfg: dict, seed: int, log=print) -> dict:
    """Train from `resume_from` (or from scratch) until the end of `until_epoch`; move that checkpoint to out_dir.
    The per-epoch job and an uninterrupted multi-epoch run both come through here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    epoch = until_epoch
    out_dir = Path(out_dir)
    work_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(work_dir, ignore_errors=True)  # leftovers of a killed job are never trusted

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if (cfg.get("precision") == "bf16" and on_gpu) else torch.float32
    attn = pick_attn_implementation(cfg.get("attn_implementation", "auto"), log)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype, attn_implementation=attn)
    n_params = sum(p.numel() for p in model.parameters())
    if cfg.get("tuning", "full") == "freeze":
        n_trainable = freeze_lower_layers(model, cfg["freeze_trainable_layers"])
    else:
        n_trainable = n_params
    log(f"model: {n_params:,} parameters, {n_trainable:,} trainable ({cfg.get('tuning', 'full')} tuning), {dtype}")

    rows = load_shards(shard_paths)
    rows.sort(key=lambda r: r["id"])  # shard order must not change the data order
    dataset = TokenizedDataset(rows)
    epoch_tokens = sum(len(r["input_ids"]) for r in rows)
    trained_tokens = sum(sum(1 for l in r["labels"] if l != IGNORE_INDEX) for r in rows)

    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["grad_accum"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=cfg["warmup_ratio"],
        weight_decay=cfg["weight_decay"],
        max_grad_norm=cfg.get("max_grad_norm", 1.0),
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="epoch",
        seed=seed,
        data_seed=seed,
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        bf16=dtype == torch.bfloat16,
        activation_checkpointing=cfg.get("gradient_checkpointing", False),
        deepspeed=cfg.get("deepspeed_config"),
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[_stop_after_epoch_callback(epoch)],
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    wall = time.perf_counter() - start

    checkpoints = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise RuntimeError(f"training epoch {epoch} saved no checkpoint in {work_dir}")
    ckpt = checkpoints[-1]
    state = trainer.state
    epoch_logs = [r for r in state.log_history if "loss" in r and epoch - 1 < r.get("epoch", 0) <= epoch + 1e-9]
    peak_flops = cfg.get("device_peak_flops") or 0
    if on_gpu:
        peak_mem = torch.cuda.max_memory_allocated()
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    metrics = {
        "epoch": epoch,
        "global_step": state.global_step,
        "loss_curve": [{"step": r["step"], "loss": r["loss"], "learning_rate": r.get("learning_rate")} for r in epoch_logs],
        "mean_loss": sum(r["loss"] for r in epoch_logs) / max(1, len(epoch_logs)),
        "tokens": epoch_tokens,
        "trained_tokens": trained_tokens,
        "samples": len(rows),
        "wall_time_s": round(wall, 3),
        "tokens_per_s": round(epoch_tokens / wall, 3),
        "peak_memory_bytes": peak_mem,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "device": "cuda" if on_gpu else "cpu",
        "device_peak_flops": peak_flops,
        # 6·N·T counts forward+backward over all parameters; with freeze tuning the real work is lower.
        "mfu": round(6 * n_params * epoch_tokens / wall / peak_flops, 6) if peak_flops else None,
    }
    (ckpt / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(ckpt, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    log(f"epoch {epoch}: step {state.global_step}, mean loss {metrics['mean_loss']:.4f}, "
        f"{metrics['tokens_per_s']:.1f} tokens/s, wrote {out_dir}")
    return metrics
