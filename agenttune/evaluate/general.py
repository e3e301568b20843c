"""Evaluate stage, general ability: does tuning keep the model's general chat (AgentTuning's retention check)?

Takes: held-out general chat (the validation split's mixed-in general data, the held-out no-tool traces, or an
Alpaca-format file) and a model folder.
Gives: `general_items` -> the conversations whose final answer is measured; `general_loss` -> mean token loss and
perplexity of a model on those answers, with a bootstrap CI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from agenttune.common.atomic import iter_jsonl, read_jsonl
from agenttune.common.config import section_with_defaults

# The n-gram of contamination checks and the precision, where a caller does not give them: the schema's.
EVALUATE_DEFAULTS = section_with_defaults({}, "evaluate")


def general_items(source: str, max_items: int | None, seed: int, val_samples_path=None, test_samples_path=None,
                  traces_path=None, alpaca_path=None, train_samples_path=None, log=print) -> tuple[list[dict], dict]:
    """Held-out general chat conversations, each ending on the assistant answer whose loss is measured.

    - "auto": the validation split's mixed-in general chat (`"general": true` samples) if there is any, else
      "heldout_no_tool";
    - "heldout_no_tool": the held-out (val and test) traces that need no tool, as plain chat (their canonical user
      and assistant text, without any tool prompt): in the demo these are general questions answered directly;
    - "alpaca": records of an Alpaca-format file, skipping any whose instruction is also a training query.
    Returns the items and a description of where they came from (for the report).
    """
    import hashlib

    from agenttune.evaluate.items import TrainingQueries

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}\x1fgeneral\x1f{key}".encode()).hexdigest()

    items: list[dict] = []
    if source == "auto":
        general = [s for s in read_jsonl(val_samples_path) if s.get("general")]
        source = "general_val" if general else "heldout_no_tool"
    if source == "general_val":
        for s in read_jsonl(val_samples_path):
            if s.get("general"):
                msgs = [{"role": m["role"], "content": m["content"]} for m in s["messages"]]
                if msgs and msgs[-1]["role"] == "assistant":
                    items.append({"id": s["id"], "messages": msgs})
        what = "general chat mixed into the validation split (never trained on)"
    elif source == "heldout_no_tool":
        held = {s["trace_id"] for path in (val_samples_path, test_samples_path) for s in read_jsonl(path)
                if s["kind"] == "no_tool" and s["template"] != "passthrough"}
        for trace in iter_jsonl(traces_path):
            if trace["id"] not in held or any(m.get("tool_calls") for m in trace["messages"]):
                continue
            msgs = [{"role": m["role"], "content": m["content"]} for m in trace["messages"]
                    if m["role"] in ("system", "user", "assistant")]
            if msgs and msgs[-1]["role"] == "assistant" and msgs[-1]["content"].strip():
                items.append({"id": trace["id"], "messages": msgs})
        what = ("held-out (val + test) traces that need no tool, as plain chat without the tool prompt: the "
                "demo's direct answers to general questions")
    elif source == "alpaca":
        from agenttune.traces.readers import alpaca
        from agenttune.traces.readers.common import RawError

        training = (TrainingQueries(read_jsonl(train_samples_path), EVALUATE_DEFAULTS["decontaminate_ngram"])
                    if train_samples_path else None)
        skipped = 0
        for record in alpaca.records(Path(alpaca_path)):
            if isinstance(record.data, RawError):
                raise ValueError(f"{alpaca_path}:{record.line}: {record.data.reason}")
            trace = alpaca.to_trace(record.data, "alpaca")
            msgs = [{"role": m["role"], "content": m["content"]} for m in trace["messages"]]
            item = {"id": f"alpaca-{record.line}", "messages": msgs}
            if training and training.contamination({"prompt_messages": msgs[:-1]}):
                skipped += 1
                continue
            items.append(item)
        what = f"Alpaca-format file {alpaca_path} ({skipped} records left out: their query is in the training data)"
    else:
        raise KeyError(f"unknown general-chat source {source!r}")
    items.sort(key=lambda it: rank(it["id"]))
    if max_items:
        items = items[:max_items]
    items.sort(key=lambda it: it["id"])
    log(f"general chat: {len(items)} items from {source}")
    return items, {"source": source, "description": what, "items": len(items)}


def _answer_tokens(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """Token ids of the whole conversation and where the final answer starts (the answer includes the template's
    end-of-turn tokens: stopping is part of answering)."""
    context = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(context):
        raise ValueError("the chat template does not render the conversation as context + answer")
    ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ans_ids = tokenizer(full[len(context):], add_special_tokens=False)["input_ids"]
    return ctx_ids + ans_ids, len(ctx_ids)


def general_loss(model_dir: str | Path, items_path: str | Path, precision: str = EVALUATE_DEFAULTS["precision"],
                 log=print, attn_implementation: str = EVALUATE_DEFAULTS["attn_implementation"]) -> dict:
    """Mean token loss (nats) and perplexity of the model on the final answers of the general-chat items; the CI is
    a bootstrap over items of the token-weighted mean. The model is placed as the `hf` engine places it
    (agenttune.evaluate.placement: bf16 on GPUs when asked, layers spread over the job's GPUs); the result records
    dtype, attention implementation and devices."""
    import random

    import torch
    from transformers import AutoTokenizer

    from agenttune.evaluate.placement import load_placed_model, run_info

    items = read_jsonl(items_path)
    if not items:
        return {"items": 0, "tokens": 0, "loss": None, "perplexity": None, "loss_ci": None}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_placed_model(model_dir, precision, attn_implementation, log)
    device = model.device  # the first layers' device: accelerate's hooks move activations on from there
    per_item = []
    with torch.no_grad():
        for it in items:
            ids, start = _answer_tokens(tokenizer, it["messages"])
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, start - 1:-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, start:], reduction="sum").item()
            per_item.append((it["id"], nll, len(ids) - start))
    total_nll = sum(n for _, n, _ in per_item)
    total_tokens = sum(t for _, _, t in per_item)
    rng = random.Random(0)
    boots = []
    for _ in range(1000):
        sample = rng.choices(per_item, k=len(per_item))
        boots.append(sum(n for _, n, _ in sample) / max(1, sum(t for _, _, t in sample)))
    boots.sort()
    loss = total_nll / total_tokens
    log(f"general chat: loss {loss:.4f} (perplexity {math.exp(loss):.2f}) over {total_tokens} answer tokens")
    info = run_info(model, "hf")
    return {"items": len(per_item), "tokens": total_tokens, "loss": loss, "perplexity": math.exp(loss),
            "loss_ci": [boots[24], boots[974]],
            "run": {k: v for k, v in info.items() if k != "engine"},
            "per_item": [{"id": i, "nll": n, "tokens": t} for i, n, t in per_item]}
