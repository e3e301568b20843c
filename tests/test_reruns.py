"""Reproducibility and partial re-runs, driven through the real Snakefile on the tiny config.

One fixture runs the tiny pipeline twice from scratch (two run names) and the tests compare what they wrote, then
plan re-runs after changing one thing at a time and check that exactly the expected rules would run.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import planned_jobs

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = "config/test/config.yaml"
RUN_A, RUN_B = "pytest-repro-a", "pytest-repro-b"


def smk(*args, run=RUN_A, timeout=1500):
    cmd = [SNAKEMAKE, *args, "--configfile", TINY, "--config", f"run={run}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def planned_rules(overlay: dict | None = None, run=RUN_A) -> set[str]:
    """Rules a dry run would execute, from Snakemake's job-stats table; `overlay` is merged over the tiny config (as
    a second config file: `--config` would read nested values such as 0.75 as strings)."""
    import tempfile

    import yaml

    configs = [TINY]
    if overlay:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump(overlay, fh)
        configs.append(fh.name)
    cmd = [SNAKEMAKE, "-n", "--configfile", *configs, "--config", f"run={run}"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        if overlay:
            os.unlink(configs[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return planned_jobs(proc.stdout + proc.stderr)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artefacts(run: str) -> dict[str, str]:
    out = REPO / "results" / run
    files = sorted(out.glob("samples/*.jsonl")) + sorted(out.glob("shards/*.parquet")) + \
        sorted(out.glob("checkpoints/epoch-*/model.safetensors")) + sorted(out.glob("eval/*/predictions.jsonl")) + \
        sorted(out.glob("eval/*/scores.json"))
    return {str(f.relative_to(out)): sha256(f) for f in files}


@pytest.fixture(scope="module")
def two_runs():
    for run in (RUN_A, RUN_B):
        shutil.rmtree(REPO / "results" / run, ignore_errors=True)
        proc = smk("--cores", "2", run=run)
        assert proc.returncode == 0, proc.stderr[-4000:]
    yield
    for run in (RUN_A, RUN_B):
        shutil.rmtree(REPO / "results" / run, ignore_errors=True)


@pytest.mark.slow
def test_tiny_pipeline_produces_the_report(two_runs):
    out = REPO / "results" / RUN_A
    report = (out / "report.md").read_text()
    assert "| base |" in report and "| epoch-1 |" in report and "| epoch-2 |" in report
    for model in ("base", "epoch-1", "epoch-2"):
        scores = json.loads((out / "eval" / model / "scores.json").read_text())
        assert scores["summary"]["n"] > 0
    m1 = json.loads((out / "checkpoints" / "epoch-1" / "metrics.json").read_text())
    m2 = json.loads((out / "checkpoints" / "epoch-2" / "metrics.json").read_text())
    assert m2["global_step"] == 2 * m1["global_step"]


@pytest.mark.slow
def test_two_fresh_runs_are_byte_identical(two_runs):
    a, b = artefacts(RUN_A), artefacts(RUN_B)
    kinds = {k.split("/")[0] for k in a}
    assert {"samples", "shards", "checkpoints", "eval"} <= kinds
    assert any(k.endswith("model.safetensors") for k in a) and any(k.endswith("scores.json") for k in a)
    assert a == b


@pytest.mark.slow
def test_noop_rerun_plans_nothing(two_runs):
    assert planned_rules() == set()


@pytest.mark.slow
def test_lambda_change_rescores_only(two_runs):
    assert planned_rules({"evaluate": {"lambda": 0.75}}) == {"score", "report"}


@pytest.mark.slow
def test_template_weight_change_reformats_and_below(two_runs):
    rules = planned_rules({"format": {"tool_formats": {"react_list": 0.9, "json_schema": 0.1}}})
    assert "format_samples" in rules and "train_epoch" in rules and "report" in rules
    assert not rules & {"demo_traces", "ingest", "prepare_base_model"}


@pytest.mark.slow
def test_learning_rate_change_retrains_not_reformats(two_runs):
    rules = planned_rules({"train": {"learning_rate": 0.002}})
    assert {"train_epoch", "predict", "score", "report"} <= rules
    assert not rules & {"demo_traces", "format_samples", "tokenize_shard", "prepare_base_model"}


def _edited(module: Path):
    """A context in which `module` has one more comment line. Snakemake compares the checksum of an input that is
    newer than the outputs with the one it recorded, so touching a file is not enough: its content must change."""
    import contextlib

    @contextlib.contextmanager
    def edit():
        original, stat = module.read_bytes(), module.stat()
        try:
            module.write_bytes(original + b"\n# edited by tests/test_reruns.py\n")
            later = time.time() + 5
            os.utime(module, (later, later))
            yield
        finally:
            module.write_bytes(original)
            os.utime(module, (stat.st_atime, stat.st_mtime))

    return edit()


@pytest.mark.slow
def test_editing_the_scoring_module_rescores_only(two_runs):
    with _edited(REPO / "agenttune" / "evaluate" / "metrics.py"):
        assert planned_rules() == {"score", "report"}
    assert planned_rules() == set()


@pytest.mark.slow
def test_editing_a_template_module_reformats_and_below(two_runs):
    with _edited(REPO / "agenttune" / "render" / "react.py"):
        rules = planned_rules()
        # the samples and everything made from them; predictions too (the template's stop strings). The shard
        # jobs themselves hide behind the plan_shards checkpoint until it has run again, so a dry run shows the plan.
        assert {"format_samples", "plan_shards", "train_epoch", "predict", "score", "report"} <= rules
        assert not rules & {"demo_traces", "ingest", "prepare_base_model"}
    assert planned_rules() == set()


RUN_C = "pytest-repro-killed"


def _run_and_kill(marker: str, delay: float, timeout: float = 900) -> bool:
    """Start the tiny pipeline for RUN_C; when `marker` (a glob under its results) appears, wait `delay` seconds and
    SIGKILL Snakemake and every job below it. True if it was killed, False if it finished first."""
    import signal

    out = REPO / "results" / RUN_C
    proc = subprocess.Popen([SNAKEMAKE, "--cores", "2", "--configfile", TINY, "--config", f"run={RUN_C}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if list(out.glob(marker)):
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise AssertionError(f"{marker} did not appear within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_jobs_killed_hard_leave_nothing_a_later_run_trusts(two_runs):
    """kill -9 during formatting, tokenization, training and evaluation; after `snakemake --unlock`, each re-run
    picks up where the last one died (the workflow profile re-runs incomplete jobs), and the finished run equals an
    uninterrupted one."""
    shutil.rmtree(REPO / "results" / RUN_C, ignore_errors=True)
    try:
        for marker, delay in (("logs/format_samples.log", 0.3), ("logs/tokenize_shard/train-*.log", 0.5),
                              ("logs/train_epoch/epoch-2.log", 2.0), ("logs/predict/epoch-1.log", 1.0)):
            assert _run_and_kill(marker, delay), f"the run finished before it could be killed at {marker}"
            # A Snakemake killed with -9 cannot remove its lock: `--unlock` is the documented step after a crash.
            assert smk("--unlock", run=RUN_C).returncode == 0
        proc = smk("--cores", "2", run=RUN_C)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert artefacts(RUN_C) == artefacts(RUN_A)
        assert planned_rules(run=RUN_C) == set()
    finally:
        shutil.rmtree(REPO / "results" / RUN_C, ignore_errors=True)
