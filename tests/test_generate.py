"""Generation: batched outputs are identical to one-by-one outputs (tokens, text, finish reason), stop strings and
eos end a row, the two fixes behind the identity (row-wise attention, row-count-invariant matmuls) hold, and where
the identity is not guaranteed (a GPU, a linear shape without a row block) loading falls back to the hf engine."""

from __future__ import annotations

import pytest
import torch

from agenttune.evaluate.generate import (
    Generation,
    choose_engine,
    generate,
    invariant_row_block,
    load_for_generation,
    truncate_at_stop,
)
from conftest import TINY_SHAPE


def chat_prompts(tokenizer, n: int) -> list[str]:
    """Chat-formatted prompts of clearly different lengths (left padding must matter)."""
    prompts = []
    for k in range(n):
        question = " ".join(["Please tell me about the weather in Oslo and Bergen."] * (1 + 3 * (k % 4)))
        msgs = [{"role": "system", "content": f"You are assistant number {k}."},
                {"role": "user", "content": f"{question} Request {k}."}]
        prompts.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    return prompts


@pytest.fixture(scope="module")
def tiny(lively_model_dir):
    # One thread: a tiny model gains nothing from two, and a busy machine makes two much slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_for_generation(lively_model_dir, log=lambda _m: None)
    torch.set_num_threads(threads)


def test_batched_equals_one_by_one_exactly(tiny):
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer, 6)
    single = generate(model, tokenizer, prompts, 20, (), 1, log=lambda _m: None)
    # Per-prompt stop strings taken from what each prompt generates alone, so rows stop at different steps and
    # waiting prompts join the batch mid-decode (continuous batching) — the hardest case for equality.
    stops = []
    for k, g in enumerate(single):
        text = g.text
        stops.append((text[len(text) // 2: len(text) // 2 + 3],) if k % 2 and len(text.strip()) > 6 else ())
    reference = generate(model, tokenizer, prompts, 20, stops, 1, log=lambda _m: None)
    assert any(g.finish_reason == "stop" for g in reference), [g.finish_reason for g in reference]
    assert len({g.tokens for g in reference}) > 1, "rows should finish at different steps"
    for batch_size in (3, 8):
        batched = generate(model, tokenizer, prompts, 20, stops, batch_size, log=lambda _m: None)
        assert batched == reference, f"batch_size {batch_size}"


def test_rowwise_forward_is_bitwise_equal_to_each_row_alone(tiny):
    """The mechanism: last-token logits of a left-padded batch equal those of each prompt run alone, bit for bit."""
    from transformers import DynamicCache

    model, tokenizer = tiny
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chat_prompts(tokenizer, 3)]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    positions = torch.tensor([[0] * (width - len(r)) + list(range(len(r))) for r in rows])
    with torch.no_grad():
        batch = model(input_ids=ids, position_ids=positions, logits_to_keep=1,
                      pad_starts=[width - len(r) for r in rows], past_key_values=DynamicCache(config=model.config))
        for b, r in enumerate(rows):
            alone = model(input_ids=torch.tensor([r]), logits_to_keep=1, pad_starts=[0],
                          past_key_values=DynamicCache(config=model.config))
            assert torch.equal(batch.logits[b, -1], alone.logits[0, -1]), f"row {b}"


def test_linear_layers_give_each_row_the_same_bits_whatever_the_row_count(tiny):
    model, _ = tiny
    lin = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    block = invariant_row_block(lin.in_features, lin.out_features, threads=torch.get_num_threads())
    assert block is not None and block >= 1
    x = torch.randn(9, lin.in_features)
    with torch.no_grad():
        full = lin(x)
        for k in range(9):
            assert torch.equal(lin(x[k:k + 1]), full[k:k + 1]), f"row {k} alone differs from the batch"
        for n in (2, 5):
            assert torch.equal(lin(x[:n]), full[:n]), f"first {n} rows"
        # While prefilling (a prompt alone), the layer is plain nn.Linear.
        model._agenttune_phase.prefill = True
        try:
            assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
        finally:
            model._agenttune_phase.prefill = False


def test_slots_are_reused_as_rows_finish(tiny):
    """More prompts than slots, rows finishing at different steps: each row keeps its own slot until it finishes,
    and the freed slot is taken by the next prompt (the continuous batching of the exact engine)."""
    import agenttune.evaluate.generate as gen

    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer, 5)
    taken = []
    original = gen._SlotCache.put

    def put(self, row_cache):
        slot = original(self, row_cache)
        taken.append(slot)
        return slot

    gen._SlotCache.put = put
    try:
        out = generate(model, tokenizer, prompts, 9, (), 2, log=lambda _m: None)
    finally:
        gen._SlotCache.put = original
    assert len(out) == 5 and len(taken) >= 3, taken  # at least one slot was taken twice
    assert taken[:2] == [0, 1] and set(taken) == {0, 1}, taken
    assert out == generate(model, tokenizer, prompts, 9, (), 1, log=lambda _m: None)


def test_eos_max_new_tokens_and_stop_strings(tiny):
    model, tokenizer = tiny
    (prompt,) = chat_prompts(tokenizer, 1)
    (g,) = generate(model, tokenizer, [prompt], 5, (), 1, log=lambda _m: None)
    assert g.tokens == 5 and g.finish_reason == "length"
    (longer,) = generate(model, tokenizer, [prompt], 12, (), 1, log=lambda _m: None)
    assert longer.text.startswith(g.text)
    stop = longer.text[3:6]
    (cut,) = generate(model, tokenizer, [prompt], 12, (stop,), 1, log=lambda _m: None)
    assert cut.finish_reason == "stop" and stop not in cut.text and longer.text.startswith(cut.text)


def test_truncate_at_stop_takes_the_earliest():
    assert truncate_at_stop("a Observation: b <tool_response> c", ("<tool_response>", "Observation:")) == ("a ", True)
    assert truncate_at_stop("nothing here", ("Observation:",)) == ("nothing here", False)


def test_transformers_engine_gives_the_same_number_of_results(lively_model_dir):
    model, tokenizer = load_for_generation(lively_model_dir, engine="hf", log=lambda _m: None)
    prompts = chat_prompts(tokenizer, 3)
    out = generate(model, tokenizer, prompts, 6, [(), ("zz",), ()], 2, log=lambda _m: None)
    assert len(out) == 3 and all(isinstance(g, Generation) and 1 <= g.tokens <= 6 for g in out)


def test_exact_engine_is_chosen_on_cpu_only():
    assert choose_engine("exact", "cpu") == ("exact", None)
    assert choose_engine("hf", "cpu") == ("hf", None)
    assert choose_engine("hf", "cuda") == ("hf", None)
    engine, why = choose_engine("exact", "cuda")
    assert engine == "hf" and "CPU only" in why and "RMSNorm" in why


def assert_hf_engine_with_untouched_linears(model, tokenizer):
    assert model._agenttune_engine == "hf"
    assert model.config._attn_implementation == "sdpa"
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, torch.nn.Linear))
    (g,) = generate(model, tokenizer, chat_prompts(tokenizer, 1), 4, (), 2, log=lambda _m: None)
    assert isinstance(g, Generation) and 1 <= g.tokens <= 4


