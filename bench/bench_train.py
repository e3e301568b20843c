"""Training throughput on CPU: the pipeline's step against a bare PyTorch loop, packed against unpacked rows, and
DeepSpeed ZeRO-3 (one and two ranks) against the plain Trainer. Every ratio compares runs made in this one
invocation, on the same model, the same rows and the same settings.

Rows: AgentInstruct "db" conversations from ../shared/data rendered with SmolLM2's chat template (real lengths and
token ids); random token rows of 64-512 tokens when that folder is absent. Loss on every token (throughput does not
depend on which tokens are trained).

Measurements (tokens/s = real, non-padding tokens per second of the epoch's steps; start-up, ZeRO set-up and
checkpoint saving are excluded on both sides of every comparison):
1. overhead: `agenttune.train.trainer.run_training` (HF Trainer + our callbacks) vs a hand-written loop doing the same work
   (same collator batches, AdamW, accumulation, clipping, LR schedule, a loss sync per step), on SmolLM2-135M with
   the default config's freeze tuning (top 6 layers), packed rows, and on the tiny test
   Llama with full tuning; runs alternate and repeat, the median counts. Target: overhead <= 10%.
2. packed vs unpacked rows (agenttune.tokenize.pack, max_len 1024), SmolLM2-135M freeze tuning, through the pipeline.
3. ZeRO-3 on 1 and 2 CPU ranks (gloo; the 2 ranks get 1 core each) vs the plain Trainer, SmolLM2-135M full
   tuning, each as its own process started by agenttune.train.launch.
4. tuning: LoRA (rank 16, all linear layers) vs freeze (top 6 layers) vs full tuning of SmolLM2-135M on the same
   rows: tokens/s and the peak RSS of each run's own process (agenttune.train.launch), runs alternating.
5. equal_time: on the default pipeline's data (config/config.yaml: its train shards and held-out items, made by
   Snakemake under results/bench-tuning/), one epoch of freeze tuning takes T seconds; LoRA gets the same T (the
   rows it can train in T at its measured rate, a seeded subset, one epoch with the same schedule shape); both and
   the base model are then scored on the held-out items with the pipeline's own predict and score.

    .venv/bin/python bench/bench_train.py                 # overhead, packing, zero3: ~10 min on 2 idle cores
    .venv/bin/python bench/bench_train.py --only tuning --only equal_time --lora-lr 5e-4,2e-3   # ~25 min
    .venv/bin/python bench/bench_train.py --only overhead --repeats 3 --out-json /tmp/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agenttune.cluster.launch_plan import LaunchPlan  # noqa: E402
from agenttune.common.atomic import iter_jsonl  # noqa: E402
from agenttune.tokenize import pack  # noqa: E402
from agenttune.tokenize.encoder import Encoded  # noqa: E402
from agenttune.tokenize.shards import shard_table, write_table_atomic  # noqa: E402
from agenttune.train.launch import launch_command, launch_environment, run_command  # noqa: E402
from agenttune.train.base_model import load_smollm2_tokenizer, prepare_smollm2, prepare_tiny  # noqa: E402
from agenttune.tokenize.load import load_shards  # noqa: E402
from agenttune.train.trainer import PadCollator, freeze_lower_layers, run_training, write_job_spec  # noqa: E402

AGENTINSTRUCT = REPO.parent / "shared" / "data" / "agentinstruct" / "db_538.jsonl"
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}
BASE_CFG = {"epochs": 1, "learning_rate": 2e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.05, "weight_decay": 0.0,
            "batch_size": 1, "grad_accum": 4, "precision": "fp32", "attn_implementation": "sdpa",
            "gradient_checkpointing": False}
FREEZE = {"tuning": "freeze", "freeze_trainable_layers": 6}
FULL = {"tuning": "full"}
# merge off: the benchmark times training; a merge happens after the epoch's steps and is not in train_time_s anyway.
LORA = {"tuning": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear",
                                   "merge": False}}
MAX_LEN = 1024
SEED = 1234


# --------------------------------------------------------------------------- data

def sample_rows(tokenizer, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(id, token ids) of n samples no longer than MAX_LEN."""
    rows = []
    if AGENTINSTRUCT.is_file():
        role = {"human": "user", "gpt": "assistant"}
        for rec in iter_jsonl(AGENTINSTRUCT):
            messages = [{"role": role[t["from"]], "content": t["value"]} for t in rec["conversations"]]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= MAX_LEN:
                rows.append((rec["id"], np.asarray(ids, dtype=np.int32)))
            if len(rows) == n:
                return rows
    rng = random.Random(seed)
    while len(rows) < n:
        k = rng.randint(64, 512)
        rows.append((f"synthetic-{len(rows)}", np.asarray([rng.randint(10, 40000) for _ in range(k)], np.int32)))
    return rows


