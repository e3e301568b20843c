"""Evaluate stage: held-out samples -> evaluation items -> generated predictions -> scores.

Takes: the test split's samples and a model folder (the base model or an epoch checkpoint).
Gives: `predictions.jsonl` (one line per item: prompt id, expected call, raw output) and, in a separate step so that
changing λ does not regenerate, `scores.json` (Score = EM(tool name) + λ·fuzzy(arguments), plus its parts).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from agenttune.data import read_samples
from agenttune.parse import Call, parse
from agenttune.render import get_template
from agenttune.score import aggregate, score_step


def eval_items(samples: list[dict], max_items: int | None, seed: int) -> list[dict]:
    """One item per assistant step that calls a tool (expected: its first call), and one per no-tool sample
    (expected: no call). The prompt is the gold conversation before that step."""
    items = []
    for sample in samples:
        msgs = sample["messages"]
        for i, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            calls = msg.get("tool_calls") or []
            if calls:
                expected = {"name": calls[0]["name"], "arguments": calls[0]["arguments"]}
            elif sample["kind"] == "no_tool" and i == next(j for j, m in enumerate(msgs) if m["role"] == "assistant"):
                expected = None
            else:
                continue
            items.append({
                "id": f"{sample['id']}@{i}",
                "sample_id": sample["id"],
                "template": sample["template"],
                "tool_format": sample["tool_format"],
                "source": sample["source"],
                "kind": sample["kind"],
                "prompt_messages": [{"role": m["role"], "content": m["content"]} for m in msgs[:i]],
                "expected": expected,
                "reference": msg["content"],
            })
    items.sort(key=lambda it: hashlib.sha256(f"{seed}\x1f{it['id']}".encode()).hexdigest())
    if max_items:
        items = items[:max_items]
    return sorted(items, key=lambda it: it["id"])


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def predict(model_dir: str | Path, samples_path: str | Path, out_path: str | Path, cfg: dict, seed: int,
            log=print) -> int:
    import torch

    from agenttune.generate import generate_all, load_for_generation

    torch.manual_seed(seed)
    items = eval_items(read_samples(samples_path), cfg.get("max_items"), seed)
    model, tokenizer = load_for_generation(model_dir)
    prompts = [tokenizer.apply_chat_template(it["prompt_messages"], tokenize=False, add_generation_prompt=True)
               for it in items]
    stops = sorted({s for it in items for s in get_template(it["template"]).STOP})
    log(f"{len(items)} evaluation items, model {model_dir}")
    outputs = generate_all(model, tokenizer, prompts, cfg["max_new_tokens"], tuple(stops), cfg["batch_size"], log)
    rows = [{k: it[k] for k in ("id", "sample_id", "template", "tool_format", "source", "kind", "expected",
                                "reference")} | {"output": out} for it, out in zip(items, outputs)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl_atomic(out_path, rows)
    return len(rows)


def score_predictions(pred_path: str | Path, lam: float, fuzzy: str) -> dict:
    with open(pred_path, encoding="utf-8") as fh:
        preds = [json.loads(line) for line in fh if line.strip()]
    per_item, steps = [], []
    for p in preds:
        expected = Call(p["expected"]["name"], p["expected"]["arguments"]) if p["expected"] else None
        parsed = parse(p["template"], p["output"])
        s = score_step(expected, parsed, lam, fuzzy)
        steps.append(s)
        per_item.append({"id": p["id"], "kind": p["kind"], "template": p["template"], "status": parsed.status,
                         "predicted": [{"name": c.name, "arguments": c.arguments} for c in parsed.calls],
                         "em": s.em, "fuzzy": s.fuzzy, "score": s.score})
    return {"lambda": lam, "fuzzy": fuzzy, "summary": aggregate(steps, lam), "items": per_item}