def test_on_cuda_the_exact_engine_falls_back_to_hf(tiny_model_dir, monkeypatch):
    """On a GPU, batch invariance is not verified (RMSNorm's reduction changes with the row count on CUDA): loading
    says so and uses transformers' generate(). Tested on CPU: CUDA is reported available, and moving the model to a
    device keeps it where it is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)
    logs = []
    model, tokenizer = load_for_generation(tiny_model_dir, log=logs.append)
    (line,) = [m for m in logs if "generate()" in m]
    assert "CPU only" in line, logs
    assert_hf_engine_with_untouched_linears(model, tokenizer)


def test_a_linear_shape_without_row_block_falls_back_to_hf(tiny_model_dir, monkeypatch):
    """The probe may find no row block (cuBLAS, an odd CPU BLAS): loading falls back instead of failing, naming
    the shape, and no layer stays patched. Only the MLP's down projection (the only linear reading the intermediate
    size) lacks a block, so the layers before it in the model would have been patched by a patch-as-you-probe."""
    import agenttune.evaluate.generate as gen

    intermediate = TINY_SHAPE["intermediate_size"]
    monkeypatch.setattr(gen, "invariant_row_block",
                        lambda in_features, out_features, *rest: None if in_features == intermediate else 1)
    logs = []
    model, tokenizer = load_for_generation(tiny_model_dir, log=logs.append)
    (line,) = [m for m in logs if "generate()" in m]
    assert f"down_proj ({intermediate}x" in line, logs
    assert_hf_engine_with_untouched_linears(model, tokenizer)
