"""What the model receives in real training, checked against what the shards say.

Token shards made by the tokenize stage's own code from the real SmolLM2 tokenizer go through `run_training` (HF
Trainer, the collators, DeepSpeed) in each training mode: plain full tuning, freeze tuning, ZeRO-3 on one rank and on
two ranks (started by the project's launch commands, in processes of their own). A probe (tests/probe/sitecustomize.py)
saves every batch as the model's forward gets it. Each batch row must be a shard row: the same tokens, labels with
each sample's first token out of the loss, positions restarting at every sample, and an attention mask that lets a
token see only earlier tokens of its own sample; every shard row is trained on exactly once per epoch.

A collator tested alone once passed while the Trainer dropped the packed rows' `seq_lens` before the collator ran
(`remove_unused_columns`), so that packed samples attended to each other in every real run.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from agenttune.cluster.launch_plan import LaunchPlan
from agenttune.train.launch import find_free_port, launch_command, launch_environment, run_command
from agenttune.tokenize.encoder import IGNORE_INDEX, ChatEncoder
from agenttune.tokenize.load import load_shards
from agenttune.tokenize.shards import shard_table, write_table_atomic
from agenttune.train.trainer import run_training, write_job_spec

from test_canonical import GOOD
from test_tokenize import MULTI, render

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "probe"
SEED = 11
CFG = {"epochs": 1, "learning_rate": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0,
       "batch_size": 2, "grad_accum": 1, "tuning": "full", "precision": "fp32", "attn_implementation": "sdpa"}
TEMPLATES = ("react", "openai_json", "autogpt", "tool_call")


@pytest.fixture(scope="module")
def encoded(smol_tokenizer):
    encoder = ChatEncoder.from_hf(smol_tokenizer)
    samples = [render(t, name) for t in (GOOD, MULTI) for name in TEMPLATES]
    return encoder.encode(samples, 4096)


def _shards(folder: Path, encoded, packing: bool, max_len: int) -> list[Path]:
    """Two shards, as tokenize_shard writes them (half of the samples each)."""
    half = len(encoded) // 2
    paths = []
    for i, part in enumerate((encoded[:half], encoded[half:])):
        path = folder / f"train-{i}.parquet"
        write_table_atomic(shard_table(part, max_len, packing), path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def packed_shards(tmp_path_factory, encoded):
    paths = _shards(tmp_path_factory.mktemp("packed"), encoded, True, 700)
    rows = load_shards(paths)
    assert any(len(r["seq_lens"]) > 1 for r in rows), "the test needs rows holding several samples"
    assert len(rows) % 2 == 0, "two ranks must see every row once (no sampler padding)"
    return paths


@pytest.fixture(scope="module")
def unpacked_shards(tmp_path_factory, encoded):
    return _shards(tmp_path_factory.mktemp("unpacked"), encoded, False, 4096)


def _probe_in_process(monkeypatch, folder: Path) -> None:
    from transformers import Trainer

    spec = importlib.util.spec_from_file_location("agenttune_test_probe", PROBE / "sitecustomize.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    monkeypatch.setattr(Trainer, "compute_loss", Trainer.compute_loss)  # restored after the test
    probe.install(str(folder))


def _batches(folder: Path) -> list[dict]:
    files = sorted(folder.glob("rank*.pt"))
    assert files, f"the probe recorded no batch in {folder}"
    return [torch.load(f) for f in files]


def _match(row_ids: torch.Tensor, labels: torch.Tensor, rows: list[dict], pad: int) -> dict:
    """The shard row this batch row holds: its tokens come first, then only padding (pad id, no label)."""
    found = None
    for r in rows:
        n = len(r["input_ids"])
        if n <= len(row_ids) and row_ids[:n].tolist() == r["input_ids"] and bool((row_ids[n:] == pad).all()) \
                and bool((labels[n:] == IGNORE_INDEX).all()) and (found is None or n > len(found["input_ids"])):
            found = r
    assert found is not None, "a batch row is no shard row"
    return found


def _block_causal(lens: list[int]) -> torch.Tensor:
    n = sum(lens)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    start = 0
    for k in lens:
        allowed[start:start + k, start:start + k] = torch.ones(k, k, dtype=torch.bool).tril()
        start += k
    return allowed


def check_batches(batches: list[dict], shard_paths, pad: int) -> None:
    """Every recorded batch row against its shard row; every shard row once."""
    rows = load_shards(shard_paths)
    seen = []
    for batch in batches:
        ids, labels = batch["input_ids"], batch["labels"]
        for b in range(ids.shape[0]):
            row = _match(ids[b], labels[b], rows, pad)
            seen.append(row["id"])
            n, lens = len(row["input_ids"]), row.get("seq_lens") or [len(row["input_ids"])]
            expected_labels = list(row["labels"])
            starts = [sum(lens[:k]) for k in range(len(lens))]
            for s in starts:
                expected_labels[s] = IGNORE_INDEX
            got_labels = labels[b, :n].tolist()
            if len(lens) == 1 and "position_ids" not in batch:  # an unpacked row: the first label is shifted out anyway
                got_labels[0] = IGNORE_INDEX
            assert got_labels == expected_labels, row["id"]
            mask = batch["attention_mask"]
            if mask.dim() == 2:  # padding collator: one sample per row, plain causal attention over its tokens
                assert len(lens) == 1, f"{row['id']}: a packed row trained with a 2D mask (samples see each other)"
                assert mask[b, :n].eq(1).all() and mask[b, n:].eq(0).all()
                assert "position_ids" not in batch or batch["position_ids"][b, :n].tolist() == list(range(n))
                continue
            positions = batch["position_ids"][b, :n].tolist()
            assert positions == [p for k in lens for p in range(k)], f"{row['id']}: positions do not restart"
            allowed = mask[b, 0] == 0
            assert torch.equal(allowed[:n, :n], _block_causal(lens)), f"{row['id']}: mask is not block-diagonal"
            assert not allowed[:n, n:].any(), f"{row['id']}: a real token sees padding"
    assert sorted(seen) == sorted(r["id"] for r in rows), "every shard row is trained on once per epoch"


# --------------------------------------------------------------------------- one process (launcher: none)

@pytest.mark.parametrize("tuning", ["full", "freeze"])
def test_packed_rows_reach_the_model_with_their_boundaries(tmp_path, monkeypatch, tiny_model_dir, smol_tokenizer,
                                                           packed_shards, tuning):
    probe = tmp_path / "probe"
    probe.mkdir()
    _probe_in_process(monkeypatch, probe)
    cfg = dict(CFG, tuning=tuning, freeze_trainable_layers=1)
    run_training(tiny_model_dir, packed_shards, None, tmp_path / "epoch-1", 1, cfg, SEED, log=lambda m: None)
    check_batches(_batches(probe), packed_shards, smol_tokenizer.pad_token_id)


def test_unpacked_rows_reach_the_model_padded(tmp_path, monkeypatch, tiny_model_dir, smol_tokenizer,
                                              unpacked_shards):
    probe = tmp_path / "probe"
    probe.mkdir()
    _probe_in_process(monkeypatch, probe)
    run_training(tiny_model_dir, unpacked_shards, None, tmp_path / "epoch-1", 1, CFG, SEED, log=lambda m: None)
    check_batches(_batches(probe), unpacked_shards, smol_tokenizer.pad_token_id)


def test_first_step_loss_of_a_packed_row_equals_the_unpacked_batch(tmp_path, tiny_model_dir, encoded):
    """Two samples as one packed row (batch 1) and as two padded rows (batch 2): the same samples in one optimizer
    step, so the same loss (the token-weighted mean over both). Attending across the samples changes it."""
    pair = sorted(encoded, key=lambda e: len(e.input_ids))[:2]
    packed = tmp_path / "packed" / "train-0.parquet"
    write_table_atomic(shard_table(pair, 4096, True), packed)
    unpacked = tmp_path / "unpacked" / "train-0.parquet"
    write_table_atomic(shard_table(pair, 4096, False), unpacked)
    assert [len(r["seq_lens"]) for r in load_shards([packed])] == [2]

    def first_loss(shard, batch_size):
        cfg = dict(CFG, batch_size=batch_size)
        m = run_training(tiny_model_dir, [shard], None, shard.parent / "epoch-1", 1, cfg, SEED, log=lambda m: None)
        assert m["global_step"] == 1
        return m["loss_curve"][0]["loss"]

    assert first_loss(packed, 1) == pytest.approx(first_loss(unpacked, 2), rel=1e-5)


def test_the_trainer_keeps_seq_lens_for_flash_attention_varlen(tmp_path, tiny_model_dir, smol_tokenizer,
                                                                packed_shards):
    """flash_attention_2 (GPU) takes the position_ids route: the batch flattened into one row whose positions
    restart at every sample. Checked through the Trainer's own data loader (no GPU here to run the forward)."""
    from transformers import AutoModelForCausalLM, Trainer

    from agenttune.common.config import section_with_defaults
    from agenttune.train.trainer import TokenizedDataset, training_arguments, training_collator

    rows = sorted(load_shards(packed_shards), key=lambda r: r["id"])
    args = training_arguments(section_with_defaults(CFG, "train"), tmp_path / "work", SEED, on_gpu=False,
                              world_size=1, bf16=False, ds_config=None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    collator = training_collator(packed_shards, smol_tokenizer.pad_token_id, "flash_attention_2", torch.float32)
    trainer = Trainer(model=model, args=args, train_dataset=TokenizedDataset(rows), data_collator=collator)
    seen = []
    for batch in trainer.get_train_dataloader():
        assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
        ids, pos, labels = (batch[k][0].tolist() for k in ("input_ids", "position_ids", "labels"))
        covered = 0
        while covered < len(ids):  # the flattened row is the batch's shard rows side by side
            row = max((r for r in rows if ids[covered:covered + len(r["input_ids"])] == r["input_ids"]),
                      key=lambda r: len(r["input_ids"]))
            n, lens = len(row["input_ids"]), row["seq_lens"]
            assert pos[covered:covered + n] == [p for k in lens for p in range(k)], row["id"]
            for s in (covered + sum(lens[:k]) for k in range(len(lens))):
                assert labels[s] == IGNORE_INDEX  # no sample's first token is a target of the one before
            seen.append(row["id"])
            covered += n
    assert sorted(seen) == [r["id"] for r in rows]


# --------------------------------------------------------------------------- ZeRO-3, ranks in processes of their own

@pytest.mark.parametrize("plan", [LaunchPlan("none"), LaunchPlan("torchrun", 1, 2)], ids=["1-rank", "2-ranks"])
def test_zero3_ranks_receive_the_shards_rows(tmp_path, tiny_model_dir, smol_tokenizer, packed_shards, plan):
    probe = tmp_path / "probe"
    probe.mkdir()
    out = tmp_path / "epoch-1"
    cfg = dict(CFG, batch_size=1, deepspeed={"stage": 3}, launcher=plan.launcher, nodes=plan.nodes,
               nproc_per_node=plan.nproc_per_node)
    spec = write_job_spec(Path(str(out) + ".launch.json"), tiny_model_dir, packed_shards, None, out, 1, cfg, SEED)
    env = {**launch_environment(plan, threads=2, on_gpu=False, deepspeed=True),
           "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "AGENTTUNE_PROBE_DIR": str(probe),
           "PYTHONPATH": os.pathsep.join([str(PROBE), os.environ.get("PYTHONPATH", "")])}
    if plan.launcher == "none":
        env["MASTER_PORT"] = str(find_free_port())
    assert run_command(launch_command(plan, spec), env) == 0
    assert json.loads((out / "metrics.json").read_text())["world_size"] == plan.world_size
    batches = _batches(probe)
    assert {f.name.split("-")[0] for f in probe.glob("*.pt")} == {f"rank{r}" for r in range(plan.world_size)}
    check_batches(batches, packed_shards, smol_tokenizer.pad_token_id)
