"""Per-epoch training: a chained run (one call per epoch, resuming) ends bit-identical to an uninterrupted run."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agenttune.manifest import sha256_file
from agenttune.tokenize import IGNORE_INDEX, SHARD_SCHEMA
from agenttune.train import run_training, train_epoch

CFG = {"epochs": 2, "learning_rate": 1e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.0,
       "batch_size": 1, "grad_accum": 2, "tuning": "full", "precision": "fp32", "attn_implementation": "sdpa"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = random.Random(0)
    out = tmp_path_factory.mktemp("shards")
    paths = []
    for shard in range(2):
        rows = {k: [] for k in SHARD_SCHEMA.names}
        for i in range(6):
            n = rng.randint(12, 40)
            ids = [rng.randint(10, 2000) for _ in range(n)]
            labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2:]
            rows["id"].append(f"s{shard}-{i}")
            rows["input_ids"].append(ids)
            rows["labels"].append(labels)
            rows["n_tokens"].append(n)
            rows["n_trained"].append(n - n // 2)
        path = out / f"train-{shard}.parquet"
        pq.write_table(pa.table(rows, schema=SHARD_SCHEMA), path)
        paths.append(path)
    return paths


def _lrs(folder):
    state = json.loads((folder / "trainer_state.json").read_text())
    return [(r["step"], r["learning_rate"]) for r in state["log_history"] if "learning_rate" in r], state["global_step"]


def test_chained_epochs_equal_uninterrupted_run(tmp_path, tiny_model_dir, shards):
    e1 = tmp_path / "chained" / "epoch-1"
    e2 = tmp_path / "chained" / "epoch-2"
    m1 = train_epoch(tiny_model_dir, shards, None, e1, 1, CFG, seed=5, log=lambda m: None)
    m2 = train_epoch(tiny_model_dir, shards, e1, e2, 2, CFG, seed=5, log=lambda m: None)
    straight = tmp_path / "straight" / "epoch-2"
    run_training(tiny_model_dir, shards, None, straight, 2, CFG, seed=5, log=lambda m: None)

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
    assert not (tmp_path / "chained" / "epoch-2.partial").exists()


def test_epoch_folder_loads_without_the_trainer(tmp_path, tiny_model_dir, shards):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "epoch-1"
    train_epoch(tiny_model_dir, shards, None, out, 1, CFG, seed=5, log=lambda m: None)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2


def test_epoch_needs_previous_checkpoint(tmp_path, tiny_model_dir, shards):
    with pytest.raises(ValueError, match="needs the checkpoint of epoch 1"):
        train_epoch(tiny_model_dir, shards, None, tmp_path / "e2", 2, CFG, seed=5)
