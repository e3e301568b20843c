"""Evaluate stage: evaluation items -> generated predictions -> scores; and general-chat loss per model.

Takes: a benchmark's items (agenttune.benchmarks) and a model folder (the base model or an epoch checkpoint); for
general ability, a general-chat item file (`general_items`).
Gives:
- `predictions.jsonl`: one line per item: the item's identity and slices, the expected call, the raw output, the
  number of generated tokens and why generation stopped;
- in a separate step, so that changing λ or the fuzzy metric re-scores without regenerating, `scores.json`:
  Score = EM(tool name) + λ·fuzzy(arguments) with its parts, false-call / missed-call / malformed rates, bootstrap
  95% CIs, the same metrics per template, tool format, source, task and kind, and for BFCL items the AST
  accuracy per category (BFCL's rules, agenttune.score.bfcl_match);
- `general.json`: mean token loss and perplexity of the model on held-out general chat answers.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

from agenttune.parse import Call, parse
from agenttune.render import get_template
from agenttune.score import aggregate, bfcl_match, bfcl_multi_match, bootstrap_ci, score_step

SLICES = ("template", "tool_format", "source", "task", "kind")


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --- generation ---------------------------------------------------------------------------------------------------

PREDICTION_KEYS = ("id", "benchmark", "origin", "sample_id", "template", "tool_format", "source", "kind", "task",
                   "expected", "reference", "bfcl", "review")


def predict(model_dir: str | Path, items_path: str | Path, out_path: str | Path, cfg: dict, seed: int,
            log=print) -> dict:
    """Generate for every item (greedy; each item stops at its own template's stop strings); return stats."""
    import time

    import torch

    from agenttune.generate import generate, load_for_generation

    torch.manual_seed(seed)
    items = _read_jsonl(items_path)
    log(f"{len(items)} items from {items_path}, model {model_dir}")
    rows = []
    stats = {"items": len(items), "generated_tokens": 0, "wall_s": 0.0, "finish": {}}
    if items:
        model, tokenizer = load_for_generation(model_dir, cfg.get("precision", "fp32"), cfg.get("engine", "exact"), log)
        prompts = [tokenizer.apply_chat_template(it["prompt_messages"], tokenize=False, add_generation_prompt=True)
                   for it in items]
        stops = [tuple(get_template(it["template"]).STOP) for it in items]
        start = time.perf_counter()
        outs = generate(model, tokenizer, prompts, cfg["max_new_tokens"], stops, cfg["batch_size"], log)
        stats["wall_s"] = round(time.perf_counter() - start, 3)
        for it, g in zip(items, outs):
            rows.append({k: it[k] for k in PREDICTION_KEYS if k in it}
                        | {"output": g.text.strip(), "tokens": g.tokens, "finish": g.finish_reason})
            stats["generated_tokens"] += g.tokens
            stats["finish"][g.finish_reason] = stats["finish"].get(g.finish_reason, 0) + 1
        log(f"{stats['generated_tokens']} tokens in {stats['wall_s']:.1f} s "
            f"({stats['generated_tokens'] / max(stats['wall_s'], 1e-9):.1f} tokens/s)")
    _write_jsonl_atomic(Path(out_path), rows)
    return stats


# --- scoring ------------------------------------------------------------------------------------------------------

def bfcl_correct(bfcl: dict, template: str, output: str) -> tuple[bool, str]:
    """BFCL AST check of one output. irrelevance: right only when the model answers without a call (a malformed
    output is wrong, never an abstention); simple / multiple: exactly one call, matching; parallel(_multiple): the
    calls match the ground truth one to one, in any order."""
    parsed = parse(template, output)
    category = bfcl["category"]
    if category == "irrelevance":
        if parsed.status == "answer":
            return True, ""
        return False, "called a function" if parsed.status == "call" else f"malformed: {parsed.error}"
    if parsed.status != "call":
        return False, "no call" if parsed.status == "answer" else f"malformed: {parsed.error}"
    if category in ("simple", "multiple"):
        if len(parsed.calls) != 1:
            return False, f"expected 1 call, got {len(parsed.calls)}"
        return bfcl_match(parsed.calls[0], bfcl["ground_truth"][0], bfcl["functions"])
    return bfcl_multi_match(list(parsed.calls), bfcl["ground_truth"], bfcl["functions"])


def _rate_ci(values: list[float]) -> list[float] | None:
    return list(bootstrap_ci(values)) if values else None


def score_predictions(pred_path: str | Path, lam: float, fuzzy: str) -> dict:
    preds = _read_jsonl(pred_path)
    per_item, steps = [], []
    for p in preds:
        expected = Call(p["expected"]["name"], p["expected"]["arguments"]) if p["expected"] else None
        parsed = parse(p["template"], p["output"])
        s = score_step(expected, parsed, lam, fuzzy)
        steps.append(s)
        row = {"id": p["id"], **{k: p.get(k, "") for k in SLICES}, "status": parsed.status,
               "predicted": [{"name": c.name, "arguments": c.arguments} for c in parsed.calls],
               "em": s.em, "fuzzy": s.fuzzy, "score": s.score}
        if p.get("bfcl"):
            ok, why = bfcl_correct(p["bfcl"], p["template"], p["output"])
            row["bfcl_category"], row["bfcl_correct"], row["bfcl_reason"] = p["bfcl"]["category"], ok, why
        per_item.append(row)
    result = {"lambda": lam, "fuzzy": fuzzy, "summary": aggregate(steps, lam) if steps else {"n": 0},
              "slices": {}, "items": per_item}
    for key in SLICES:
        groups: dict[str, list] = defaultdict(list)
        for row, s in zip(per_item, steps):
            groups[str(row[key] or "-")].append(s)
        result["slices"][key] = {name: aggregate(group, lam) for name, group in sorted(groups.items())}
    bfcl_rows = [r for r in per_item if "bfcl_category" in r]
    if bfcl_rows:
        cats: dict[str, list[float]] = defaultdict(list)
        for r in bfcl_rows:
            cats[r["bfcl_category"]].append(1.0 if r["bfcl_correct"] else 0.0)
        per_cat = {c: {"n": len(v), "accuracy": sum(v) / len(v), "accuracy_ci": _rate_ci(v)}
                   for c, v in sorted(cats.items())}
        allv = [1.0 if r["bfcl_correct"] else 0.0 for r in bfcl_rows]
        result["bfcl"] = {"categories": per_cat, "n": len(allv), "accuracy": sum(allv) / len(allv),
                          "accuracy_ci": _rate_ci(allv),
                          # BFCL's own overall figure is the unweighted mean over categories.
                          "category_mean": sum(c["accuracy"] for c in per_cat.values()) / len(per_cat)}
    return result


# --- general ability ----------------------------------------------------------------------------------------------

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

    from agenttune.benchmarks import TrainingQueries
    from agenttune.data import read_samples

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}\x1fgeneral\x1f{key}".encode()).hexdigest()

    items: list[dict] = []
    if source == "auto":
        general = [s for s in read_samples(val_samples_path) if s.get("general")]
        source = "general_val" if general else "heldout_no_tool"
    if source == "general_val":
        for s in read_samples(val_samples_path):
            if s.get("general"):
                msgs = [{"role": m["role"], "content": m["content"]} for m in s["messages"]]
                if msgs and msgs[-1]["role"] == "assistant":
                    items.append({"id": s["id"], "messages": msgs})
        what = "general chat mixed into the validation split (never trained on)"
    elif source == "heldout_no_tool":
        held = {s["trace_id"] for path in (val_samples_path, test_samples_path) for s in read_samples(path)
                if s["kind"] == "no_tool" and s["template"] != "passthrough"}
        with open(traces_path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                trace = json.loads(line)
                if trace["id"] not in held or any(m.get("tool_calls") for m in trace["messages"]):
                    continue
                msgs = [{"role": m["role"], "content": m["content"]} for m in trace["messages"]
                        if m["role"] in ("system", "user", "assistant")]
                if msgs and msgs[-1]["role"] == "assistant" and msgs[-1]["content"].strip():
                    items.append({"id": trace["id"], "messages": msgs})
        what = ("held-out (val + test) traces that need no tool, as plain chat without the tool prompt: the "
                "demo's direct answers to general questions")
    elif source == "alpaca":
        from agenttune.traces.readers import RawError, alpaca

        training = TrainingQueries(read_samples(train_samples_path), 13) if train_samples_path else None
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


def general_loss(model_dir: str | Path, items_path: str | Path, precision: str = "fp32", log=print) -> dict:
    """Mean token loss (nats) and perplexity of the model on the final answers of the general-chat items; the CI is
    a bootstrap over items of the token-weighted mean."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = _read_jsonl(items_path)
    if not items:
        return {"items": 0, "tokens": 0, "loss": None, "perplexity": None, "loss_ci": None}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if (precision == "bf16" and device == "cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
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
    return {"items": len(per_item), "tokens": total_tokens, "loss": loss, "perplexity": math.exp(loss),
            "loss_ci": [boots[24], boots[974]],
            "per_item": [{"id": i, "nll": n, "tokens": t} for i, n, t in per_item]}