def write_rows(samples, folder: Path, packed: bool) -> list[Path]:
    """One Parquet shard of the samples, unpacked or packed by agenttune.tokenize.pack (best-fit decreasing)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-0.parquet"
    kept = [Encoded(i, ids, ids.copy(), False) for i, ids in samples]
    write_table_atomic(shard_table(kept, MAX_LEN, packing=packed), path)
    return [path]


# --------------------------------------------------------------------------- the two loops

def pipeline_epoch(model_dir, shards, cfg, work: Path) -> dict:
    out = work / "pipeline" / "epoch-1"
    m = run_training(model_dir, shards, None, out, 1, cfg, SEED, log=lambda msg: None)
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"tokens": m["tokens"], "seconds": m["train_time_s"]}


def bare_epoch(model_dir, shards, cfg) -> dict:
    """What the Trainer does for an epoch, written out: same model, rows, collator, optimizer and schedule."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if cfg["tuning"] == "freeze":
        freeze_lower_layers(model, cfg["freeze_trainable_layers"])
    model.train()
    rows = load_shards(shards)
    rows.sort(key=lambda r: r["id"])
    collator = pack.make_collator(shards, tokenizer.pad_token_id, "sdpa", torch.float32) \
        or PadCollator(tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    per_step = cfg["batch_size"] * cfg["grad_accum"]
    steps = math.ceil(len(rows) / per_step)
    sched = get_scheduler(cfg["lr_scheduler"], opt, num_warmup_steps=math.ceil(cfg["warmup_ratio"] * steps),
                          num_training_steps=steps)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SEED)).tolist()
    tokens = sum(len(r["input_ids"]) for r in rows)
    start = time.perf_counter()
    for s in range(steps):
        chunk = order[s * per_step:(s + 1) * per_step]
        micro = [chunk[i:i + cfg["batch_size"]] for i in range(0, len(chunk), cfg["batch_size"])]
        for batch_idx in micro:
            batch = collator([rows[i] for i in batch_idx])
            loss = model(**batch).loss / len(micro)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the Trainer logs the loss every step (logging_steps=1): one sync per step on both sides
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


def note(what: str, run: dict) -> dict:
    print(f"  {what}: {run['tokens'] / run['seconds']:.1f} tokens/s ({run['tokens']} tokens, {run['seconds']:.1f} s)",
          flush=True)
    return run


def median_rate(runs: list[dict]) -> float:
    return statistics.median(r["tokens"] / r["seconds"] for r in runs)


def overhead_rows(name, model_dir, shards, cfg, repeats, work) -> list[dict]:
    pipe, bare = [], []
    for _ in range(repeats):  # alternate, so that a busy moment of the machine hits both sides
        pipe.append(note(f"{name}: pipeline", pipeline_epoch(model_dir, shards, cfg, work)))
        bare.append(note(f"{name}: bare loop", bare_epoch(model_dir, shards, cfg)))
    p, b = median_rate(pipe), median_rate(bare)
    return [{"benchmark": "overhead", "case": name, "tokens": pipe[0]["tokens"],
             "pipeline_tokens_per_s": round(p, 1), "bare_loop_tokens_per_s": round(b, 1),
             "ratio": round(p / b, 3), "overhead": round(1 - p / b, 3),
             "runs": {"pipeline": [round(r["tokens"] / r["seconds"], 1) for r in pipe],
                      "bare": [round(r["tokens"] / r["seconds"], 1) for r in bare]}}]


# --------------------------------------------------------------------------- benchmarks

def bench_overhead(models, samples, repeats, work) -> list[dict]:
    rows = []
    shards = write_rows(samples, work / "packed", packed=True)
    rows += overhead_rows("SmolLM2-135M, freeze top 6 layers, packed rows", models["smollm2"], shards,
                          {**BASE_CFG, **FREEZE}, repeats, work)
    rows += overhead_rows("tiny Llama (3.2M), full tuning, packed rows", models["tiny"], shards,
                          {**BASE_CFG, **FULL}, repeats, work)
    return rows


