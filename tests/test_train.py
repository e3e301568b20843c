"""Per-epoch training: a chained run (one call per epoch, resuming) ends bit-identical to an uninterrupted run; a job
killed mid-epoch leaves nothing Snakemake would accept, and its re-run ends identical too."""

import json
import subprocess
import sys

import pytest
from training_data import CFG, write_shards

from agenttune.cluster.cost.devices import get_gpu
from agenttune.cluster.cost.flops import implied_mfu, read_measured_mfu
from agenttune.cluster.cost.shapes import ModelShape
from agenttune.common.config import section_with_defaults
from agenttune.common.manifest import sha256_file
from agenttune.tokenize.load import load_shards
from agenttune.train.trainer import run_training, train_epoch, write_job_spec

COMPUTE = {"device": "cpu", "devices": 1, "device_peak_flops": 1.6e11}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


def _lrs(folder):
    state = json.loads((folder / "trainer_state.json").read_text())
    return [(r["step"], r["learning_rate"]) for r in state["log_history"] if "learning_rate" in r], state["global_step"]


@pytest.fixture(scope="module")
def chained(tmp_path_factory, tiny_model_dir, shards):
    root = tmp_path_factory.mktemp("chained")
    e1, e2, straight = root / "chained" / "epoch-1", root / "chained" / "epoch-2", root / "straight" / "epoch-2"
    m1 = train_epoch(tiny_model_dir, shards, None, e1, 1, CFG, seed=5, compute=COMPUTE, log=lambda m: None)
    m2 = train_epoch(tiny_model_dir, shards, e1, e2, 2, CFG, seed=5, compute=COMPUTE, log=lambda m: None)
    run_training(tiny_model_dir, shards, None, straight, 2, CFG, seed=5, log=lambda m: None)
    return {"e1": e1, "e2": e2, "straight": straight, "m1": m1, "m2": m2, "root": root}


def test_chained_epochs_equal_uninterrupted_run(chained):
    e1, e2, straight, m1, m2 = (chained[k] for k in ("e1", "e2", "straight", "m1", "m2"))
    # 12 samples, batch 1, accumulation 2: 6 optimizer steps per epoch; epoch 2 continues the step count.
    assert m1["global_step"] == 6 and m2["global_step"] == 12
    lrs_chained, step = _lrs(e2)
    lrs_straight, step_straight = _lrs(straight)
    assert step == step_straight == 12
    assert lrs_chained == lrs_straight  # the schedule spans both epochs, not restarted
    assert lrs_chained[-1][1] < lrs_chained[5][1]
    assert sha256_file(e2 / "model.safetensors") == sha256_file(straight / "model.safetensors")
    assert sha256_file(e1 / "model.safetensors") != sha256_file(e2 / "model.safetensors")
    for f in ("config.json", "tokenizer.json", "metrics.json", "optimizer.pt", "scheduler.pt"):
        assert (e2 / f).exists(), f
    assert not (chained["root"] / "chained" / "epoch-2.partial").exists()
    manifest = json.loads((e2 / "manifest.json").read_text())
    assert manifest["outputs"]["model.safetensors"] == sha256_file(e2 / "model.safetensors")
    assert manifest["inputs"]["previous_epoch"]["sha256"] == sha256_file(e1 / "manifest.json")
    # The manifest records the whole train section the job used, defaults included.
    assert manifest["config"]["epoch"] == 2 and manifest["config"]["train"] == section_with_defaults(CFG, "train")


def test_metrics_record_mfu_in_the_cost_modules_convention(chained, shards):
    path = chained["e2"] / "metrics.json"
    m = json.loads(path.read_text())
    assert m["mfu_convention"] == "agenttune.cost" and m["world_size"] == 1 and m["mfu_devices"] == 1
    assert m["tokens"] > 0 and m["train_time_s"] > 0 and m["peak_memory_bytes"] > 0 and m["deepspeed_stage"] is None
    assert len(m["loss_curve"]) == 6 and m["tokens_per_s"] == pytest.approx(m["tokens"] / m["train_time_s"], rel=1e-2)
    # The number agenttune.cluster.cost computes for these tokens, rows and seconds: attention included, 6·N·T alone is less.
    shape = ModelShape.from_hf_config(json.loads((chained["e2"] / "config.json").read_text()))
    rows = [len(r["input_ids"]) for r in load_shards(shards)]
    expected = implied_mfu(shape, sum(rows), m["train_time_s"] / 3600, 1, get_gpu("cpu", peak_flops=1.6e11), rows)
    assert m["tokens"] == sum(rows)
    assert m["mfu"] == pytest.approx(expected, rel=1e-2)
    # train_time_s is rounded to 3 decimals; on the tiny model that rounding (up to 0.2% of a 0.26 s epoch) is larger
    # than attention's share, so bound 6·N·T with the longest time that rounds to it.
    assert m["mfu"] > 6 * shape.compute_params * m["tokens"] / (m["train_time_s"] + 0.0005) / 1.6e11
    # The cost module takes it as it is (no 6·N·T rescaling).
    mfu, how = read_measured_mfu(path, shape)
    assert mfu == m["mfu"] and how.startswith("measured")


