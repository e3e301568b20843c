"""stage_log: a stage's output goes to its log and to the terminal, and libraries that keep the stage's stderr past
the stage (absl logging, pulled in by rouge-score, flushes and closes its handler at interpreter exit) end cleanly."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What the score stage does: import rouge-score (and with it absl logging) inside stage_log, log through absl.
STAGE = """
import sys
from agenttune.common.runlog import stage_log

with stage_log(sys.argv[1]) as log:
    from absl import logging as absl_logging
    from rouge_score import rouge_scorer

    absl_logging.warning("absl during the stage")
    log("rougeL %.2f" % rouge_scorer.RougeScorer(["rougeL"]).score("a b", "a b")["rougeL"].fmeasure)
print("after the stage")
absl_logging.warning("absl after the stage")
"""


def test_absl_logging_ends_without_a_traceback(tmp_path):
    log_path = tmp_path / "logs" / "score.log"
    proc = subprocess.run([sys.executable, "-c", STAGE, str(log_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    log = log_path.read_text(encoding="utf-8")
    assert "absl during the stage" in log and "rougeL 1.00" in log and log.rstrip().endswith("done")
    assert "after the stage" not in log and "absl after the stage" not in log  # the log holds the stage only
    assert "rougeL 1.00" in proc.stdout and "after the stage" in proc.stdout  # and the terminal sees everything
    assert "absl during the stage" in proc.stderr and "absl after the stage" in proc.stderr
