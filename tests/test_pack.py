"""Packing: best-fit decreasing, the packed-row collator, and the proof that a packed sample computes exactly what it
computes alone (logits and loss) on the SmolLM2 architecture with a tiny config."""

import json
import random

import pytest
import torch

from agenttune.tokenize.encoder import IGNORE_INDEX, ChatEncoder
from agenttune.tokenize.pack import (PackedCollator, best_fit_decreasing, block_causal_mask, make_collator,
                                     shards_are_packed)
from agenttune.tokenize.shards import shard_table, write_table_atomic

from test_canonical import GOOD
from test_tokenize import MULTI, render


# --- best-fit decreasing ------------------------------------------------------------------------------------------


def test_bfd_places_every_item_once_within_capacity():
    rng = random.Random(1)
    lengths = [rng.randint(1, 900) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert best_fit_decreasing(lengths, 1024) == bins  # deterministic
    # Near the lower bound ceil(sum / capacity): BFD leaves little room.
    assert len(bins) <= -(-sum(lengths) // 1024) * 1.03 + 1


def test_bfd_fills_the_tightest_row():
    # Decreasing: 6, 5, 4, 3, 2. Best fit puts 4 with 6 (free 0) rather than with 5, then 3+2 with 5.
    assert best_fit_decreasing([3, 6, 5, 2, 4], 10) == [[1, 4], [2, 0, 3]]


def test_bfd_refuses_items_that_cannot_fit():
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([5, 11], 10)


# --- the collator -------------------------------------------------------------------------------------------------


def test_mask_is_block_diagonal_and_causal():
    mask = block_causal_mask([[2, 3], [4]], 5, torch.float32)
    allowed = (mask == 0)[:, 0]
    expect0 = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert torch.equal(allowed[0].long(), expect0)
    # Row 1: one sample of 4, then a padding position that attends only to itself.
    assert torch.equal(allowed[1, :4, :4].long(), torch.ones(4, 4).tril().long())
    assert allowed[1, 4].tolist() == [False, False, False, False, True]
    assert mask.min() == torch.finfo(torch.float32).min


def test_collator_restarts_positions_and_masks_boundary_labels():
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lens": [2, 3]},
            {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3], "seq_lens": [3]}]
    batch = PackedCollator(0, "mask")(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, -100, 8, 9], [-100, 2, 3, -100, -100]]
    assert batch["attention_mask"].shape == (2, 1, 5, 5)
    flat = PackedCollator(0, "position_ids")(rows)
    assert "attention_mask" not in flat
    assert flat["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3]]
    assert flat["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2]]
    assert flat["labels"].tolist() == [[-100, 6, -100, 8, 9, -100, 2, 3]]
    with pytest.raises(ValueError, match="do not add up"):
        PackedCollator(0)([{"input_ids": [1, 2], "labels": [1, 2], "seq_lens": [3]}])


def test_make_collator_follows_the_shards_flag(tmp_path, smol_tokenizer):
    encoder = ChatEncoder.from_hf(smol_tokenizer)
    kept = encoder.encode([render(GOOD, "react"), render(MULTI, "openai_json")], 4096)
    packed, plain = tmp_path / "packed.parquet", tmp_path / "plain.parquet"
    write_table_atomic(shard_table(kept, 4096, True), packed)
    write_table_atomic(shard_table(kept, 4096, False), plain)
    assert shards_are_packed([packed]) and not shards_are_packed([plain])
    assert make_collator([plain], 0, "sdpa") is None
    assert make_collator([packed], 0, "sdpa").mode == "mask"
    assert make_collator([packed], 0, "flash_attention_2").mode == "position_ids"
    with pytest.raises(ValueError, match="mix packed and unpacked"):
        shards_are_packed([packed, plain])


# --- no cross-contamination on the real architecture ---------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(smol_tokenizer):
    encoder = ChatEncoder.from_hf(smol_tokenizer)
    samples = [render(GOOD, "react"), render(MULTI, "tool_call"), render(GOOD, "autogpt")]
    out = encoder.encode(samples, 4096)
    return [{"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist()} for e in out]


def _sum_loss(logits, labels):
    """Summed next-token cross-entropy over trained positions (the model's own shift)."""
    logits, labels = logits[:-1], torch.as_tensor(labels[1:])
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_sample_equals_the_sample_alone(tiny_model_dir, encoded, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"  # SmolLM2's architecture
    row = {"input_ids": sum((e["input_ids"] for e in encoded), []), "labels": sum((e["labels"] for e in encoded), []),
           "seq_lens": [len(e["input_ids"]) for e in encoded]}
    shorter = {"input_ids": encoded[1]["input_ids"], "labels": encoded[1]["labels"],
               "seq_lens": [len(encoded[1]["input_ids"])]}
    batch = PackedCollator(2, "mask")([row, shorter])
    with torch.no_grad():
        packed = model(**batch)
        start = 0
        total_loss, total_tokens = 0.0, 0
        for e in encoded:
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]]))
            inside = packed.logits[0, start:start + n]
            assert torch.allclose(inside, alone.logits[0], atol=1e-5), (attn, start)
            # Loss of the sample alone == its loss inside the packed row.
            loss_alone = _sum_loss(alone.logits[0], e["labels"])
            loss_inside = _sum_loss(inside, e["labels"])
            assert torch.allclose(loss_alone, loss_inside, rtol=1e-5)
            total_loss += loss_alone.item()
            total_tokens += sum(1 for l in e["labels"][1:] if l != IGNORE_INDEX)
            start += n
        # The padded second row computes its sample exactly too.
        alone = model(input_ids=torch.tensor([encoded[1]["input_ids"]])).logits[0]
        assert torch.allclose(packed.logits[1, :len(encoded[1]["input_ids"])], alone, atol=1e-5)
        total_loss += _sum_loss(alone, encoded[1]["labels"]).item()
        total_tokens += sum(1 for l in encoded[1]["labels"][1:] if l != IGNORE_INDEX)
        # The model's batch loss is the token-weighted mean over all samples, as with unpacked batches.
        assert packed.loss.item() == pytest.approx(total_loss / total_tokens, rel=1e-5)

        # Control: restarting position_ids without the mask lets the later samples see the earlier ones.
        leaky = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1]).logits[0]
        n0, n1 = len(encoded[0]["input_ids"]), len(encoded[1]["input_ids"])
        alone = model(input_ids=torch.tensor([encoded[1]["input_ids"]])).logits[0]
        assert (leaky[n0:n0 + n1] - alone).abs().max() > 1e-2