def test_epoch_folder_loads_without_the_trainer(chained):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(chained["e1"])
    assert model.config.num_hidden_layers == 2


def test_epoch_needs_previous_checkpoint(tmp_path, tiny_model_dir, shards):
    with pytest.raises(ValueError, match="needs the checkpoint of epoch 1"):
        train_epoch(tiny_model_dir, shards, None, tmp_path / "e2", 2, CFG, seed=5)
    with pytest.raises(ValueError, match="past train.epochs"):
        train_epoch(tiny_model_dir, shards, tmp_path / "e2", tmp_path / "e3", 3, CFG, seed=5)


def test_killed_job_leaves_no_epoch_and_its_rerun_equals_the_uninterrupted_run(tmp_path, tiny_model_dir):
    # Longer rows than the other tests, so that an epoch lasts long enough to be killed in the middle of it.
    shards = write_shards(tmp_path / "shards", rows_per_shard=20, min_len=40, max_len=100, seed=3)
    e1, e2 = tmp_path / "chained" / "epoch-1", tmp_path / "chained" / "epoch-2"
    train_epoch(tiny_model_dir, shards, None, e1, 1, CFG, seed=5, log=lambda m: None)
    sha_e1 = sha256_file(e1 / "model.safetensors")

    # The epoch-2 job, as its own process (the rank entry point the launchers use), SIGKILLed three steps in: 17 of
    # its 20 steps and the checkpoint save are still ahead of it.
    spec = write_job_spec(tmp_path / "epoch-2.launch.json", tiny_model_dir, shards, e1, e2, 2, CFG, 5)
    proc = subprocess.Popen([sys.executable, "-m", "agenttune.train.worker", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "epoch 2: step 23/40" in line:
            proc.kill()
            break
    proc.wait()
    assert proc.returncode == -9, "".join(seen[-30:])
    assert not e2.exists(), "a killed job left an epoch folder that Snakemake would accept"
    assert sha256_file(e1 / "model.safetensors") == sha_e1  # the input of the job is untouched

    # Re-running the job completes the epoch; it equals both epochs trained in one go.
    train_epoch(tiny_model_dir, shards, e1, e2, 2, CFG, seed=5, log=lambda m: None)
    straight = tmp_path / "straight" / "epoch-2"
    run_training(tiny_model_dir, shards, None, straight, 2, CFG, seed=5, log=lambda m: None)
    assert sha256_file(e2 / "model.safetensors") == sha256_file(straight / "model.safetensors")
    assert not (tmp_path / "chained" / "epoch-2.partial").exists()


def test_mfu_counts_every_gpu_attention_and_recompute():
    from agenttune.cluster.cost.flops import training_flops
    from agenttune.train.trainer import measured_mfu

    config = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "model_type": "llama"}
    shape = ModelShape.from_hf_config(config)
    rows = [4096] * 100
    tokens = sum(rows)
    plain = measured_mfu(config, tokens, rows, 3600.0, 4, {"device": "a100-80g"}, on_gpu=True,
                         grad_checkpointing=False, log=lambda m: None)
    assert plain["mfu_devices"] == 4 and plain["device_peak_flops"] == 312e12
    assert plain["mfu"] == pytest.approx(training_flops(shape, tokens, rows).total / (3600 * 4 * 312e12), rel=1e-5)
    ckpt = measured_mfu(config, tokens, rows, 3600.0, 4, {"device": "a100-80g"}, on_gpu=True,
                        grad_checkpointing=True, log=lambda m: None)
    assert 1.3 < ckpt["mfu"] / plain["mfu"] < 4 / 3  # the recomputed forward of the layers counts
    # A config that says CPU on a GPU job (or the reverse) records no MFU rather than a wrong one.
    said = []
    wrong = measured_mfu(config, tokens, rows, 3600.0, 1, {"device": "cpu", "device_peak_flops": 1e12},
                         on_gpu=True, grad_checkpointing=False, log=said.append)
    assert wrong["mfu"] is None and "MFU not recorded" in said[0]


def test_attention_falls_back_to_sdpa_and_says_why(monkeypatch):
    from agenttune.train.trainer import pick_attn_implementation

    said = []
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    assert pick_attn_implementation("auto", said.append, half_precision=True) == "sdpa"
    assert pick_attn_implementation("eager", said.append, half_precision=True) == "eager"
    assert said == ["attention: sdpa (flash-attn not installed)", "attention: eager (from config)"]
    monkeypatch.setitem(sys.modules, "flash_attn", type(sys)("flash_attn"))  # installed, but this machine has no GPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert pick_attn_implementation("auto", said.append, half_precision=True) == "sdpa"
    assert said[-1].endswith("no CUDA device)")


def test_flash_attention_only_for_bf16_training(monkeypatch):
    """flash-attn rejects fp32 inputs at the first forward: an fp32 job on a GPU node with flash-attn gets sdpa."""
    from agenttune.train.trainer import pick_attn_implementation

    said = []
    monkeypatch.setitem(sys.modules, "flash_attn", type(sys)("flash_attn"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert pick_attn_implementation("auto", said.append, half_precision=False) == "sdpa"
    assert said[-1] == "attention: sdpa (flash-attn needs bf16/fp16; this job runs in fp32)"
    assert pick_attn_implementation("auto", said.append, half_precision=True) == "flash_attention_2"


def test_explicit_flash_attention_that_cannot_run_is_an_error(monkeypatch):
    """`auto` falls back quietly (with a log line); an explicit flash_attention_2 must not: the user asked for it."""
    from agenttune.train.trainer import pick_attn_implementation

    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    with pytest.raises(ValueError, match=r"train.attn_implementation: flash_attention_2 .* not installed"):
        pick_attn_implementation("flash_attention_2", print, half_precision=True)
    monkeypatch.setitem(sys.modules, "flash_attn", type(sys)("flash_attn"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="evaluate.attn_implementation: .* no CUDA device"):
        pick_attn_implementation("flash_attention_2", print, True, key="evaluate.attn_implementation")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with pytest.raises(ValueError, match="runs in fp32"):
        pick_attn_implementation("flash_attention_2", print, half_precision=False)
    said = []
    assert pick_attn_implementation("flash_attention_2", said.append, half_precision=True) == "flash_attention_2"
    assert said == ["attention: flash_attention_2 (from config)"]


@pytest.mark.parametrize("precision, on_gpu, deepspeed, weights, bf16", [
    ("bf16", True, False, "float32", True),  # fp32 master weights and AdamW states, bf16 autocast
    ("bf16", True, True, "bfloat16", True),  # ZeRO keeps fp32 master weights of its own
    ("bf16", False, False, "float32", False),  # no bf16 on CPU
    ("fp32", True, False, "float32", False),
])
def test_bf16_training_keeps_fp32_weights_unless_zero_does(precision, on_gpu, deepspeed, weights, bf16):
    import torch

    from agenttune.train.trainer import training_precision

    assert training_precision({"precision": precision}, on_gpu, deepspeed) == (getattr(torch, weights), bf16)


def test_one_process_refuses_several_visible_gpus(tmp_path, monkeypatch, tiny_model_dir, shards):
    """launcher none with two GPUs in view: the Trainer would wrap the model in nn.DataParallel. Refused before any
    weight is loaded; a distributed rank (LOCAL_RANK set) sees its own GPU only and is not refused."""
    from agenttune.train.trainer import refuse_data_parallel

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match=r"2 GPUs are visible \(CUDA_VISIBLE_DEVICES=0,1\).*DataParallel"):
        train_epoch(tiny_model_dir, shards, None, tmp_path / "epoch-1", 1, CFG, seed=5, log=lambda m: None)
    assert not (tmp_path / "epoch-1").exists()
    refuse_data_parallel(world_size=1, distributed=True, visible_gpus=2)
    refuse_data_parallel(world_size=1, distributed=False, visible_gpus=1)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path, tiny_model_dir, smol_tokenizer, packed):
    """Llama-2's tokenizer has no pad token; the collators pad with eos (masked out, so which id does not matter)."""
    import shutil

    from transformers import AutoTokenizer

    from agenttune.tokenize.encoder import ChatEncoder
    from agenttune.tokenize.shards import shard_table, write_table_atomic
    from test_canonical import GOOD
    from test_tokenize import MULTI, render

    model_dir = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).pad_token_id is None
    kept = ChatEncoder.from_hf(smol_tokenizer).encode([render(GOOD, "react"), render(MULTI, "react"),
                                                      render(GOOD, "tool_call")], 4096)
    shard = tmp_path / "train-0.parquet"
    write_table_atomic(shard_table(kept, 700, packed), shard)
    cfg = dict(CFG, epochs=1, batch_size=2, grad_accum=1)
    metrics = train_epoch(model_dir, [shard], None, tmp_path / "epoch-1", 1, cfg, seed=5, log=lambda m: None)
    assert metrics["global_step"] >= 1 and metrics["mean_loss"] == metrics["mean_loss"]  # ran, finite
