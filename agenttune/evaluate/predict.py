"""Evaluate stage, generation: a model and a benchmark's items -> predictions (greedy, batched).

Takes: a model folder (the base model or an epoch checkpoint) and a benchmark's items (agenttune.evaluate.items).
Gives `predictions.jsonl`: one line per item: the item's identity and slices, the expected call, the raw output,
the number of generated tokens and why generation stopped. Scoring is a separate job (agenttune.evaluate.score), so that
changing λ or the fuzzy metric re-scores without regenerating.
"""

from __future__ import annotations

from pathlib import Path

from agenttune.common.atomic import read_jsonl, write_jsonl
from agenttune.common.config import section_with_defaults
from agenttune.render import FAMILIES, get_template
from agenttune.render.families import FamilyText

PREDICTION_KEYS = ("id", "benchmark", "origin", "sample_id", "template", "tool_format", "source", "kind", "task",
                   "expected", "reference", "bfcl", "review")


def prompts_and_stops(tokenizer, items: list[dict], log=print) -> tuple[list[str], list[tuple]]:
    """Each item's chat-formatted prompt and its template's stop strings (what generation is given). A family
    template's item is rendered in its family's format (agenttune.render.families: the model's chat template with
    tools=, or the project's own template), through the same path as its training text."""
    families: dict[tuple[str, str | None], FamilyText] = {}
    prompts = []
    for it in items:
        if it["template"] in FAMILIES:
            key = (it["template"], it.get("render_mode"))
            if key not in families:
                families[key] = FamilyText.from_tokenizer(
                    FAMILIES[it["template"]], tokenizer, "builtin" if key[1] == "project" else "auto", log)
            prompts.append(families[key].prompt(it["prompt_messages"], it.get("tools")))
        else:
            prompts.append(tokenizer.apply_chat_template(it["prompt_messages"], tokenize=False,
                                                         add_generation_prompt=True))
    return prompts, [tuple(get_template(it["template"]).STOP) for it in items]


def predict(model_dir: str | Path, items_path: str | Path, out_path: str | Path, cfg: dict, seed: int,
            log=print, server_log: str | Path | None = None) -> dict:
    """Generate for every item (greedy; each item stops at its own template's stop strings) with the configured
    engine; return stats, with `run`: how the predictions were made (engine, dtype, attention, devices; for the
    server engine its command). `server_log`: where the server engine's server writes its output (default: beside
    `out_path`)."""
    import time

    import torch

    cfg = section_with_defaults(cfg, "evaluate")
    torch.manual_seed(seed)
    items = read_jsonl(items_path)
    log(f"{len(items)} items from {items_path}, model {model_dir}, engine {cfg['engine']}")
    rows = []
    stats = {"items": len(items), "generated_tokens": 0, "wall_s": 0.0, "finish": {}}
    if items:
        if cfg["engine"] == "server":
            from transformers import AutoTokenizer

            from agenttune.evaluate.server_engine import generate_with_server

            # The prompt texts are rendered here, with the model's own tokenizer, exactly as for the local engines.
            prompts, stops = prompts_and_stops(AutoTokenizer.from_pretrained(model_dir), items, log)
            start = time.perf_counter()
            outs, stats["run"] = generate_with_server(
                model_dir, prompts, stops, cfg["max_new_tokens"], cfg["server"], cfg["precision"], seed,
                server_log or Path(out_path).with_suffix(".server.log"), log)
        else:
            from agenttune.evaluate.generate import generate, load_for_generation

            model, tokenizer = load_for_generation(model_dir, cfg["precision"], cfg["engine"], log,
                                                   cfg["attn_implementation"])
            stats["run"] = model._agenttune_run  # `exact` falls back to `hf` on a GPU: the engine used
            prompts, stops = prompts_and_stops(tokenizer, items, log)
            start = time.perf_counter()
            outs = generate(model, tokenizer, prompts, cfg["max_new_tokens"], stops, cfg["batch_size"], log)
        stats["engine"] = stats["run"]["engine"]
        stats["wall_s"] = round(time.perf_counter() - start, 3)
        for it, g in zip(items, outs):
            rows.append({k: it[k] for k in PREDICTION_KEYS if k in it}
                        | {"output": g.text.strip(), "tokens": g.tokens, "finish": g.finish_reason})
            stats["generated_tokens"] += g.tokens
            stats["finish"][g.finish_reason] = stats["finish"].get(g.finish_reason, 0) + 1
        log(f"{stats['generated_tokens']} tokens in {stats['wall_s']:.1f} s "
            f"({stats['generated_tokens'] / max(stats['wall_s'], 1e-9):.1f} tokens/s)")
    write_jsonl(out_path, rows)
    return stats