def bench_packing(models, samples, repeats, work) -> list[dict]:
    cfg = {**BASE_CFG, **FREEZE}
    unpacked = write_rows(samples, work / "unpacked", packed=False)
    packed = write_rows(samples, work / "packed", packed=True)
    u, p = [], []
    for _ in range(repeats):
        u.append(note("unpacked", pipeline_epoch(models["smollm2"], unpacked, cfg, work)))
        p.append(note("packed", pipeline_epoch(models["smollm2"], packed, cfg, work)))
    n_rows = len(load_shards(packed))
    return [{"benchmark": "packing", "case": f"SmolLM2-135M freeze, {len(samples)} samples -> {n_rows} packed rows "
             f"of <= {MAX_LEN}", "tokens": u[0]["tokens"], "unpacked_tokens_per_s": round(median_rate(u), 1),
             "packed_tokens_per_s": round(median_rate(p), 1), "ratio": round(median_rate(p) / median_rate(u), 3)}]


def launched_epoch(plan: LaunchPlan, model_dir, shards, cfg, work: Path, name: str) -> dict:
    out = work / name / "epoch-1"
    spec = write_job_spec(Path(str(out) + ".launch.json"), model_dir, shards, None, out, 1,
                          {**cfg, "launcher": plan.launcher, "nproc_per_node": plan.nproc_per_node}, SEED,
                          {"device": "cpu", "devices": 1, "device_peak_flops": 1.6e11})
    # The whole machine (2 cores) for every ZeRO comparison: one process with 2 threads, or 2 ranks with 1 each.
    env = launch_environment(plan, threads=2, on_gpu=False, deepspeed=bool(cfg.get("deepspeed")))
    start = time.perf_counter()
    rc = run_command(launch_command(plan, spec), env, log=lambda m: None)
    wall = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"{name}: launcher exited {rc}")
    m = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    note(name, {"tokens": m["tokens"], "seconds": m["train_time_s"]})
    return {"tokens": m["tokens"], "seconds": m["train_time_s"], "job_wall_s": wall, "mfu": m["mfu"],
            "peak_memory_gib": round(m["peak_memory_bytes"] / 2**30, 2),
            "trainable_parameters": m["trainable_parameters"]}


def bench_zero(models, samples, work) -> list[dict]:
    cfg = {**BASE_CFG, **FULL}
    shards = write_rows(samples, work / "zero", packed=False)
    runs = {
        "plain Trainer, 1 process (2 threads)": launched_epoch(LaunchPlan("none"), models["smollm2"], shards, cfg,
                                                               work, "plain"),
        "ZeRO-3, 1 rank (2 threads)": launched_epoch(LaunchPlan("none"), models["smollm2"], shards,
                                                     {**cfg, "deepspeed": {"stage": 3}}, work, "zero1"),
        "ZeRO-3, 2 ranks (torchrun, 1 thread each)": launched_epoch(LaunchPlan("torchrun", 1, 2), models["smollm2"],
                                                                    shards, {**cfg, "deepspeed": {"stage": 3}}, work,
                                                                    "zero2"),
    }
    base = runs["plain Trainer, 1 process (2 threads)"]
    base_rate = base["tokens"] / base["seconds"]
    return [{"benchmark": "zero3", "case": f"SmolLM2-135M full tuning: {name}", "tokens": r["tokens"],
             "tokens_per_s": round(r["tokens"] / r["seconds"], 1),
             "ratio": round(r["tokens"] / r["seconds"] / base_rate, 3), "job_wall_s": round(r["job_wall_s"], 1),
             "mfu": r["mfu"], "peak_memory_gib": r["peak_memory_gib"]} for name, r in runs.items()]


def bench_tuning(models, samples, repeats, work) -> list[dict]:
    """LoRA vs freeze vs full on the same rows, each run its own process (its peak RSS is the run's alone)."""
    shards = write_rows(samples, work / "tuning", packed=False)
    modes = {"full tuning": FULL, "freeze (top 6 layers)": FREEZE, "LoRA r16, all linear layers": LORA}
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for k in range(repeats):  # alternate, so that a busy moment of the machine hits every mode
        for name, mode in modes.items():
            runs[name].append(launched_epoch(LaunchPlan("none"), models["smollm2"], shards, {**BASE_CFG, **mode},
                                             work, f"tuning-{k}-{mode['tuning']}"))
    full_rate = median_rate(runs["full tuning"])
    full_rss = statistics.median(r["peak_memory_gib"] for r in runs["full tuning"])
    rows = []
    for name, rs in runs.items():
        rss = round(statistics.median(r["peak_memory_gib"] for r in rs), 2)
        rows.append({"benchmark": "tuning", "case": f"SmolLM2-135M, {name}", "tokens": rs[0]["tokens"],
                     "tokens_per_s": round(median_rate(rs), 1), "ratio": round(median_rate(rs) / full_rate, 3),
                     "trainable_parameters": rs[0]["trainable_parameters"], "peak_rss_gib": rss,
                     "rss_ratio": round(rss / full_rss, 3)})
    return rows


