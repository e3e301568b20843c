"""DeepSpeed ZeRO-3, for real on CPU (gloo): the generated config, one and two ranks, save, resume, kill, export.

The runs go through the project's own launch commands (agenttune.train.launch) in subprocesses, as the train rule runs them:
one rank with no launcher; two ranks with torchrun, with one rank per task under srun (tests/fake_slurm.py stands in
for srun/scontrol), with torchrun on two "nodes" under srun, and with the DeepSpeed launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import fake_slurm
from training_data import CFG, write_shards

from agenttune.train import deepspeed as ds
from agenttune.cluster.launch_plan import LaunchPlan
from agenttune.train.launch import find_free_port, launch_command, launch_environment, run_command
from agenttune.common.manifest import sha256_file
from agenttune.train.trainer import write_job_spec

REPO = Path(__file__).resolve().parents[1]
ZERO3 = dict(CFG, deepspeed={"stage": 3})
COMPUTE = {"device": "cpu", "devices": 1, "device_peak_flops": 1.6e11}
SEED = 5


# --------------------------------------------------------------------------- the generated config

def _train(**over):
    return dict(ZERO3, **over)


def test_cpu_config_is_fp32_zero3_with_gathered_weights():
    cfg = ds.zero3_config(_train(precision="bf16", batch_size=1, grad_accum=8, max_grad_norm=0.5), 64, on_gpu=False)
    assert cfg["bf16"] == {"enabled": False} and cfg["fp16"] == {"enabled": False}
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
    assert cfg["train_micro_batch_size_per_gpu"] == 1 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["gradient_clipping"] == 0.5
    assert "offload_optimizer" not in zero and "offload_param" not in zero and "optimizer" not in cfg
    ds.validate_with_deepspeed(cfg)


@pytest.mark.parametrize("hidden, reduce, prefetch, persist", [
    (4096, 16_777_216, 15_099_494, 40_960),   # Llama-2-7B
    (5120, 26_214_400, 23_592_960, 51_200),   # Qwen1.5-14B
    (8192, 67_108_864, 60_397_977, 81_920),   # Qwen2-72B
])
def test_buckets_scale_with_hidden_size(hidden, reduce, prefetch, persist):
    cfg = ds.zero3_config(_train(precision="bf16"), hidden, on_gpu=True)
    zero = cfg["zero_optimization"]
    assert cfg["bf16"] == {"enabled": True}
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_param_persistence_threshold"]) == (reduce, prefetch, persist)
    ds.validate_with_deepspeed(cfg)


def test_offload_uses_deepspeed_cpu_adam_with_the_trainer_hyperparameters():
    cfg = ds.zero3_config(_train(precision="bf16", learning_rate=2e-5, weight_decay=0.1,
                                 deepspeed={"stage": 3, "offload_optimizer": True, "offload_params": True}),
                          4096, on_gpu=True)
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert cfg["optimizer"] == {"type": "AdamW", "params": {"lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-8,
                                                             "weight_decay": 0.1}}
    ds.validate_with_deepspeed(cfg)


@pytest.mark.parametrize("block, words", [
    ({"stage": 2}, "only ZeRO stage 3"),
    ({"stage": 3, "offload_params": True}, "needs offload_optimizer"),
])
def test_bad_deepspeed_blocks_are_refused(block, words):
    with pytest.raises(ValueError, match=words):
        ds.zero3_config(_train(deepspeed=block), 64, on_gpu=False)


# --------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("zero-shards"))


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory):
    return fake_slurm.install(tmp_path_factory.mktemp("fake-slurm-bin"))


def _launch(plan: LaunchPlan, model, shards, prev, out, epoch, *, uninterrupted=False, extra_env=None,
            on_started=None) -> int:
    """Start the ranks of one job with the project's launch command; returns the launcher's exit code."""
    spec = write_job_spec(Path(str(out) + ".launch.json"), model, shards, prev, out, epoch,
                          dict(ZERO3, launcher=plan.launcher, nodes=plan.nodes, nproc_per_node=plan.nproc_per_node,
                               master_port=plan.master_port),
                          SEED, COMPUTE, uninterrupted=uninterrupted)
    env = {**launch_environment(plan, threads=2, on_gpu=False, deepspeed=True),
           "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), **(extra_env or {})}
    return run_command(launch_command(plan, spec), env)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, tiny_model_dir, shards):
    root = tmp_path_factory.mktemp("zero-1rank")
    plan = LaunchPlan("none")
    e1, e2, straight = root / "chained" / "epoch-1", root / "chained" / "epoch-2", root / "straight" / "epoch-2"
    assert _launch(plan, tiny_model_dir, shards, None, e1, 1) == 0
    sha_e1 = sha256_file(e1 / "model.safetensors")
    assert _launch(plan, tiny_model_dir, shards, e1, e2, 2) == 0
    assert _launch(plan, tiny_model_dir, shards, None, straight, 2, uninterrupted=True) == 0
    return {"e1": e1, "e2": e2, "straight": straight, "sha_e1_before_e2": sha_e1}


def _lrs(folder):
    state = json.loads((folder / "trainer_state.json").read_text())
    return [(r["step"], r["learning_rate"]) for r in state["log_history"] if "learning_rate" in r]


def test_one_rank_zero3_chained_epochs_equal_an_uninterrupted_run(one_rank):
    e1, e2, straight = one_rank["e1"], one_rank["e2"], one_rank["straight"]
    assert sha256_file(e1 / "model.safetensors") == one_rank["sha_e1_before_e2"]  # epoch 2 left epoch 1 intact
    assert sha256_file(e2 / "model.safetensors") == sha256_file(straight / "model.safetensors")
    assert sha256_file(e1 / "model.safetensors") != sha256_file(e2 / "model.safetensors")
    assert _lrs(e2) == _lrs(straight) and len(_lrs(e2)) == 12
    assert ds.zero_checkpoint_world_size(e2) == 1
    m = json.loads((e2 / "metrics.json").read_text())
    assert m["world_size"] == 1 and m["deepspeed_stage"] == 3 and m["global_step"] == 12
    assert m["mfu_convention"] == "agenttune.cost" and 0 < m["mfu"] < 1
    written = json.loads((e2 / ds.CONFIG_NAME).read_text())
    assert written == ds.zero3_config(ZERO3, 64, on_gpu=False)


def test_epoch_folder_loads_with_plain_transformers_and_equals_the_zero_state(one_rank, tmp_path):
    e2 = one_rank["e2"]
    # Plain transformers in a process where DeepSpeed cannot even be imported.
    probe = ("import sys; sys.modules['deepspeed'] = None\n"
             "import torch; from transformers import AutoModelForCausalLM\n"
             f"m = AutoModelForCausalLM.from_pretrained({str(e2)!r})\n"
             "x = torch.tensor([[11, 12, 13, 14]])\n"
             "print('LOGITS', m(x).logits.sum().item())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOGITS" in out.stdout

    # DeepSpeed's zero_to_fp32 of the rank shards gives the same weights as the gathered model.safetensors.
    from safetensors.torch import load_file

    exported = tmp_path / "exported"
    shutil.copytree(e2, exported)
    (exported / "model.safetensors").unlink()
    assert not ds.has_plain_weights(exported)
    assert ds.main(["export", str(exported)]) == 0
    gathered, consolidated = load_file(e2 / "model.safetensors"), load_file(exported / "model.safetensors")
    assert set(gathered) == set(consolidated)
    for name, tensor in gathered.items():
        assert tensor.dtype == consolidated[name].dtype and tensor.equal(consolidated[name]), name


def test_resume_refuses_a_different_world_size_or_a_plain_checkpoint(one_rank, tmp_path, tiny_model_dir, shards):
    from agenttune.train.trainer import train_epoch

    with pytest.raises(ValueError, match="saved by 1 ZeRO rank.* this job has 2"):
        ds.check_resumable(one_rank["e1"], use_deepspeed=True, world_size=2)
    with pytest.raises(ValueError, match="train.deepspeed is not set"):
        train_epoch(tiny_model_dir, shards, one_rank["e1"], tmp_path / "e2", 2, CFG, SEED, log=lambda m: None)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "optimizer.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="saved without DeepSpeed"):
        ds.check_resumable(plain, use_deepspeed=True, world_size=1)


def _kill_when(proc: subprocess.Popen, marker: str, lines: list[str], timeout: float = 400) -> bool:
    """Read proc's output until `marker` appears, then SIGKILL proc and every process below it."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            below = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            proc.wait()
            _, alive = psutil.wait_procs(below, timeout=30)
            assert not alive, f"ranks outlived their killed job: {alive}"
            return True
        if time.monotonic() > deadline:
            break
    proc.kill()
    return False


