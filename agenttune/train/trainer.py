"""Train stage: one epoch per call, resuming the previous epoch's checkpoint exactly.

Takes: the base model folder, the train shards, the previous epoch's folder (none for epoch 1), the `train` config
(optionally with a `deepspeed` block) and the `compute` config (device kind and peak FLOP/s, for the MFU).
Gives: `epoch-<e>/`: an HF-loadable folder (model.safetensors, config, tokenizer) that also holds the Trainer state
needed to resume (optimizer, scheduler, RNG, trainer_state.json; under DeepSpeed the ZeRO shards of every rank and
`deepspeed_config.json`) and `metrics.json` (loss curve, tokens/s, tokens, wall time, peak memory, MFU).

The LR schedule always spans `train.epochs` epochs, so epoch e of a chained run equals epoch e of an uninterrupted
run. The epoch is written to `<out>.partial` first and renamed when complete: a killed job leaves nothing that
looks finished. Inside the epoch, step checkpoints (`train.step_checkpoints`, agenttune.train.step_checkpoints) go to
`<out>.steps/step-<k>/`; a job started again resumes from the newest one and ends bit-identical to an uninterrupted
run. With several ranks (agenttune.train.launch starts them) every rank runs this code; rank 0 alone cleans,
measures and renames. `python -m agenttune.train.worker SPEC.json` is the rank entry point.
"""

from __future__ import annotations

import functools

import json
import math
import os
import resource
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from agenttune.cluster.cost.flops import trainable_layers
from agenttune.common.atomic import write_text
from agenttune.common.config import section_with_defaults
from agenttune.common.manifest import sha256_file, write_manifest
from agenttune.tokenize.encoder import IGNORE_INDEX
from agenttune.tokenize.load import load_shards
from agenttune.tokenize.pack import make_collator, padding_id
from agenttune.train import lora
from agenttune.train import step_checkpoints as steps


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


class CountingCollator:
    """Wraps the job's collator and counts what this rank collates since the last `reset()` (each epoch's start):
    the real tokens and the sample lengths. A job resumed from a step checkpoint times only the rest of its epoch
    (the Trainer skips the trained batches by index, without collating them), and its tokens/s and MFU count these."""

    def __init__(self, inner):
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.tokens = 0
        self.sample_lengths: list[int] = []

    def __call__(self, batch: list[dict]) -> dict:
        for r in batch:
            self.tokens += len(r["input_ids"])
            self.sample_lengths.extend(r.get("seq_lens") or [len(r["input_ids"])])
        return self.inner(batch)


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


def pick_attn_implementation(requested: str, log, half_precision: bool, key: str = "train.attn_implementation") -> str:
    """The attention implementation of a job, logged. `auto`: flash_attention_2 when the package imports, a CUDA
    device is there and the attention runs in bf16/fp16 (`half_precision`: flash-attn rejects fp32 inputs at the
    first forward), else sdpa. An explicit `flash_attention_2` that cannot run here is an error naming the config
    `key` (a user who asked for it must not get a slower job silently); other explicit values are used as given."""
    if requested == "auto":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            log("attention: sdpa (flash-attn not installed)")
            return "sdpa"
        if not torch.cuda.is_available():
            log("attention: sdpa (flash-attn installed but no CUDA device)")
        elif not half_precision:
            log("attention: sdpa (flash-attn needs bf16/fp16; this job runs in fp32)")
        else:
            log("attention: flash_attention_2 (flash-attn installed, CUDA present, bf16)")
            return "flash_attention_2"
        return "sdpa"
    if requested == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise ValueError(f"{key}: flash_attention_2 was asked for, but flash-attn is not installed in this job's "
                             "environment (envs/train-gpu.post-deploy.sh installs it); set it to auto or sdpa to "
                             "run without it") from None
        if not torch.cuda.is_available():
            raise ValueError(f"{key}: flash_attention_2 was asked for, but this job has no CUDA device")
        if not half_precision:
            raise ValueError(f"{key}: flash_attention_2 was asked for, but this job runs in fp32 (flash-attn needs "
                             "bf16/fp16: set precision: bf16, or attn_implementation: auto)")
    log(f"attention: {requested} (from config)")
    return requested


