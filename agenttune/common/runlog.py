"""Stage logging for the thin scripts: everything a stage prints goes to its Snakemake log and to stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path


class _Tee:
    """Stands in for sys.stdout / sys.stderr during a stage: writes to the stage's log and to the stream it replaced.

    Libraries keep references to it past the stage: a logging handler created during the stage holds the sys.stderr
    of that moment (absl's, which rouge-score pulls in, flushes and closes its handler at interpreter exit). So once
    the log is closed the tee writes to the original stream alone, and `close` leaves both streams to their owners
    (stage_log closes the log, the interpreter its own streams)."""

    def __init__(self, log, stream):
        self.log, self.stream = log, stream

    def write(self, data):
        if not self.log.closed:
            self.log.write(data)
            self.log.flush()
        self.stream.write(data)
        self.stream.flush()
        return len(data)

    def flush(self):
        if not self.log.closed:
            self.log.flush()
        self.stream.flush()

    def isatty(self):
        return False

    def close(self):
        pass


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