def test_training_runs_on_packed_shards(tmp_path, tiny_model_dir, smol_tokenizer):
    from agenttune.train.trainer import train_epoch

    encoder = ChatEncoder.from_hf(smol_tokenizer)
    samples = [render(t, name) for t in (GOOD, MULTI) for name in ("react", "openai_json", "autogpt", "tool_call")]
    kept = encoder.encode(samples, 1024)
    path = tmp_path / "train-0.parquet"
    write_table_atomic(shard_table(kept, 1024, True), path)
    cfg = {"epochs": 1, "learning_rate": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0,
           "batch_size": 2, "grad_accum": 1, "tuning": "full", "precision": "fp32", "attn_implementation": "sdpa"}
    metrics = train_epoch(tiny_model_dir, [path], None, tmp_path / "epoch-1", 1, cfg, seed=3, log=lambda m: None)
    assert metrics["tokens"] == sum(len(e.input_ids) for e in kept)
    assert metrics["global_step"] >= 1 and metrics["mean_loss"] == metrics["mean_loss"]  # ran, finite
    assert json.loads((tmp_path / "epoch-1" / "metrics.json").read_text())["epoch"] == 1


def test_loading_refuses_a_row_longer_than_its_shard_records(tmp_path, encoded):
    from agenttune.tokenize.encoder import Encoded
    from agenttune.tokenize.load import load_shards

    kept = [Encoded(f"s{i}", torch.tensor(e["input_ids"]).numpy(), torch.tensor(e["labels"]).numpy(), False)
            for i, e in enumerate(encoded)]
    path = tmp_path / "train-0.parquet"
    write_table_atomic(shard_table(kept, 4096, False), path)
    assert len(load_shards([path])) == len(kept)
    short = min(len(e["input_ids"]) for e in encoded)
    write_table_atomic(shard_table(kept, short, False), path)  # a shard claiming rows of at most `short` tokens
    with pytest.raises(ValueError, match=rf"train-0.parquet: row s\d has \d+ tokens, more than the max_len {short}"):
        load_shards([path])
