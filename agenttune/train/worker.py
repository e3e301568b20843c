"""The rank entry point of a training job: `python -m agenttune.train.worker SPEC.json`, started by
agenttune.train.launch on every rank (SPEC is written by `trainer.write_job_spec`). Its own module so that the
launcher (which imports the trainer to train in-process) and the trainer do not import each other."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agenttune.train.launch import die_with_parent
from agenttune.train.trainer import run_training, train_epoch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agenttune.train.worker",
                                 description="Run one rank of a training job described by SPEC.json "
                                             "(written by agenttune.train.launch).")
    ap.add_argument("spec")
    # The DeepSpeed launcher passes --local_rank; LOCAL_RANK in the environment says the same.
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    die_with_parent()  # a rank never outlives the launcher that started it
    spec = json.loads(Path(args.spec).read_text())
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    if spec.get("uninterrupted"):
        run_training(spec["base_model_dir"], spec["shard_paths"], None, spec["out_dir"], spec["epoch"], spec["cfg"],
                     spec["seed"], compute=spec.get("compute"), log=log)
    else:
        train_epoch(spec["base_model_dir"], spec["shard_paths"], spec["prev_epoch_dir"], spec["out_dir"],
                    spec["epoch"], spec["cfg"], spec["seed"], compute=spec.get("compute"), log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
