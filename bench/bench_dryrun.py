"""How long `snakemake -n` takes on the default config (target: ≤ 5 s), and a no-op re-run on the tiny config.

Usage: .venv/bin/python bench/bench_dryrun.py [--repeat 5]
Prints a Markdown table; the median of the repeats is the figure to record in BENCHMARKS.md.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def timed(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for name, cmd in [("snakemake -n (default config)", [SNAKEMAKE, "-n"]),
                      ("snakemake -n (tiny config)", [SNAKEMAKE, "-n", "--configfile", "config/test/config.yaml"]),
                      ("python -c pass (interpreter baseline)", [sys.executable, "-c", "pass"])]:
        times = [timed(cmd) for _ in range(args.repeat)]
        rows.append((name, statistics.median(times), min(times), max(times)))
    print("| command | median s | min s | max s |\n|---|---|---|---|")
    for name, med, lo, hi in rows:
        print(f"| {name} | {med:.2f} | {lo:.2f} | {hi:.2f} |")


if __name__ == "__main__":
    main()