def default_run_data(run: str) -> tuple[Path, list[Path], Path, dict]:
    """The default config's base model, train shards and held-out items, made by the pipeline itself."""
    import yaml

    targets = [f"results/{run}/shards/manifest.json", f"results/{run}/eval/items/heldout.jsonl"]
    # --quiet and --config take several values: the targets go before them.
    cmd = [str(REPO / ".venv" / "bin" / "snakemake"), "--cores", "2", *targets, "--quiet", "all",
           "--config", f"run={run}"]
    subprocess.run(cmd, cwd=REPO, check=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    shards = sorted((REPO / "results" / run / "shards").glob("train-*.parquet"))
    model = REPO / "results" / "models" / config["model"]["name"]
    return model, shards, REPO / "results" / run / "eval" / "items" / "heldout.jsonl", config


def write_subset(rows: list[dict], folder: Path, token_budget: int | None, seed: int) -> tuple[list[Path], int]:
    """A seeded subset of tokenized rows whose tokens stay within `token_budget` (None: all), as one shard."""
    order = sorted(rows, key=lambda r: r["id"])
    random.Random(seed).shuffle(order)
    kept, tokens = [], 0
    for r in order:
        if token_budget is not None and tokens + len(r["input_ids"]) > token_budget:
            continue
        kept.append(Encoded(r["id"], np.asarray(r["input_ids"], np.int32), np.asarray(r["labels"], np.int32), False))
        tokens += len(r["input_ids"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-0.parquet"
    write_table_atomic(shard_table(kept, 1 << 20, packing=False), path)
    return [path], len(kept)


def heldout_score(model_dir: Path, items: Path, out: Path, config: dict) -> dict:
    from agenttune.evaluate.predict import predict
    from agenttune.evaluate.score import score_predictions

    ev = config["evaluate"]
    cfg = {k: ev[k] for k in ("max_new_tokens", "batch_size") if k in ev}
    predict(model_dir, items, out, cfg, config["seed"], log=lambda m: None)
    summary = score_predictions(out, ev["lambda"], ev["fuzzy"])["summary"]
    rounded = {k: round(summary[k], 3) for k in ("score", "em", "fuzzy")}
    return {"n": summary["n"], **rounded, "score_ci": [round(x, 3) for x in summary["score_ci"]]}


def bench_equal_time(work: Path, lora_lrs: list[float] | None = None) -> list[dict]:
    """`lora_lrs`: LoRA learning rates to try on the same rows (default: the config's own)."""
    run = "bench-tuning"
    model, shards, items, config = default_run_data(run)
    seed = config["seed"]
    cfg = {**config["train"], "epochs": 1}
    rows = load_shards(shards)
    quiet = lambda m: None  # noqa: E731
    results = {}
    print("equal_time: freeze, one epoch of the default data", flush=True)
    freeze = run_training(model, shards, None, work / "freeze" / "epoch-1", 1, cfg, seed, log=quiet)
    budget_s = freeze["train_time_s"]
    # LoRA's rate on a small seeded subset, then the rows it can train in the same time.
    probe_shards, _ = write_subset(rows, work / "probe", sum(len(r["input_ids"]) for r in rows) // 8, seed)
    probe = run_training(model, probe_shards, None, work / "probe-lora" / "epoch-1", 1,
                         {**cfg, **LORA}, seed, log=quiet)
    budget_tokens = int(probe["tokens_per_s"] * budget_s)
    lora_shards, n_rows = write_subset(rows, work / "lora-rows", budget_tokens, seed)
    print(f"equal_time: LoRA, {n_rows} of {len(rows)} rows ({budget_tokens} tokens) for {budget_s:.0f} s", flush=True)
    cases = [("base model", model, None), ("freeze (top 6 layers), 1 epoch", work / "freeze" / "epoch-1", freeze)]
    for k, lr in enumerate(lora_lrs or [cfg["learning_rate"]]):
        folder = work / f"lora-{k}" / "epoch-1"
        lora = run_training(model, lora_shards, None, folder, 1, {**cfg, **LORA, "learning_rate": lr}, seed, log=quiet)
        cases.append((f"LoRA r16, lr {lr:g}, same wall time", folder, lora))
    for k, (name, folder, m) in enumerate(cases):
        s = heldout_score(folder, items, work / f"predictions-{k}.jsonl", config)
        results[name] = {"benchmark": "equal_time", "case": name, "train_time_s": m and m["train_time_s"],
                         "tokens": m and m["tokens"], "tokens_per_s": m and m["tokens_per_s"],
                         "trainable_parameters": m and m["trainable_parameters"],
                         "mean_loss": m and round(m["mean_loss"], 4), **s}
        print(f"  {name}: score {s['score']:.3f} (EM {s['em']:.3f}) over {s['n']} items", flush=True)
    return list(results.values())


def models_in(work: Path) -> dict:
    cache = REPO / ".cache" / "bench" / "models"
    smol = REPO / "results" / "models" / "smollm2-135m-instruct"
    if not (smol / "model.safetensors").is_file():
        smol = cache / "smollm2-135m-instruct"
        if not (smol / "model.safetensors").is_file():
            prepare_smollm2(smol)
    tiny = work / "tiny"
    prepare_tiny(tiny, TINY_SHAPE, seed=0, tokenizer=load_smollm2_tokenizer())
    return {"smollm2": smol, "tiny": tiny}


def markdown(rows: list[dict]) -> str:
    out = []
    for kind, head, keys in (
        ("overhead", "| case | tokens | pipeline tok/s | bare loop tok/s | pipeline / bare | overhead |",
         ("case", "tokens", "pipeline_tokens_per_s", "bare_loop_tokens_per_s", "ratio", "overhead")),
        ("packing", "| case | tokens | unpacked tok/s | packed tok/s | packed / unpacked |",
         ("case", "tokens", "unpacked_tokens_per_s", "packed_tokens_per_s", "ratio")),
        ("zero3", "| case | tokens | tok/s | vs plain | job wall s | MFU | peak GiB/rank |",
         ("case", "tokens", "tokens_per_s", "ratio", "job_wall_s", "mfu", "peak_memory_gib")),
        ("tuning", "| case | tokens | trainable params | tok/s | vs full | peak RSS GiB | vs full |",
         ("case", "tokens", "trainable_parameters", "tokens_per_s", "ratio", "peak_rss_gib", "rss_ratio")),
        ("equal_time", "| model | train s | tokens | trainable params | mean train loss | held-out score | EM | fuzzy | "
         "score CI | items |", ("case", "train_time_s", "tokens", "trainable_parameters", "mean_loss", "score", "em",
                                "fuzzy", "score_ci", "n")),
    ):
        sel = [r for r in rows if r["benchmark"] == kind]
        if sel:
            out += [head, "|" + "---|" * len(keys)]
            out += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in sel]
            out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["overhead", "packing", "zero3", "tuning", "equal_time"], action="append")
    ap.add_argument("--samples", type=int, default=24, help="samples per epoch (default 24)")
    ap.add_argument("--zero-samples", type=int, default=8, help="samples for the ZeRO-3 runs (default 8)")
    ap.add_argument("--tuning-samples", type=int, default=12, help="samples for the tuning-mode runs (default 12)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lora-lr", type=lambda v: [float(x) for x in v.split(",")],
                    help="equal_time: LoRA learning rates, comma-separated (default: the config's)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads of the overhead and packing runs (default 2 = this machine's cores)")
    ap.add_argument("--out-json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)  # the in-process overhead and packing runs
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    only = set(args.only or ["overhead", "packing", "zero3"])
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        work = Path(tmp)
        models = models_in(work)
        tokenizer = load_smollm2_tokenizer()
        samples = sample_rows(tokenizer, args.samples, SEED)
        print(f"data: {len(samples)} samples, {sum(len(s) for _, s in samples)} tokens "
              f"({'AgentInstruct db' if AGENTINSTRUCT.is_file() else 'synthetic'}); torch threads "
              f"{torch.get_num_threads()}", flush=True)
        rows = []
        t0 = time.perf_counter()
        if "overhead" in only:
            rows += bench_overhead(models, samples, args.repeats, work)
        if "packing" in only:
            rows += bench_packing(models, samples, args.repeats, work)
        if "zero3" in only:
            rows += bench_zero(models, samples[:args.zero_samples], work)
        if "tuning" in only:
            rows += bench_tuning(models, samples[:args.tuning_samples], args.repeats, work)
        if "equal_time" in only:
            rows += bench_equal_time(work, args.lora_lr)
    print(markdown(rows))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
