"""Generation: greedy, batched with left padding and the KV cache, stopping at the template's stop sequences."""

from __future__ import annotations

import torch


def load_for_generation(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def truncate_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, stops: tuple[str, ...]) -> list[str]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        stop_strings=list(stops) if stops else None,
        tokenizer=tokenizer,
    )
    new = out[:, enc["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [truncate_at_stop(t, stops).strip() for t in texts]


def generate_all(model, tokenizer, prompts: list[str], max_new_tokens: int, stops: tuple[str, ...],
                 batch_size: int, log=print) -> list[str]:
    """Generate for every prompt; batches are formed from length-sorted prompts to waste little padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str | None] = [None] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        texts = generate_batch(model, tokenizer, [prompts[i] for i in idx], max_new_tokens, stops)
        for i, t in zip(idx, texts):
            outputs[i] = t
        log(f"generated {min(b + batch_size, len(order))}/{len(order)}")
    return outputs
