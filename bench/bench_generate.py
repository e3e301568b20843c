"""Generation and scoring throughput: batched vs one-by-one greedy generation on the evaluation workload, and
scoring speed. Ratios are measured in one run, against baselines from the same run.

Usage:
    .venv/bin/python bench/bench_generate.py [--model results/models/smollm2-135m-instruct] [--items 16]
        [--max-new-tokens 40] [--batch-size 8] [--threads 2] [--repeat 2] [--json out.json]
        [--items-file results/<run>/eval/items/bfcl.jsonl | --bfcl ../shared/data/bfcl_v3] [--skip-hf-batched]
        [--engines exact,hf,server]

Workload: the held-out evaluation prompts of the demo data (ReAct prompts with tool lists, ~250-1000 tokens, the
default pipeline's shape): demo traces are generated, rendered with the react template and cut into evaluation
items exactly as the pipeline does. With --items-file the workload is instead a seeded subset of a pipeline run's own
evaluation items (e.g. the real-data run's BFCL items: shorter prompts, and an untuned model that answers at
length), prompted exactly as agenttune.evaluate.predict prompts them. With --bfcl the workload is BFCL v3 itself:
a seeded subset of the simple, multiple and irrelevance questions, built as the pipeline builds its BFCL items
(agenttune.evaluate.items.bfcl_items, the format settings of config/real-data-v3.yaml). Each configuration decodes
the same items greedily:
  - hf one-by-one: transformers `generate()`, one prompt at a time (the conventional loop; the baseline);
  - exact one-by-one: this project's engine with batch size 1;
  - exact batched: the engine with --batch-size (continuous batching over a slotted KV cache);
  - hf batched: `generate()` with left padding and --batch-size, for reference;
  - server (with `--engines ...,server`): the `server` engine against the project's own server
    (`python -m agenttune.evaluate.serve`, which decodes one request at a time with the exact engine), --batch-size
    requests in flight; the server is started once, before the timed passes (its start-up is reported apart).
--engines picks the families (default exact,hf); hf one-by-one always runs (the baseline).
Tokens/s counts generated tokens over wall time (prefill included). For the exact engine the decode phase is also
timed alone (generated tokens / time in decode steps): prefill is compute-bound and is the same work batched or not,
so the end-to-end ratio is bounded by the prompt/answer length ratio, while the decode ratio shows what batching
itself buys. Outputs of exact batched and exact one-by-one must be identical (checked; the run fails otherwise).
The configurations run interleaved, --repeat times; the best time of each is kept (the machine is shared).

Scoring: `score_predictions` over synthetic predictions (ROUGE-L and BLEU) and BFCL AST checks, in items/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def eval_prompts(tokenizer, n_items: int, seed: int = 1234) -> tuple[list[str], list[tuple]]:
    from agenttune.evaluate.items import items_from_sample, select
    from agenttune.render.samples import render_trace
    from agenttune.demo.generator import generate_traces
    from agenttune.evaluate.predict import prompts_and_stops

    traces = generate_traces(200, seed)
    items = []
    for k, trace in enumerate(traces):
        sample = render_trace(trace, "react", "react_list" if k % 3 else "json_schema")
        items.extend(items_from_sample(sample, "bench", "demo"))
    return prompts_and_stops(tokenizer, select(items, n_items, seed))


def items_file_prompts(tokenizer, path: Path, n_items: int, seed: int = 1234) -> tuple[list[str], list[tuple]]:
    """A seeded subset of an evaluation items file, prompted as agenttune.evaluate.predict does."""
    from agenttune.common.atomic import read_jsonl
    from agenttune.evaluate.items import select
    from agenttune.evaluate.predict import prompts_and_stops

    return prompts_and_stops(tokenizer, select(read_jsonl(path), n_items, seed))


def bfcl_prompts(tokenizer, root: Path, n_items: int, seed: int = 1234) -> tuple[list[str], list[tuple]]:
    """A seeded subset of BFCL v3 simple / multiple / irrelevance items, built and prompted as the pipeline does."""
    from collections import Counter

    import yaml

    from agenttune.common.config import section_with_defaults
    from agenttune.evaluate.items import bfcl_items, select
    from agenttune.evaluate.predict import prompts_and_stops
    from agenttune.render.samples import make_renderers

    fmt = section_with_defaults(yaml.safe_load((REPO / "config" / "real-data-v3.yaml").read_text())["format"],
                                "format")
    items = bfcl_items(root, ["simple", "multiple", "irrelevance"], None, fmt, seed,
                       make_renderers(tokenizer, log=lambda _m: None), Counter())
    return prompts_and_stops(tokenizer, select(items, n_items, seed))


def bench_generation(args) -> dict:
    import torch

    from agenttune.evaluate.generate import generate, load_for_generation

    engines = set(args.engines.split(","))
    if not engines <= {"exact", "hf", "server"}:
        raise SystemExit(f"--engines: {args.engines!r}: choose among exact, hf, server")
    torch.set_num_threads(args.threads)
    hf_model, tokenizer = load_for_generation(args.model, engine="hf", log=lambda _m: None)
    exact_model = load_for_generation(args.model, engine="exact", log=lambda _m: None)[0] if "exact" in engines else None
    if args.items_file:
        prompts, stops = items_file_prompts(tokenizer, Path(args.items_file), args.items)
    elif args.bfcl:
        prompts, stops = bfcl_prompts(tokenizer, Path(args.bfcl), args.items)
    else:
        prompts, stops = eval_prompts(tokenizer, args.items)
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    configs = {"hf one-by-one": (hf_model, "hf", 1)}
    if "exact" in engines:
        configs |= {"exact one-by-one": (exact_model, "exact", 1), "exact batched": (exact_model, "exact", args.batch_size)}
    if "hf" in engines and not args.skip_hf_batched:
        configs["hf batched"] = (hf_model, "hf", args.batch_size)
    server = None
    result_extra = {}
    if "server" in engines:
        from agenttune.evaluate.server_engine import ServerProcess, free_port, generate_all, server_argv

        port = free_port()
        argv, _ = server_argv("{python} -m agenttune.evaluate.serve {model} --port {port}", args.model, port, "fp32", 0)
        log_path = Path(tempfile.mkdtemp()) / "server.log"
        start = time.perf_counter()
        server = ServerProcess(argv, port, log_path, ready_timeout_s=600, log=lambda _m: None).__enter__()
        result_extra["server_start_s"] = time.perf_counter() - start
        configs["server"] = (server, "server", args.batch_size)
    best: dict[str, dict] = {}
    outputs: dict[str, list] = {}
    try:
        for rep in range(args.repeat):
            for name, (model, engine, bs) in configs.items():
                stats: dict = {}
                start = time.perf_counter()
                if engine == "server":
                    out = generate_all(model, prompts, stops, args.max_new_tokens, bs, 3600, log=lambda _m: None)
                else:
                    out = generate(model, tokenizer, prompts, args.max_new_tokens, stops, bs, log=lambda _m: None,
                                   engine=engine, stats=stats)
                wall = time.perf_counter() - start
                _record(best, outputs, name, out, wall, bs, engine, stats, rep)
    finally:
        if server is not None:
            server.stop()
    return _summary(args, prompts, prompt_tokens, best, outputs, result_extra)


def _record(best, outputs, name, out, wall, bs, engine, stats, rep) -> None:
    """Keep a configuration's best time; its outputs must not change between repeats."""
    tokens = sum(g.tokens for g in out)
    if name in outputs and outputs[name] != out:
        raise SystemExit(f"{name}: outputs changed between repeats")
    outputs[name] = out
    if name not in best or wall < best[name]["wall_s"]:
        best[name] = {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                      "batch_size": bs, **({k: v for k, v in stats.items()} if engine == "exact" else {})}
    print(f"[rep {rep}] {name}: {tokens} tokens in {wall:.1f} s ({tokens / wall:.2f} tokens/s)", flush=True)


