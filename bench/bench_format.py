"""Benchmark of the formatting stage (agenttune.data.format.format_samples): samples/s and peak memory against input size.

What it measures, all in one run, each measurement in a fresh Python process (so peak RSS is that job's own):
  - floor:    a process that imports agenttune.data.format and does nothing (interpreter + numpy + package);
  - baseline: read every trace line, json.loads, json.dumps, write: the I/O and JSON floor of any streaming stage;
  - ingest:   the ingest stage (agenttune.traces.ingest) on the same file as one canonical source: validation,
              duplicate ids and content, accounting;
  - format:   format_samples with every template and tool format, the 4:1 ratio filled by no-tool traces then
              mined negatives, general chat mixed at eta = 0.5, cross-split dedup and the n-gram report, on
              N demo traces (agenttune.demo) plus N general-chat items, for each N in --sizes.
Reported: traces/s and samples/s of format, records/s of ingest; format's time over baseline's time on the same input (how much
work formatting adds over just reading and writing the JSON); peak RSS per size and its growth from the
smallest to the largest size, for ingest and format (streaming: it should stay flat while the input grows).

Usage: .venv/bin/python bench/bench_format.py [--sizes 10000 100000] [--workdir /tmp/bench_format]
Prints a JSON summary (also written to <workdir>/summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CFG = {
    "split": {"val": 0.05, "test": 0.1},
    "format": {
        "templates": {"react": 0.4, "openai_json": 0.2, "autogpt": 0.2, "tool_call": 0.2},
        "tool_formats": {"react_list": 0.4, "json_schema": 0.3, "autogpt": 0.3},
        "negatives": {"ratio": 4, "order": ["no_tool", "mined"]},
        "mix": {"eta": 0.5},
    },
}


def _child(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line; add its peak RSS (MiB) and wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(wall, 2)
    return result


RSS = "import resource; rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024"  # Linux: KiB -> MiB

GENERATE = """
import json, sys
from agenttune.demo.generator import generate_traces
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w", encoding="utf-8") as fh:
    for t in generate_traces(n, seed=1, no_tool_share=0.2):
        fh.write(json.dumps(t) + "\\n")
    # General chat: the generator's directly-answered questions, without tools, under their own source name,
    # numbered so that they are distinct queries (the generator has a small pool of such questions; repeats
    # would all be removed as cross-split duplicates).
    for i, t in enumerate(generate_traces(n, seed=2, no_tool_share=1.0)):
        t.update(id="g-" + t["id"], source="chat", tools=[])
        first = next(m for m in t["messages"] if m["role"] == "user")
        first["content"] = f"Survey item {i}: {first['content']}"
        fh.write(json.dumps(t) + "\\n")
print(json.dumps({"ok": True}))
"""

FLOOR = f"""
import json
import agenttune.data.format
{RSS}
print(json.dumps({{"rss_mib": round(rss, 1)}}))
"""

BASELINE = f"""
import json, sys, time
src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
n = 0
with open(src, "rb") as fh, open(dst, "w", encoding="utf-8") as out:
    for raw in fh:
        out.write(json.dumps(json.loads(raw), ensure_ascii=False, separators=(",", ":")) + "\\n")
        n += 1
seconds = time.perf_counter() - t0
{RSS}
print(json.dumps({{"lines": n, "seconds": round(seconds, 3), "rss_mib": round(rss, 1)}}))
"""

INGEST = f"""
import json, sys, time
from agenttune.traces.ingest import SourceSpec, ingest
src, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
stats = ingest([SourceSpec("bench", src, "canonical")], out + "/traces.jsonl", out + "/quarantine.jsonl",
               out + "/ingest_stats.json")
seconds = time.perf_counter() - t0
{RSS}
print(json.dumps({{"read": stats["total"]["read"], "kept": stats["total"]["kept"], "seconds": round(seconds, 3),
                  "rss_mib": round(rss, 1)}}))
"""

FORMAT = f"""
import json, sys, time
from agenttune.data.format import format_samples
src, out, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.perf_counter()
stats = format_samples([src], out, cfg, seed=1, roles={{"chat": "general"}}, log=lambda m: None)
seconds = time.perf_counter() - t0
{RSS}
samples = sum(s["samples"] for s in stats["splits"].values())
print(json.dumps({{"traces": stats["traces_read"], "samples": samples, "seconds": round(seconds, 3),
                  "rss_mib": round(rss, 1), "ratio_train": stats["ratio"]["train"]["achieved"],
                  "eta_train": stats["eta"]["train"]["achieved"]}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workdir", default="/tmp/bench_format")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env_note = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    rows = []
    floor = _child(FLOOR)
    for n in sorted(args.sizes):
        src = work / f"traces-{n}.jsonl"
        if not src.exists():
            _child(GENERATE, str(n), str(src))
        base = _child(BASELINE, str(src), str(work / f"copy-{n}.jsonl"))
        ing = _child(INGEST, str(src), str(work / f"ingest-{n}"))
        fmt = _child(FORMAT, str(src), str(work / f"out-{n}"), json.dumps(CFG))
        rows.append({
            "demo_traces": n, "input_lines": base["lines"], "input_mib": round(src.stat().st_size / 2**20, 1),
            "samples": fmt["samples"],
            "format_s": fmt["seconds"], "baseline_s": base["seconds"],
            "format_over_baseline": round(fmt["seconds"] / base["seconds"], 2),
            "traces_per_s": round(fmt["traces"] / fmt["seconds"]), "samples_per_s": round(fmt["samples"] / fmt["seconds"]),
            "ingest_s": ing["seconds"], "ingest_records_per_s": round(ing["read"] / ing["seconds"]),
            "ingest_kept": ing["kept"], "ingest_peak_rss_mib": ing["rss_mib"],
            "format_peak_rss_mib": fmt["rss_mib"], "baseline_peak_rss_mib": base["rss_mib"],
            "ratio_train": fmt["ratio_train"], "eta_train": fmt["eta_train"],
        })
    small, large = rows[0], rows[-1]
    summary = {
        "env": {**env_note, "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "config": CFG,
        "import_floor_rss_mib": floor["rss_mib"],
        "runs": rows,
        "input_growth": round(large["input_lines"] / small["input_lines"], 2),
        "peak_rss_growth": round(large["format_peak_rss_mib"] / small["format_peak_rss_mib"], 3),
        "ingest_peak_rss_growth": round(large["ingest_peak_rss_mib"] / small["ingest_peak_rss_mib"], 3),
        "peak_rss_above_floor_growth": round((large["format_peak_rss_mib"] - floor["rss_mib"])
                                             / (small["format_peak_rss_mib"] - floor["rss_mib"]), 3),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