def training_precision(cfg: dict, on_gpu: bool, use_deepspeed: bool) -> tuple[torch.dtype, bool]:
    """(dtype the weights are loaded in, whether the forward/backward run in bf16).

    bf16 only on GPUs (on this kind of CPU it is ~20x slower). Without DeepSpeed the weights stay fp32 and bf16 is
    autocast: AdamW then updates fp32 weights with fp32 states; weights loaded in bf16 would lose most small updates
    to rounding. ZeRO keeps fp32 master weights of its own, so under DeepSpeed the model is loaded in bf16."""
    bf16 = cfg["precision"] == "bf16" and on_gpu
    return (torch.bfloat16 if bf16 and use_deepspeed else torch.float32), bf16


def refuse_data_parallel(world_size: int, distributed: bool, visible_gpus: int) -> None:
    """One process that sees several GPUs would be wrapped in nn.DataParallel by the Trainer: the batch would be
    split over the GPUs and the schedule changed, silently. Refuse instead."""
    if world_size == 1 and not distributed and visible_gpus > 1:
        raise ValueError(
            f"train.launcher: none trains in one process, but {visible_gpus} GPUs are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); the Trainer would wrap the "
            "model in nn.DataParallel and change the batch and schedule. Give the job one GPU, or use "
            f"train.launcher: torchrun with train.nproc_per_node: {visible_gpus}")


def _epoch_callbacks(epoch: int, log, counter: CountingCollator | None = None):
    from transformers import TrainerCallback

    class StopAfterEpoch(TrainerCallback):
        """Ends the process after `epoch`; the epoch-end checkpoint is still saved (save_strategy='epoch')."""

        def on_epoch_end(self, args, state, control, **kwargs):
            if state.epoch is not None and state.epoch >= epoch - 1e-9:
                control.should_training_stop = True
            return control

    class EpochClock(TrainerCallback):
        """Times the epoch's steps alone: loading, ZeRO set-up, resume and checkpoint saving are left out, so that
        tokens/s and MFU describe training, not start-up."""

        def __init__(self):
            self.begin = self.end = None

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()
            if counter is not None:
                counter.reset()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

        @property
        def seconds(self) -> float | None:
            return None if self.begin is None or self.end is None else self.end - self.begin

    class Progress(TrainerCallback):
        """One line per logged step in the job log (rank 0): step, loss, learning rate."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                current = math.ceil(state.epoch - 1e-9) if state.epoch else epoch
                log(f"epoch {current}: step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                    f"lr {logs.get('learning_rate', 0):.3g}")

    clock = EpochClock()
    return [StopAfterEpoch(), clock, Progress()], clock


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _max_over_ranks(value: int, on_gpu: bool) -> int:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device="cuda" if on_gpu else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def _gather_lengths(lengths: list[int]) -> list[int]:
    """Every rank's list, concatenated (this rank's alone without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(lengths)
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, list(lengths))
    return [n for part in gathered for n in part]


def _sum_over_ranks(value: int, on_gpu: bool) -> int:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device="cuda" if on_gpu else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return int(t.item())


def _peak_memory_bytes(on_gpu: bool) -> int:
    """GPU: the most memory torch allocated on this rank's device; CPU: the peak RSS of this process."""
    if on_gpu:
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cuda_gpu_name() -> str | None:
    """The agenttune.cluster.cost GPU entry of the CUDA device this job runs on, when it is one the cost module knows."""
    name = torch.cuda.get_device_name().lower()
    if "a100" in name:
        return "a100-80g" if torch.cuda.get_device_properties(0).total_memory > 60 * 2**30 else "a100-40g"
    if "h100" in name:
        return "h100-80g"
    if "h200" in name:
        return "h200"
    return None