def _summary(args, prompts, prompt_tokens, best, outputs, extra) -> dict:
    def same(a: str, b: str):
        """Whether two configurations gave identical outputs (text, tokens, finish reason, stop string)."""
        return outputs[a] == outputs[b] if a in outputs and b in outputs else None

    def differing(a: str, b: str) -> list[int]:
        return [i for i, (x, y) in enumerate(zip(outputs[a], outputs[b])) if x != y]

    if "exact batched" in outputs and not same("exact batched", "exact one-by-one"):
        raise SystemExit(f"exact batched differs from exact one-by-one on items {differing('exact batched', 'exact one-by-one')}")
    base = best["hf one-by-one"]["tokens_per_s"]
    for row in best.values():
        row["ratio_vs_hf_one_by_one"] = row["tokens_per_s"] / base
        if "decode_s" in row and row["decode_s"]:
            row["decode_tokens_per_s"] = row["decode_tokens"] / row["decode_s"]
    out = {
        "model": str(args.model), "workload": args.items_file or (f"BFCL v3 {args.bfcl}" if args.bfcl else "demo held-out (react)"),
        "threads": args.threads, "items": len(prompts), "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": {"total": sum(prompt_tokens), "min": min(prompt_tokens), "max": max(prompt_tokens)},
        "configs": best, **extra,
        "exact_batched_identical_to_one_by_one": same("exact batched", "exact one-by-one"),
        "hf_one_by_one_identical_to_exact": same("hf one-by-one", "exact one-by-one"),
        "hf_batched_identical_to_hf_one_by_one": same("hf batched", "hf one-by-one"),
        "server_identical_to_exact": same("server", "exact one-by-one"),
        "server_identical_to_hf_one_by_one": same("server", "hf one-by-one"),
    }
    for a, b in (("hf one-by-one", "exact one-by-one"), ("server", "exact one-by-one"), ("server", "hf one-by-one")):
        if same(a, b) is False:
            out[f"items_differing_{a}_vs_{b}".replace(" ", "_")] = differing(a, b)
    if "exact batched" in best:
        eb, e1 = best["exact batched"], best["exact one-by-one"]
        out |= {
            "end_to_end_ratio_batched_vs_hf_one_by_one": eb["tokens_per_s"] / base,
            "end_to_end_ratio_batched_vs_exact_one_by_one": eb["tokens_per_s"] / e1["tokens_per_s"],
            "decode_ratio_batched_vs_exact_one_by_one": eb["decode_tokens_per_s"] / e1["decode_tokens_per_s"],
            "prefill_share_of_exact_one_by_one": e1["prefill_s"] / e1["wall_s"],
            "generation_items_per_s_batched": len(prompts) / eb["wall_s"],
        }
    return out


