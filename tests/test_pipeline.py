"""End to end: the real Snakefile on the tiny config (a tiny Llama with the SmolLM2 tokenizer) produces the report."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.mark.slow
def test_tiny_pipeline_produces_report(tmp_path):
    run = "pytest-e2e"
    out = REPO / "results" / run
    shutil.rmtree(out, ignore_errors=True)
    cmd = [SNAKEMAKE, "--cores", "2", "--configfile", "config/test/config.yaml", "--config", f"run={run}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = (out / "report.md").read_text()
    assert "| base |" in report and "| epoch-1 |" in report and "| epoch-2 |" in report
    for model in ("base", "epoch-1", "epoch-2"):
        scores = json.loads((out / "eval" / model / "scores.json").read_text())
        assert scores["summary"]["n"] > 0
    m1 = json.loads((out / "checkpoints" / "epoch-1" / "metrics.json").read_text())
    m2 = json.loads((out / "checkpoints" / "epoch-2" / "metrics.json").read_text())
    assert m2["global_step"] == 2 * m1["global_step"]
    # A no-op re-run plans nothing.
    dry = subprocess.run(cmd[:1] + ["-n", "--configfile", "config/test/config.yaml", "--config", f"run={run}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    shutil.rmtree(out, ignore_errors=True)


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
