"""Stage logging for the thin scripts: everything a stage prints goes to its Snakemake log and to stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, data):
        for s in self.streams:
            s.write(data)
            s.flush()
        return len(data)

    def flush(self):
        for s in self.streams:
            s.flush()

    def isatty(self):
        return False


@contextlib.contextmanager
def stage_log(log_path: str | Path, threads: int | None = None):
    """Tee stdout/stderr into the log; yield a `log(msg)` function that timestamps progress lines."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(fh, old_out), _Tee(fh, old_err)

        def log(msg: str) -> None:
            print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

        try:
            yield log
            log("done")
        finally:
            sys.stdout, sys.stderr = old_out, old_err