def bench_scoring(n: int) -> dict:
    from agenttune.evaluate.score import score_predictions

    rng = random.Random(0)
    names = ["get_weather", "calculator", "web_search", "send_email", "stock_quote"]
    rows = []
    for k in range(n):
        name = rng.choice(names)
        args = {"city": rng.choice(["Oslo", "Paris", "Lima"]), "unit": rng.choice(["celsius", "fahrenheit"])}
        guess = dict(args, city=rng.choice(["Oslo", "Paris", "Lima"]))
        kind = "no_tool" if k % 5 == 0 else "tool"
        output = rng.choice([
            f"Thought: ok\nAction: {rng.choice(names)}\nAction Input: {json.dumps(guess)}",
            "Thought: I can answer.\nFinal Answer: It is sunny.",
            "Action: get_weather\nAction Input: {\"city\": ",
        ])
        row = {"id": f"i{k}", "template": "react", "tool_format": "react_list", "source": "bench", "kind": kind,
               "task": name, "expected": None if kind == "no_tool" else {"name": name, "arguments": args},
               "reference": "", "output": output}
        if k % 4 == 1 and kind == "tool":
            row["bfcl"] = {"category": "simple", "ground_truth": [{name: {key: [v] for key, v in args.items()}}],
                           "functions": [{"name": name, "parameters": {"type": "dict", "properties": {
                               "city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}}]}
        rows.append(row)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        score_predictions(path, 0.5, "rougeL")  # warm-up: imports and scorer construction
        for fuzzy in ("rougeL", "bleu"):
            start = time.perf_counter()
            score_predictions(path, 0.5, fuzzy)
            wall = time.perf_counter() - start
            out[fuzzy] = {"items": n, "wall_s": wall, "items_per_s": n / wall}
            print(f"scoring ({fuzzy}): {n} items in {wall:.2f} s ({n / wall:.0f} items/s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "results" / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--items-file", help="a pipeline run's evaluation items JSONL instead of the demo held-out items")
    ap.add_argument("--bfcl", help="a BFCL v3 folder (../shared/data/bfcl_v3): its simple/multiple/irrelevance items")
    ap.add_argument("--engines", default="exact,hf", help="engine families to run: exact, hf, server (comma-separated)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--score-items", type=int, default=2000)
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--skip-hf-batched", action="store_true",
                    help="leave out the reference configuration (transformers' own batching) on long workloads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if not args.skip_generation and not Path(args.model).is_dir():
        raise SystemExit(f"{args.model} is not a model folder: run the pipeline's prepare_base_model rule first "
                         "(snakemake --cores 2 results/models/smollm2-135m-instruct)")
    load_before = os.getloadavg()
    result = {"load_average_before": load_before}
    if not args.skip_generation:
        result["generation"] = bench_generation(args)
    result["scoring"] = bench_scoring(args.score_items)
    result["load_average_after"] = os.getloadavg()
    if "generation" in result:
        g = result["generation"]
        if "generation_items_per_s_batched" in g:
            result["scoring_vs_generation_items_per_s"] = (result["scoring"]["rougeL"]["items_per_s"]
                                                           / g["generation_items_per_s_batched"])
        print("\n| configuration | batch | generated tokens | wall s | tokens/s | vs hf one-by-one | decode tokens/s |")
        print("|---|---|---|---|---|---|---|")
        for name, row in g["configs"].items():
            dec = f"{row['decode_tokens_per_s']:.1f}" if "decode_tokens_per_s" in row else "–"
            print(f"| {name} | {row['batch_size']} | {row['tokens']} | {row['wall_s']:.1f} | {row['tokens_per_s']:.2f} | "
                  f"{row['ratio_vs_hf_one_by_one']:.2f}x | {dec} |")
        print("\n" + "; ".join(f"{k}: {v}" for k, v in g.items() if "identical" in k or k.startswith("items_differing")))
        if "decode_ratio_batched_vs_exact_one_by_one" in g:
            print(f"decode ratio batched/one-by-one: {g['decode_ratio_batched_vs_exact_one_by_one']:.2f}x; "
                  f"prefill share of one-by-one time: {g['prefill_share_of_exact_one_by_one']:.2f}")
        if "server_start_s" in g:
            print(f"server start-up (not in its time): {g['server_start_s']:.1f} s")
    print(f"load average before {load_before}, after {result['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