def measured_mfu(model_config: dict, tokens: int, row_lengths: list[int], seconds: float, world_size: int,
                 compute: dict | None, on_gpu: bool, grad_checkpointing: bool, log=print,
                 trainable_layers: int | None = None, train_cfg: dict | None = None) -> dict:
    """MFU in agenttune.cluster.cost's convention: its training_flops (6·N·T over the compute parameters + causal attention
    + the recomputed forward when checkpointing; with freeze tuning, the backward pass of the trainable top layers
    only) over the time × devices × peak FLOP/s of one device.

    Devices: the ranks on GPUs (one GPU each); on CPU the ranks share the machine, so `compute.devices` machines.
    Peak: `compute.device_peak_flops`, else the cost module's figure for `compute.device`, else the detected GPU.
    With lora/qlora (`train_cfg`), the FLOPs are the cost module's LoRA count (agenttune.cluster.cost.adapters).
    Returns the metrics entries (mfu None when no peak is known or the device kind does not match the config)."""
    from agenttune.cluster.cost.devices import GPUS, get_gpu
    from agenttune.cluster.cost.flops import MFU_CONVENTION, implied_mfu
    from agenttune.cluster.cost.shapes import ModelShape

    compute = compute or {}
    kind = compute.get("device")
    if kind is None and on_gpu:
        kind = _cuda_gpu_name()
    if kind is not None and (kind == "cpu") == on_gpu:
        log(f"MFU not recorded: compute.device is {kind!r} but this job runs on {'GPU' if on_gpu else 'CPU'}")
        kind = None
    peak = compute.get("device_peak_flops") or (GPUS[kind].peak_flops if kind in GPUS and kind != "cpu" else None)
    devices = world_size if on_gpu else max(1, int(compute.get("devices", 1)))
    entry = {"mfu": None, "mfu_convention": MFU_CONVENTION, "mfu_devices": devices, "device_peak_flops": peak,
             "mfu_gradient_checkpointing": grad_checkpointing, "mfu_trainable_layers": trainable_layers}
    if kind is None or not peak or not seconds or not row_lengths:
        return entry
    shape = ModelShape.from_hf_config(model_config)
    # lora/qlora: the cost model sizes every target the trainer accepts (the two share one rule), lm_head included.
    from agenttune.cluster.cost.adapters import lora_spec

    lora = lora_spec(train_cfg) if train_cfg is not None else None
    entry["mfu"] = round(implied_mfu(shape, tokens, seconds / 3600, devices, get_gpu(kind, peak_flops=peak),
                                     row_lengths, grad_checkpointing, trainable_layers, lora), 6)
    return entry


@functools.cache
def _checkpointing_argument() -> str:
    """TrainingArguments' name for activation (gradient) checkpointing: `activation_checkpointing` in the pinned
    transformers (5.23, where `gradient_checkpointing` is a deprecated alias), `gradient_checkpointing` in older
    releases such as the 5.17 of the GPU machine the GPU suite runs on."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def training_arguments(cfg: dict, work_dir: str | Path, seed: int, on_gpu: bool, world_size: int, bf16: bool,
                       ds_config: dict | None):
    """The Trainer's arguments for a job of the train stage."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["grad_accum"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=cfg["warmup_ratio"],
        weight_decay=cfg["weight_decay"],
        max_grad_norm=cfg["max_grad_norm"],
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="epoch",
        seed=seed,
        data_seed=seed,
        report_to="none",
        dataloader_num_workers=0,
        # Rows reach the collator whole. With the default (True) the Trainer deletes every key the model's forward
        # does not name, `seq_lens` among them, and packed rows would train as one sequence attending across
        # their samples (tests/test_training_inputs.py checks what the model receives).
        remove_unused_columns=False,
        use_cpu=not on_gpu,
        # Several CPU ranks: gloo is the backend that works without a GPU (accelerate's MULTI_CPU).
        ddp_backend="gloo" if (not on_gpu and world_size > 1) else None,
        # bf16 autocast over fp32 weights without DeepSpeed; ZeRO's own bf16 with it (training_precision).
        bf16=bf16,
        **{_checkpointing_argument(): bool(cfg["gradient_checkpointing"])},
        deepspeed=ds_config,
        # Job logs are files: the Progress callback writes one line per step instead of a redrawn bar.
        disable_tqdm=True,
    )


