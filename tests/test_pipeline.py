"""The preflight stops a run that cannot fit before any training job (the end-to-end run itself is in test_reruns)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.mark.slow
def test_preflight_refuses_before_any_training_job(tmp_path):
    run = "pytest-refused"
    out = REPO / "results" / run
    shutil.rmtree(out, ignore_errors=True)
    override = tmp_path / "too-small.yaml"
    override.write_text(f"run: {run}\ncompute:\n  device: cpu\n  devices: 1\n  device_peak_flops: 1.6e+11\n"
                        "  device_memory_gib: 0.05\n")
    cmd = [SNAKEMAKE, "--cores", "2", "--configfile", "config/test/config.yaml", str(override)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    log = (out / "logs" / "cost_preflight.log").read_text()
    assert proc.returncode != 0
    assert "does not fit" in log and "GiB per GPU" in log
    assert "preflight refused the run" in proc.stdout + proc.stderr
    assert not (out / "checkpoints").exists()
    shutil.rmtree(out, ignore_errors=True)
