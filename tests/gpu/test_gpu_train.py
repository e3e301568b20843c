"""Training on the GPU through the project's entry points (agenttune.train.trainer: train_epoch / run_training, with
the Trainer, the collators, pick_attn_implementation and training_precision as a real job uses them).

- bf16 steps on a repeated batch: loss finite and falling, the epoch folder saved, and it loads with the trained
  weights;
- a packed row's first-step loss equals that of the same two samples as a padded batch (fp32 tight, bf16 loose),
  next to the loss of the same row with the boundary ignored, which shows what the tolerance can tell apart;
- LoRA steps (merged epoch) and QLoRA steps on a 4-bit base (adapter epoch; skips without CUDA or bitsandbytes),
  each epoch loaded again as evaluation loads it (agenttune.train.checkpoint);
- throughput: bf16 vs fp32 tokens/s on the same shards after a warm-up run, and the bf16 run's MFU.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from agenttune.tokenize.encoder import IGNORE_INDEX, ChatEncoder
from agenttune.tokenize.load import load_shards
from agenttune.train.trainer import run_training, train_epoch

from . import suite

pytestmark = suite.MARKS


def _train(base, shards, out, cfg, log, compute=None):
    metrics = run_training(base, shards, None, out, 1, cfg, suite.SEED, compute, log)
    suite.free_memory()
    return metrics


def _curve(metrics) -> list[float]:
    return [r["loss"] for r in metrics["loss_curve"]]


def _expected_attention() -> str:
    return "flash_attention_2" if suite.ON_GPU and suite.flash_attn_importable() else "sdpa"


# --------------------------------------------------------------------------- bf16 steps, checkpoint


def test_bf16_steps_lower_the_loss_and_save_a_loadable_epoch(tmp_path, base_model_dir, gpu_tokenizer, measurements):
    rng = random.Random(suite.SEED)
    ids, labels = suite.random_row(rng, suite.SIZES["repeat_len"], len(gpu_tokenizer))
    shard = suite.write_rows(tmp_path / "shards" / "train-0.parquet",
                             [(f"rep-{i:02d}", ids, labels) for i in range(suite.SIZES["repeat_rows"])])
    log = suite.Log("train: ")
    out = tmp_path / "epoch-1"
    metrics = train_epoch(base_model_dir, [shard], None, out, 1, dict(suite.TRAIN_CFG), suite.SEED, suite.compute(),
                          log)
    suite.free_memory()
    curve = _curve(metrics)
    print(f"attention: {metrics['attn_implementation']}, precision {metrics['precision']}, loss {curve}")
    measurements.record("train_bf16_steps", {
        k: metrics.get(k) for k in ("attn_implementation", "precision", "device", "global_step", "tokens_per_s",
                                    "train_time_s", "peak_memory_bytes", "mfu", "parameters")} | {"loss": curve})

    assert metrics["device"] == suite.DEVICE
    assert metrics["precision"] == suite.expected_precision("bf16")
    assert metrics["attn_implementation"] == _expected_attention()
    assert metrics["global_step"] == suite.SIZES["repeat_rows"] // suite.TRAIN_CFG["batch_size"] == len(curve)
    assert all(math.isfinite(x) for x in curve), curve
    # The same two rows every step: Adam at 1e-3 memorises them. Allow one step up (a random model's first steps).
    assert curve[-1] < curve[0], curve
    assert sum(b < a for a, b in zip(curve, curve[1:])) >= len(curve) - 2, curve

    # The epoch folder: HF-loadable weights plus what resuming needs; the weights are the trained ones.
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "optimizer.pt",
                 "trainer_state.json", "manifest.json"):
        assert (out / name).exists(), name
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(suite.DEVICE).eval()
    with torch.no_grad():
        x = torch.tensor([ids], device=suite.DEVICE)
        y = torch.tensor([labels], device=suite.DEVICE)
        loaded_loss = model(input_ids=x, labels=y).loss.item()
    del model
    suite.free_memory()
    measurements.data["train_bf16_steps"]["reloaded_fp32_loss"] = loaded_loss
    measurements.write()
    assert math.isfinite(loaded_loss) and loaded_loss < curve[0], (loaded_loss, curve)


# --------------------------------------------------------------------------- packed row == padded batch

# |packed - padded| / padded. fp32: the two layouts go through different attention kernels (a 4D float mask vs a
# padding mask) and reduce in another order; 1e-4 is ~100x fp32 rounding over 30 layers (tests/test_training_inputs.py
# uses 1e-5 on CPU, 2 layers). bf16 (autocast): every matmul output is rounded to 8 bits of mantissa (~4e-3
# relative), in a different order per layout; the mean over ~10^2-10^3 answer tokens averages most of it out, so 1e-2
# is loose enough for rounding and still below a real error such as a lost first-token label (~1/n of the loss).
PACKED_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}


@pytest.fixture(scope="module")
def encoded_pair(gpu_tokenizer):
    encoder = ChatEncoder.from_hf(gpu_tokenizer)
    pair = encoder.encode(suite.rendered_samples("react"), 4096)
    assert len(pair) == 2 and all(hasattr(e, "input_ids") for e in pair), pair
    return pair


@pytest.fixture(scope="module")
def pair_model_dir(tmp_path_factory, base_model_dir, encoded_pair, measurements):
    """The base model after learning the two samples, each on its own (suite.memorize: on random weights a broken
    mask would hardly move the loss)."""
    out = tmp_path_factory.mktemp("memorized") / "pair"
    curve = _curve(suite.memorize(base_model_dir, encoded_pair, out, suite.Log("memorize pair: ")))
    measurements.record("packed_model", {"steps": len(curve), "loss_first_last": [curve[0], curve[-1]]})
    assert math.isfinite(curve[-1]) and curve[-1] < curve[0] / 2, curve
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_packed_row_first_step_loss_equals_the_padded_batch(tmp_path, pair_model_dir, encoded_pair, measurements,
                                                            precision):
    """Two samples as one packed row (batch 1) and as two padded rows (batch 2): the same tokens in one optimizer
    step, so the same first-step loss (the token-weighted mean over both). The same row trained as one sequence
    (samples attending to each other; the second sample's first token still out of the loss) is the reference for
    what a broken mask would change."""
    from agenttune.tokenize.shards import shard_table, write_table_atomic

    pair = encoded_pair
    packed = tmp_path / "packed" / "train-0.parquet"
    unpacked = tmp_path / "unpacked" / "train-0.parquet"
    for path, packing in ((packed, True), (unpacked, False)):
        path.parent.mkdir(parents=True)
        write_table_atomic(shard_table(pair, 4096, packing), path)
    assert [len(r["seq_lens"]) for r in load_shards([packed])] == [2]
    ids = [int(t) for e in pair for t in e.input_ids]
    labels = [int(t) for e in pair for t in e.labels]
    labels[len(pair[0].input_ids)] = IGNORE_INDEX  # the packed collator drops each sample's first label too
    leaky = suite.write_rows(tmp_path / "leaky" / "train-0.parquet", [("leaky", ids, labels)])

    log = suite.Log(f"packed {precision}: ")

    def first_loss(shard, batch_size):
        cfg = dict(suite.TRAIN_CFG, precision=precision, batch_size=batch_size)
        m = _train(pair_model_dir, [shard], shard.parent / "epoch-1", cfg, log)
        assert m["global_step"] == 1 and m["precision"] == suite.expected_precision(precision)
        return m["loss_curve"][0]["loss"], m["attn_implementation"]

    packed_loss, attn = first_loss(packed, 1)
    padded_loss, _ = first_loss(unpacked, 2)
    leaky_loss, _ = first_loss(leaky, 1)
    rel = abs(packed_loss - padded_loss) / abs(padded_loss)
    leak_rel = abs(leaky_loss - padded_loss) / abs(padded_loss)
    tol = PACKED_TOLERANCE[precision]
    measurements.record(f"packed_vs_padded_{precision}", {
        "packed_loss": packed_loss, "padded_loss": padded_loss, "relative_difference": rel, "tolerance": tol,
        "samples_attending_across_loss": leaky_loss, "cross_attention_relative_effect": leak_rel,
        "tolerance_separates_cross_attention": leak_rel > tol, "attn_implementation": attn,
        "tokens": len(ids), "precision_run": suite.expected_precision(precision)})
    print(f"packed {packed_loss:.6f} padded {padded_loss:.6f} (rel {rel:.2e}, tol {tol}); samples attending "
          f"across: {leaky_loss:.6f} (rel {leak_rel:.2e}); attention {attn}")
    assert all(math.isfinite(x) for x in (packed_loss, padded_loss, leaky_loss))
    assert rel <= tol, (packed_loss, padded_loss)
    # The tolerance must be able to tell a broken mask apart (CPU mode: 5% against 1e-4 and 1e-2).
    assert leak_rel > tol, f"samples attending to each other move the loss by {leak_rel:.2e} only: tolerance {tol}"


# --------------------------------------------------------------------------- LoRA (issue 21)


def _repeated_shard(tmp_path, gpu_tokenizer):
    rng = random.Random(suite.SEED)
    ids, labels = suite.random_row(rng, suite.SIZES["repeat_len"], len(gpu_tokenizer))
    shard = suite.write_rows(tmp_path / "shards" / "train-0.parquet",
                             [(f"rep-{i:02d}", ids, labels) for i in range(suite.SIZES["repeat_rows"])])
    return shard, ids, labels


def _loss_of_loaded_epoch(out, ids, labels) -> tuple[float, dict]:
    """The epoch folder loaded as evaluation loads it (agenttune.train.checkpoint: merged/, or base + adapter)."""
    from agenttune.train.checkpoint import load_model

    kwargs = {"dtype": torch.float32}
    model, source = load_model(out, log=suite.Log("load: "), **kwargs)
    if not getattr(model, "is_loaded_in_4bit", False):
        model = model.to(suite.DEVICE)
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids], device=suite.DEVICE),
                     labels=torch.tensor([labels], device=suite.DEVICE)).loss.item()
    del model
    suite.free_memory()
    return loss, source.describe()


def test_lora_steps_lower_the_loss(tmp_path, base_model_dir, gpu_tokenizer, measurements):
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        pytest.skip("peft is not installed (envs/train-gpu.yaml pins peft==0.21.2)")
    shard, ids, labels = _repeated_shard(tmp_path, gpu_tokenizer)
    out = tmp_path / "epoch-1"
    cfg = dict(suite.TRAIN_CFG, tuning="lora")
    metrics = _train(base_model_dir, [shard], out, cfg, suite.Log("lora: "), suite.compute())
    curve = _curve(metrics)
    loaded_loss, weights = _loss_of_loaded_epoch(out, ids, labels)
    measurements.record("lora_steps", {k: metrics.get(k) for k in (
        "precision", "attn_implementation", "parameters", "trainable_parameters", "tokens_per_s", "mfu",
        "peak_memory_bytes")} | {"loss": curve, "files": sorted(p.name for p in out.iterdir()),
                                 "reloaded_fp32_loss": loaded_loss, "weights": weights})
    assert all(math.isfinite(x) for x in curve) and curve[-1] < curve[0], curve
    assert 0 < metrics["trainable_parameters"] < metrics["parameters"] / 20
    assert metrics["tuning"] == "lora" and metrics["lora"]["merged"] is True  # auto: a 135M base is merged
    assert (out / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    assert weights["weights"] == "merged"
    assert math.isfinite(loaded_loss) and loaded_loss < curve[0], (loaded_loss, curve)


def _qlora_unavailable() -> str | None:
    import importlib.util

    if not torch.cuda.is_available():
        return "qlora needs a CUDA device (bitsandbytes 4-bit); none here"
    for package in ("peft", "bitsandbytes"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (envs/train-gpu.yaml pins it)"
    return None


def test_qlora_steps_lower_the_loss_on_a_4bit_base(tmp_path, base_model_dir, gpu_tokenizer, measurements):
    why = _qlora_unavailable()
    if why:
        pytest.skip(why)
    shard, ids, labels = _repeated_shard(tmp_path, gpu_tokenizer)
    out = tmp_path / "epoch-1"
    cfg = dict(suite.TRAIN_CFG, tuning="qlora")
    metrics = _train(base_model_dir, [shard], out, cfg, suite.Log("qlora: "), suite.compute())
    curve = _curve(metrics)
    loaded_loss, weights = _loss_of_loaded_epoch(out, ids, labels)
    measurements.record("qlora_steps", {k: metrics.get(k) for k in (
        "precision", "attn_implementation", "parameters", "trainable_parameters", "tokens_per_s",
        "peak_memory_bytes")} | {"loss": curve, "lora": metrics.get("lora"), "reloaded_loss": loaded_loss,
                                 "weights": weights})
    assert all(math.isfinite(x) for x in curve) and curve[-1] < curve[0], curve
    assert metrics["tuning"] == "qlora" and metrics["lora"]["quantization"]["quant_type"] == "nf4"
    # auto never merges qlora: evaluation loads the 4-bit base + the adapter, the model that was trained.
    assert metrics["lora"]["merged"] is False and not (out / "merged").exists()
    assert weights["weights"] == "adapter" and weights["adapter_merged_in_memory"] is False
    assert math.isfinite(loaded_loss) and loaded_loss < curve[0], (loaded_loss, curve)


# --------------------------------------------------------------------------- throughput and MFU


def test_bf16_and_fp32_throughput_and_mfu(tmp_path, base_model_dir, gpu_tokenizer, measurements):
    """Measured, not asserted (beyond sanity): tokens/s of bf16 (autocast over fp32 weights, as the project trains
    without DeepSpeed) and of fp32 on the same shards in the same process, each after a warm-up run; the bf16 run's
    MFU in the cost module's convention (peak from the detected GPU: 989e12 for an H200)."""
    rng = random.Random(suite.SEED + 1)
    n, length = suite.SIZES["throughput_rows"], suite.SIZES["throughput_len"]
    rows = [(f"row-{i:04d}", *suite.random_row(rng, length, len(gpu_tokenizer))) for i in range(n)]
    shard = suite.write_rows(tmp_path / "shards" / "train-0.parquet", rows)
    batch = suite.SIZES["throughput_batch"]
    warm = suite.write_rows(tmp_path / "warm" / "train-0.parquet", rows[:2 * batch])
    log = suite.Log("throughput: ")
    results = {}
    for name, precision, shards in (("warmup", "bf16", [warm]), ("bf16", "bf16", [shard]),
                                    ("fp32", "fp32", [shard])):
        cfg = dict(suite.TRAIN_CFG, precision=precision, batch_size=batch)
        m = _train(base_model_dir, shards, tmp_path / name / "epoch-1", cfg, log, suite.compute())
        results[name] = {k: m.get(k) for k in (
            "precision", "attn_implementation", "global_step", "tokens", "train_time_s", "wall_time_s",
            "tokens_per_s", "peak_memory_bytes", "mfu", "mfu_convention", "device_peak_flops", "parameters")}
        results[name]["loss_first_last"] = [m["loss_curve"][0]["loss"], m["loss_curve"][-1]["loss"]]
    bf16, fp32 = results["bf16"], results["fp32"]
    ratio = bf16["tokens_per_s"] / fp32["tokens_per_s"]
    six_nt = 6 * bf16["parameters"] * bf16["tokens"] / bf16["train_time_s"] / bf16["device_peak_flops"] \
        if bf16["device_peak_flops"] else None
    measurements.record("training_throughput", {
        "bf16_over_fp32_tokens_per_s": ratio, "bf16_mfu": bf16["mfu"], "bf16_mfu_6NT_all_params": six_nt,
        "rows": n, "row_tokens": length, "batch_size": batch, "runs": results})
    print(f"tokens/s bf16 {bf16['tokens_per_s']:.0f}, fp32 {fp32['tokens_per_s']:.0f} (x{ratio:.2f}); "
          f"bf16 MFU {bf16['mfu']} (peak {bf16['device_peak_flops']})")
    for r in (bf16, fp32):
        assert r["global_step"] == n // batch and r["tokens"] == n * length
        assert all(math.isfinite(x) for x in r["loss_first_last"]) and r["tokens_per_s"] > 0
    assert bf16["precision"] == suite.expected_precision("bf16") and fp32["precision"] == "fp32"
    assert bf16["mfu"] is not None and 0 < bf16["mfu"] < 1, bf16
