"""One decode step of the exact engine at a full batch, against the engine it replaced, in one process.

Usage:
    .venv/bin/python bench/bench_decode_step.py --items-file results/real-data-v2/eval/items/bfcl.jsonl
        [--model results/models/smollm2-135m-instruct] [--rows 16] [--steps 40] [--baseline-rev 798a1f7]

The baseline is agenttune/evaluate/generate.py as of --baseline-rev (read with `git show`; 798a1f7 is the last revision
with the left-padded `DynamicCache`, which `torch.cat`s the whole cache every step, and `F.linear` padded to 8
rows). Three configurations decode the same --rows prompts (seeded subset of the items file, prompted as
agenttune.evaluate.predict does), each from its own prefilled cache, one step each in turn, --steps times, so machine
noise hits all three alike; the first 5 steps are dropped and the median step time is reported:
  - baseline: the old engine (left-padded cache, F.linear hooks);
  - slot cache + F.linear: the baseline's model (its linear hooks) decoding from the current `_SlotCache`;
  - current: the current engine (slot cache, `rows_matmul` linears).
The greedy tokens of all three must agree after every step (checked at the end).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def load_baseline(rev: str):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:agenttune/evaluate/generate.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "generate_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("generate_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_baseline"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "results" / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--items-file", required=True)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-rev", default="798a1f7")
    args = ap.parse_args()

    import torch
    from transformers import DynamicCache

    import agenttune.evaluate.generate as current
    from bench_generate import items_file_prompts

    torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline_rev)
    old_model, tokenizer = baseline.load_for_generation(args.model, engine="exact", log=lambda _m: None)
    new_model, _ = current.load_for_generation(args.model, engine="exact", log=lambda _m: None)
    prompts, _stops = items_file_prompts(tokenizer, Path(args.items_file), args.rows)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    lengths = [len(p) for p in ids]
    capacity = max(lengths) + args.steps + 1

    states = {}
    with torch.no_grad():
        for name, model in (("baseline", old_model), ("slot cache + F.linear", old_model), ("current", new_model)):
            cache = baseline._BatchCache(model) if name == "baseline" else current._SlotCache(model, len(ids), capacity)
            slots, last = [], []
            for p in ids:
                row = DynamicCache(config=model.config)
                out = model(input_ids=torch.tensor([p]), past_key_values=row, use_cache=True, logits_to_keep=1,
                            pad_starts=[0])
                if name == "baseline":
                    cache.add(row)
                else:
                    slots.append(cache.put(row))
                last.append(int(out.logits[0, -1].argmax()))
            states[name] = {"model": model, "cache": cache, "slots": slots, "last": last, "step": 0, "times": [],
                            "tokens": []}

        def step(state) -> None:
            ids_in = torch.tensor([[t] for t in state["last"]])
            positions = torch.tensor([[n + state["step"]] for n in lengths])
            cache = state["cache"]
            if state["slots"]:
                kwargs = {"kv_rows": cache.begin_step(state["slots"])}
            else:
                kwargs = {"pad_starts": list(cache.pad_starts)}
            out = state["model"](input_ids=ids_in, position_ids=positions, past_key_values=cache.cache,
                                 use_cache=True, logits_to_keep=1, **kwargs)
            state["last"] = out.logits[:, -1].argmax(-1).tolist()
            state["tokens"].append(state["last"])
            state["step"] += 1

        load_before = os.getloadavg()
        for _ in range(args.steps):
            for state in states.values():
                start = time.perf_counter()
                step(state)
                state["times"].append(time.perf_counter() - start)

    reference = states["baseline"]["tokens"]
    base_ms = 1000 * statistics.median(states["baseline"]["times"][5:])
    print(f"{args.rows} rows, prompts {min(lengths)}-{max(lengths)} tokens, {args.steps} steps each, "
          f"load average {load_before} -> {os.getloadavg()}")
    print("\n| configuration | median ms/step | min ms/step | vs baseline | same tokens as baseline |")
    print("|---|---|---|---|---|")
    for name, state in states.items():
        times = state["times"][5:]
        median_ms = 1000 * statistics.median(times)
        print(f"| {name} | {median_ms:.0f} | {1000 * min(times):.0f} | {base_ms / median_ms:.2f}x | "
              f"{state['tokens'] == reference} |")
    if any(state["tokens"] != reference for state in states.values()):
        raise SystemExit("greedy tokens differ between configurations")


if __name__ == "__main__":
    main()