def training_collator(shard_paths, pad_token_id: int, attn_implementation: str, dtype):
    """Packed shards (tokenize.packing) need their own collator: per-sample positions, block-diagonal mask or
    flash-attn varlen; unpacked rows are right-padded."""
    return make_collator(shard_paths, pad_token_id, attn_implementation, dtype) or PadCollator(pad_token_id)


def train_epoch(base_model_dir: str | Path, shard_paths: list[str | Path], prev_epoch_dir: str | Path | None,
                out_dir: str | Path, epoch: int, cfg: dict, seed: int, compute: dict | None = None,
                log=print) -> dict:
    """Train epoch `epoch` (1-based), resuming `prev_epoch_dir` for epoch > 1; write `out_dir`."""
    if epoch > 1 and prev_epoch_dir is None:
        raise ValueError(f"epoch {epoch} needs the checkpoint of epoch {epoch - 1}")
    if epoch == 1 and prev_epoch_dir is not None:
        raise ValueError("epoch 1 starts from the base model, not from a checkpoint")
    if epoch > cfg["epochs"]:
        raise ValueError(f"epoch {epoch} is past train.epochs = {cfg['epochs']}")
    return run_training(base_model_dir, shard_paths, prev_epoch_dir, out_dir, epoch, cfg, seed, compute, log)