def test_two_ranks_zero3_chained_with_a_killed_job_equal_an_uninterrupted_run(tmp_path, tiny_model_dir, shards,
                                                                              fake_bin):
    e1, e2 = tmp_path / "chained" / "epoch-1", tmp_path / "chained" / "epoch-2"
    straight = tmp_path / "straight" / "epoch-2"

    # Epoch 1: torchrun, one node, two ranks.
    assert _launch(LaunchPlan("torchrun", 1, 2), tiny_model_dir, shards, None, e1, 1) == 0
    assert ds.zero_checkpoint_world_size(e1) == 2
    sha_e1 = sha256_file(e1 / "model.safetensors")

    # Epoch 2, first try: one rank per Slurm task (srun), killed with SIGKILL in the middle of the epoch. The job
    # here is the process that runs the launcher, as the train rule's script does.
    spec = write_job_spec(Path(str(e2) + ".launch.json"), tiny_model_dir, shards, e1, e2, 2,
                          dict(ZERO3, launcher="srun", nproc_per_node=2), SEED, COMPUTE)
    job = ("import sys; from agenttune.train.launch import *; from agenttune.cluster.launch_plan import LaunchPlan\n"
           f"plan = LaunchPlan('srun', 1, 2, {find_free_port()})\n"
           f"sys.exit(run_command(launch_command(plan, {str(spec)!r}), "
           "launch_environment(plan, 2, False, True)))\n")
    env = {**os.environ, **fake_bin, "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
    lines: list[str] = []
    proc = subprocess.Popen([sys.executable, "-c", job], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    killed = _kill_when(proc, "epoch 2: step 4/6", lines)
    assert killed, "".join(lines[-40:])
    assert not e2.exists(), "a killed job left an epoch folder that Snakemake would accept"
    assert sha256_file(e1 / "model.safetensors") == sha_e1
    assert "--ntasks=2" in (Path(fake_bin["FAKE_SLURM_LOG"]).read_text())

    # Epoch 2 again: torchrun started by srun on two "nodes", one rank each, c10d rendezvous at the first node.
    rerun = LaunchPlan("torchrun", 2, 1, find_free_port())
    assert _launch(rerun, tiny_model_dir, shards, e1, e2, 2, extra_env=fake_bin) == 0
    assert not Path(str(e2) + ".partial").exists()

    # The reference: both epochs in one job, started by the DeepSpeed launcher.
    assert _launch(LaunchPlan("deepspeed", 1, 2), tiny_model_dir, shards, None, straight, 2, uninterrupted=True) == 0

    assert sha256_file(e2 / "model.safetensors") == sha256_file(straight / "model.safetensors")
    assert _lrs(e2) == _lrs(straight) and len(_lrs(e2)) == 6
    assert ds.zero_checkpoint_world_size(e2) == ds.zero_checkpoint_world_size(straight) == 2
    m = json.loads((e2 / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["global_step"] == 6 and m["tokens"] > 0
