"""DeepSpeed ZeRO-3 on one GPU (bf16): epoch 1, epoch 2 resumed from it, and both epochs in one job, started by the
project's launch command as the train rule starts them (tests/test_deepspeed.py does the same on CPU). Skipped where
DeepSpeed is not installed.

Resume is checked by the step count, the learning-rate schedule and loadable weights. Bit-identity of the chained
and the uninterrupted weights is asserted on CPU (as tests/test_deepspeed.py does) and recorded on a GPU, where
some CUDA kernels are not deterministic run to run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from . import suite

pytestmark = suite.MARKS

ZERO3 = dict(suite.TRAIN_CFG, epochs=2, lr_scheduler="cosine", warmup_ratio=0.1, batch_size=1, grad_accum=2,
             deepspeed={"stage": 3})


def _lrs(folder: Path):
    state = json.loads((folder / "trainer_state.json").read_text())
    return [(r["step"], r["learning_rate"]) for r in state["log_history"] if "learning_rate" in r]


def test_zero3_one_gpu_save_and_resume(tmp_path, base_model_dir, measurements):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed here (ZeRO-3 needs it; tests/test_deepspeed.py covers CPU)")
    from training_data import write_shards  # tests/training_data.py

    from agenttune.cluster.launch_plan import LaunchPlan
    from agenttune.common.manifest import sha256_file
    from agenttune.train import deepspeed as ds
    from agenttune.train.launch import launch_command, launch_environment, run_command
    from agenttune.train.trainer import write_job_spec

    shards = write_shards(tmp_path / "shards", rows_per_shard=4)  # 8 rows: 4 optimizer steps per epoch
    plan = LaunchPlan("none")

    def launch(prev, out, epoch, uninterrupted=False):
        spec = write_job_spec(Path(str(out) + ".launch.json"), base_model_dir, shards, prev, out, epoch, ZERO3,
                              suite.SEED, suite.compute(), uninterrupted=uninterrupted)
        env = {**launch_environment(plan, threads=4, on_gpu=suite.ON_GPU, deepspeed=True),
               "TORCH_EXTENSIONS_DIR": str(suite.REPO / ".cache" / "torch_extensions")}
        return run_command(launch_command(plan, spec), env)

    e1, e2, straight = tmp_path / "chained" / "epoch-1", tmp_path / "chained" / "epoch-2", tmp_path / "straight"
    assert launch(None, e1, 1) == 0
    assert launch(e1, e2, 2) == 0
    assert launch(None, straight, 2, uninterrupted=True) == 0

    m1, m2 = (json.loads((e / "metrics.json").read_text()) for e in (e1, e2))
    same_weights = sha256_file(e2 / "model.safetensors") == sha256_file(straight / "model.safetensors")
    from safetensors.torch import load_file

    a, b = load_file(e2 / "model.safetensors"), load_file(straight / "model.safetensors")
    max_diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    measurements.record("zero3_one_gpu", {
        "epoch1": {k: m1.get(k) for k in ("global_step", "precision", "deepspeed_stage", "tokens_per_s", "mfu",
                                          "peak_memory_bytes", "attn_implementation")},
        "epoch2_global_step": m2["global_step"], "chained_equals_uninterrupted_bitwise": same_weights,
        "chained_vs_uninterrupted_max_abs_diff": max_diff})
    assert m1["deepspeed_stage"] == m2["deepspeed_stage"] == 3 and m2["world_size"] == 1
    assert m1["precision"] == suite.expected_precision("bf16")
    assert m1["global_step"] == 4 and m2["global_step"] == 8
    assert _lrs(e2) == _lrs(straight) and len(_lrs(e2)) == 8  # the schedule spans both epochs, resumed in step
    assert ds.zero_checkpoint_world_size(e2) == 1
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(e2, dtype=torch.float32)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[11, 12, 13, 14]])).logits).all()
    if not suite.ON_GPU:
        assert same_weights, max_diff