def run_training(base_model_dir: str | Path, shard_paths: list[str | Path], resume_from: str | Path | None,
                 out_dir: str | Path, until_epoch: int, cfg: dict, seed: int, compute: dict | None = None,
                 log=print) -> dict:
    """Train from `resume_from` (or from scratch) until the end of `until_epoch`; move that checkpoint to out_dir.
    The per-epoch job and an uninterrupted multi-epoch run both come through here. Returns the metrics on rank 0
    and an empty dict on the other ranks."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer
    from transformers.trainer_callback import PrinterCallback

    from agenttune.train import deepspeed as ds

    cfg = section_with_defaults(cfg, "train")
    epoch = until_epoch
    out_dir = Path(out_dir)
    work_dir = out_dir.with_name(out_dir.name + ".partial")
    rank, world_size = _rank_and_world()
    is_main = rank == 0
    if not is_main:
        log = lambda msg: None  # noqa: E731  (rank 0 speaks for the job)
    use_deepspeed = bool(cfg.get("deepspeed"))
    lora.check_config(cfg, log)  # a qlora job without a GPU or bitsandbytes fails here, before anything is loaded
    if resume_from is not None:
        ds.check_resumable(resume_from, use_deepspeed, world_size)
        lora.check_resume(resume_from, cfg)
    if is_main and work_dir.exists():
        # Leftovers of a killed job are never trusted, among them a step checkpoint that was still being written.
        log(f"removing {work_dir}, left by a job that did not finish")
        shutil.rmtree(work_dir, ignore_errors=True)

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model_config = AutoConfig.from_pretrained(base_model_dir)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        refuse_data_parallel(world_size, "LOCAL_RANK" in os.environ, torch.cuda.device_count())
    if cfg["precision"] == "bf16" and not on_gpu:
        log("precision: bf16 asked for, but there is no GPU: training in fp32 (bf16 on CPU is ~20x slower)")
    dtype, bf16 = training_precision(cfg, on_gpu, use_deepspeed)
    attn = pick_attn_implementation(cfg["attn_implementation"], log, half_precision=bf16)
    ds_config = ds.zero3_config(cfg, model_config.hidden_size, on_gpu) if use_deepspeed else None
    if ds_config:
        zero = ds_config["zero_optimization"]
        log(f"DeepSpeed ZeRO-3 on {world_size} rank(s): reduce bucket {zero['reduce_bucket_size']:,}, prefetch "
            f"{zero['stage3_prefetch_bucket_size']:,} elements, offload optimizer "
            f"{'offload_optimizer' in zero}, params {'offload_param' in zero}, bf16 {ds_config['bf16']['enabled']}")

    # Step checkpoints: the newest complete one of this job's epoch is where training resumes (its fingerprint
    # must match this job's), else the previous epoch (or the base model).
    steps_root = steps.steps_dir(out_dir)
    fingerprint, trainer_resume, resumed_step = None, resume_from, None
    if steps.enabled(cfg) or steps_root.exists():
        fingerprint = steps.fingerprint(cfg, seed, epoch, world_size, shard_paths, base_model_dir, resume_from,
                                        "cuda" if on_gpu else "cpu", attn, "bf16" if bf16 else "fp32")
        chosen = steps.choose_resume(steps_root, fingerprint, is_main, log)
        if chosen is not None:
            resumed_step, trainer_resume = chosen
            ds.check_resumable(trainer_resume, use_deepspeed, world_size)
            log(f"resuming from step checkpoint {trainer_resume} (global step {resumed_step})")

    rows = load_shards(shard_paths)
    rows.sort(key=lambda r: r["id"])  # shard order must not change the data order
    dataset = TokenizedDataset(rows)
    # Attention cost follows the samples, not the rows: a packed row (tokenize.packing) attends block-diagonally.
    sample_lengths = [n for r in rows for n in (r.get("seq_lens") or [len(r["input_ids"])])]
    epoch_tokens = sum(len(r["input_ids"]) for r in rows)
    trained_tokens = sum(sum(1 for l in r["labels"] if l != IGNORE_INDEX) for r in rows)
    grad_ckpt = bool(cfg["gradient_checkpointing"])

    # The arguments come before the model: with a ZeRO-3 config alive, from_pretrained loads the weights straight
    # into partitions (deepspeed.zero.Init), so no rank ever holds the whole model (72B in bf16 is 145 GB).
    args = training_arguments(cfg, work_dir, seed, on_gpu, world_size, bf16, ds_config)
    _ = args.device  # sets up torch.distributed (gloo on CPU) before zero.Init would pick a backend of its own
    if fingerprint is not None:
        mine = -1 if resumed_step is None else resumed_step
        lowest, highest = -_max_over_ranks(-mine, on_gpu), _max_over_ranks(mine, on_gpu)
        if lowest != highest:  # e.g. a shared filesystem that showed a new step folder to some nodes only
            raise RuntimeError(f"the ranks chose different step checkpoints in {steps_root} (global steps {lowest} "
                               f"to {highest}; -1 = none): refusing to train from inconsistent states")
    load_kwargs = {}
    if cfg["tuning"] == "qlora":
        load_kwargs = {"quantization_config": lora.quantization_config(cfg["lora"], use_deepspeed)}
        if not use_deepspeed:  # under ZeRO-3 the 4-bit weights are partitioned, not placed on one device
            load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype, attn_implementation=attn,
                                                 **load_kwargs)
    n_params = lora.parameter_count(model)
    if cfg["tuning"] == "freeze":
        freeze_lower_layers(model, cfg["freeze_trainable_layers"])
    if lora.is_peft(cfg):
        model = lora.apply_lora(model, cfg, base_model_dir, seed, grad_ckpt, log, sharded=use_deepspeed)
        if resume_from is not None:
            lora.check_resume_targets(resume_from, list(model.peft_config["default"].target_modules))
    n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    if ds_config and hasattr(next(model.parameters()), "ds_numel"):
        log("weights loaded straight into ZeRO-3 partitions (zero.Init)")
    log(f"model: {n_params:,} parameters, {n_trainable:,} trainable ({cfg['tuning']} tuning), weights "
        f"{dtype}" + (", bf16 autocast" if bf16 and dtype == torch.float32 else ""))
    # Packed shards (tokenize.packing) need their own collator: per-sample positions, block-diagonal mask.
    collator = CountingCollator(training_collator(shard_paths, padding_id(tokenizer), attn, dtype))
    callbacks, clock = _epoch_callbacks(epoch, log, collator)
    step_saver = steps.make_callback(cfg, steps_root, fingerprint if steps.enabled(cfg) else None, rank, log,
                                     resumed=resumed_step is not None)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[*callbacks, step_saver],
    )
    trainer.remove_callback(PrinterCallback)  # it would print every log dict again next to Progress
    _barrier()  # rank 0 has cleaned work_dir before any rank can write into it
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(trainer_resume) if trainer_resume else None)
    wall = time.perf_counter() - start
    peak_mem = _max_over_ranks(_peak_memory_bytes(on_gpu), on_gpu)
    if resumed_step is not None:
        # Only the steps after the step checkpoint were timed: count the tokens and samples they collated.
        timed_tokens = _sum_over_ranks(collator.tokens, on_gpu)
        timed_lengths = _gather_lengths(collator.sample_lengths)
    _barrier()  # every rank has written its ZeRO shards
    if not is_main:
        return {}

    checkpoints = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise RuntimeError(f"training epoch {epoch} saved no checkpoint in {work_dir}")
    ckpt = checkpoints[-1]
    if ds_config:
        (ckpt / ds.CONFIG_NAME).write_text(json.dumps(ds_config, indent=2, sort_keys=True) + "\n")
        # An adapter epoch's weights are its adapter (saved gathered by the Trainer), not a full model to export.
        if not ds.has_plain_weights(ckpt) and not (ckpt / lora.ADAPTER_WEIGHTS).is_file():
            log("exporting the ZeRO checkpoint to plain safetensors")
            ds.export_zero_checkpoint(ckpt)
    state = trainer.state
    epoch_logs = [r for r in state.log_history if "loss" in r and epoch - 1 < r.get("epoch", 0) <= epoch + 1e-9]
    # Saving step checkpoints is not training: like the epoch's own save, it is left out of the epoch's time.
    seconds = (clock.seconds - step_saver.save_seconds) if clock.seconds else wall
    rate_tokens, rate_lengths = epoch_tokens, sample_lengths
    if resumed_step is not None:
        rate_tokens, rate_lengths = timed_tokens, timed_lengths
    metrics = {
        "epoch": epoch,
        "global_step": state.global_step,
        "loss_curve": [{"step": r["step"], "loss": r["loss"], "learning_rate": r.get("learning_rate")} for r in epoch_logs],
        "mean_loss": sum(r["loss"] for r in epoch_logs) / max(1, len(epoch_logs)),
        "tokens": epoch_tokens,  # real (non-padding) tokens in the epoch's rows, all ranks together
        "trained_tokens": trained_tokens,
        "samples": len(sample_lengths),
        "rows": len(rows),
        "samples_per_row": round(len(sample_lengths) / max(1, len(rows)), 3),  # > 1 when the shards are packed
        "train_time_s": round(seconds, 3),  # the epoch's steps only (after the step checkpoint resumed from)
        "wall_time_s": round(wall, 3),  # trainer.train(): also resume, ZeRO set-up and checkpoint saving
        "tokens_per_s": round(rate_tokens / seconds, 3),
        # Where this job resumed inside the epoch (None: at its start), the tokens its timed steps processed, and
        # the step checkpoints it wrote (their saving time is not in train_time_s).
        "resumed_from_step": resumed_step,
        "timed_tokens": rate_tokens,
        "step_checkpoints_written": step_saver.saved,
        "step_checkpoint_save_s": round(step_saver.save_seconds, 3),
        "peak_memory_bytes": peak_mem,  # the largest over the ranks
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "tuning": cfg["tuning"],
        "device": "cuda" if on_gpu else "cpu",
        "world_size": world_size,
        "deepspeed_stage": 3 if ds_config else None,
        "precision": "bf16" if bf16 else "fp32",
        "attn_implementation": attn,
        "gradient_checkpointing": grad_ckpt,
        **measured_mfu(model.config.to_dict(), rate_tokens, rate_lengths, seconds, world_size, compute, on_gpu,
                       grad_ckpt, log,
                       trainable_layers(cfg), cfg),
    }
    if lora.is_peft(cfg):
        if not (ckpt / lora.ADAPTER_WEIGHTS).is_file():
            raise RuntimeError(f"{cfg['tuning']} epoch {epoch}: the Trainer saved no {lora.ADAPTER_WEIGHTS} in {ckpt}")
        merge, why = lora.merge_decision(cfg["tuning"], cfg["lora"]["merge"], n_params)
        log(why)
        if merge:
            if ds_config:
                # Training is over: the merge loads the whole base on rank 0, not into ZeRO-3 partitions.
                from transformers.integrations.deepspeed import unset_hf_deepspeed_config

                unset_hf_deepspeed_config()
            lora.merge_adapter_into_base(base_model_dir, ckpt, ckpt / lora.MERGED_DIR, tokenizer, log)
        targets = sorted(model.peft_config["default"].target_modules)
        metrics["lora"] = lora.record(cfg, targets, base_model_dir, n_trainable, merge, why, out_dir)
        lora.write_record(ckpt, metrics["lora"])
    (ckpt / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    _write_epoch_manifest(ckpt, base_model_dir, shard_paths, resume_from, cfg, seed, epoch, world_size)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(ckpt, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    steps.remove_all(steps_root, log)  # the epoch folder is complete: it alone is what the next epoch reads
    log(f"epoch {epoch}: step {state.global_step}, mean loss {metrics['mean_loss']:.4f}, "
        f"{metrics['tokens_per_s']:.1f} tokens/s, MFU {metrics['mfu']}, wrote {out_dir}")
    return metrics


def _write_epoch_manifest(folder: Path, base_model_dir, shard_paths, resume_from, cfg: dict, seed: int, epoch: int,
                          world_size: int) -> None:
    """`manifest.json` of the epoch folder. Inputs: the shards, the base model's config, and the previous epoch's
    manifest (which names its own inputs and weights, so the chain is covered without re-reading big files).
    Outputs: sha256 of the weights, the number the reproducibility tests compare."""
    inputs = {f"shard:{Path(p).name}": p for p in shard_paths}
    inputs["base_model_config"] = Path(base_model_dir) / "config.json"
    if resume_from is not None:
        prev = Path(resume_from) / "manifest.json"
        inputs["previous_epoch"] = prev if prev.is_file() else Path(resume_from) / "trainer_state.json"
    # An adapter epoch: the adapter and, when merged, the merged model's weights.
    weights = sorted(p.name for p in folder.glob("model*.safetensors"))
    weights += [p.name for p in folder.glob("adapter_model.safetensors")]
    weights += sorted(f"merged/{p.name}" for p in folder.glob("merged/model*.safetensors"))
    write_manifest(folder / "manifest.json", "train_epoch", inputs,
                   {"train": cfg, "seed": seed, "epoch": epoch, "world_size": world_size},
                   outputs={name: sha256_file(folder / name) for name in weights})


# ------------------------------------------------------------- the job spec the ranks read (agenttune.train.worker)

def write_job_spec(path: str | Path, base_model_dir, shard_paths, prev_epoch_dir, out_dir, epoch: int, cfg: dict,
                   seed: int, compute: dict | None = None, uninterrupted: bool = False) -> Path:
    """The arguments of `train_epoch` as JSON, for `python -m agenttune.train.worker SPEC` on every rank.
    `uninterrupted`: train epochs 1..epoch in one go from the base model (the reference that chained per-epoch
    jobs must equal; tests and benchmarks use it)."""
    def absolute(p):
        return None if p is None else str(Path(p).resolve())

    spec = {
        "base_model_dir": absolute(base_model_dir),
        "shard_paths": [absolute(p) for p in shard_paths],
        "prev_epoch_dir": absolute(prev_epoch_dir),
        "out_dir": absolute(out_dir),
        "epoch": int(epoch),
        "cfg": cfg,
        "seed": int(seed),
        "compute": compute,
        "uninterrupted": bool(uninterrupted),
    }
    path = Path(path)
    write_text(path, json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return path
