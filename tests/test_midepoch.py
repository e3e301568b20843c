"""Step checkpoints inside an epoch (issue 19, part 3): a training job SIGKILLed in the middle of an epoch and started
again resumes from its newest complete step checkpoint and ends bit-identical (sha256 of `model.safetensors`) to the
uninterrupted run. Plain HF Trainer in one process, DeepSpeed ZeRO-3 on one and on two ranks (gloo on CPU, started by
the project's launch commands). Also: a step checkpoint killed while being written is never resumed from, one from
another config or world size is refused naming the field, the newest `keep` are kept, the epoch's step checkpoints
go when it completes, and the preflight check of the interval against a time limit.

The kills are exact: a test hook (`AGENTTUNE_TEST_STALL_AFTER_STEP`, `AGENTTUNE_TEST_STALL_IN_STEP_SAVE`) makes the
job stall after an optimizer step, or in the middle of writing a step checkpoint, and says so in its output; the
test then SIGKILLs the job's whole process group. `-k midepoch` selects this file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from training_data import CFG, write_shards

from agenttune.cluster.launch_plan import LaunchPlan
from agenttune.common.manifest import sha256_file
from agenttune.train import deepspeed as ds
from agenttune.train import step_checkpoints as steps
from agenttune.train.launch import find_free_port, launch_command, launch_environment, run_command
from agenttune.train.trainer import train_epoch, write_job_spec

REPO = Path(__file__).resolve().parents[1]
SEED = 5
OFF = dict(CFG, step_checkpoints={"every_steps": None, "every_minutes": None})
EVERY_2 = dict(CFG, step_checkpoints={"every_steps": 2, "every_minutes": None, "keep": 2})
EVERY_1 = dict(CFG, step_checkpoints={"every_steps": 1, "every_minutes": None, "keep": 2})
BY_TIME = dict(CFG, step_checkpoints={"every_steps": None, "every_minutes": 1e-6, "keep": 2})  # due after every step
ZERO3 = {"stage": 3}


def sha(folder: Path) -> str:
    return sha256_file(folder / "model.safetensors")


def losses(folder: Path) -> list[tuple[int, float, float]]:
    """(step, loss, learning rate) of every logged step in the folder's trainer_state.json."""
    state = json.loads((folder / "trainer_state.json").read_text())
    return [(r["step"], r["loss"], r["learning_rate"]) for r in state["log_history"] if "loss" in r]


def step_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def run_until_stalled(cmd: list[str], env: dict, timeout: float = 600) -> list[str]:
    """Run a training job in a session of its own until its test hook says it stalls, then SIGKILL the whole
    process group (launcher and ranks). Returns the job's output."""
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, cwd=REPO)
    lines: list[str] = []
    below: list[psutil.Process] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "test hook: stalling" in line:
                below = psutil.Process(proc.pid).children(recursive=True)
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-40:])
    _, alive = psutil.wait_procs(below, timeout=30)
    assert not alive, f"ranks outlived their killed job: {alive}"
    return lines


def worker_until_stalled(spec: Path, **hook) -> list[str]:
    """The one-process job (`launcher: none`), as the rank entry point the launchers use."""
    return run_until_stalled([sys.executable, "-m", "agenttune.train.worker", str(spec)], hook)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 12 rows, batch 1, accumulation 2: 6 optimizer steps per epoch (epoch 2 is global steps 7-12).
    return write_shards(tmp_path_factory.mktemp("midepoch-shards"))


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory, tiny_model_dir, shards):
    """Two epochs, chained, with step checkpoints off: the uninterrupted run."""
    root = tmp_path_factory.mktemp("midepoch-reference")
    e1, e2 = root / "epoch-1", root / "epoch-2"
    train_epoch(tiny_model_dir, shards, None, e1, 1, OFF, SEED, log=lambda m: None)
    train_epoch(tiny_model_dir, shards, e1, e2, 2, OFF, SEED, log=lambda m: None)
    assert not steps.steps_dir(e1).exists() and not steps.steps_dir(e2).exists()
    return {"e1": e1, "e2": e2}


@pytest.fixture(scope="module")
def plain_epoch1(tmp_path_factory, tiny_model_dir, shards, plain_reference):
    """Epoch 1 with a step checkpoint every 2 steps: saving changes nothing, and the epoch's step checkpoints go when
    it completes."""
    e1 = tmp_path_factory.mktemp("midepoch-plain") / "epoch-1"
    said: list[str] = []
    metrics = train_epoch(tiny_model_dir, shards, None, e1, 1, EVERY_2, SEED, log=said.append)
    assert metrics["step_checkpoints_written"] == [2, 4]  # step 6 ends the epoch: the epoch folder is saved there
    assert any("removed" in m and str(steps.steps_dir(e1)) in m for m in said), said
    assert not steps.steps_dir(e1).exists()
    assert sha(e1) == sha(plain_reference["e1"])
    return e1


# --------------------------------------------------------------------------- plain HF Trainer, one process

def test_midepoch_plain_killed_between_step_checkpoints_resumes_bit_identical(tmp_path, tiny_model_dir, shards,
                                                                               plain_reference, plain_epoch1):
    e2 = tmp_path / "epoch-2"
    spec = write_job_spec(tmp_path / "epoch-2.launch.json", tiny_model_dir, shards, plain_epoch1, e2, 2, EVERY_2,
                          SEED)
    # Step checkpoints at global steps 8 and 10; the job is killed after step 9, before step 10's.
    out = worker_until_stalled(spec, AGENTTUNE_TEST_STALL_AFTER_STEP="9")
    assert any("step checkpoint 8: wrote" in line for line in out), "".join(out[-30:])
    root = steps.steps_dir(e2)
    assert step_names(root) == ["step-8"] and not e2.exists()
    assert steps.incomplete_reason(root / "step-8") is None
    marker = steps.read_marker(root / "step-8")
    assert marker["step"] == 8 and marker["fingerprint"]["epoch"] == 2 and marker["fingerprint"]["world_size"] == 1
    for f in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert f in marker["files"], f

    # Started again (the retry), the job resumes from step 8 and ends where the uninterrupted run ends.
    said: list[str] = []
    metrics = train_epoch(tiny_model_dir, shards, plain_epoch1, e2, 2, EVERY_2, SEED, log=said.append)
    assert any("resuming from step checkpoint" in m and "step-8" in m for m in said), said
    assert sha(e2) == sha(plain_reference["e2"])
    # The data position too: every step after the resume saw the batch the uninterrupted run saw (same loss).
    assert losses(e2) == losses(plain_reference["e2"]) and len(losses(e2)) == 12
    assert metrics["resumed_from_step"] == 8 and metrics["step_checkpoints_written"] == [10]
    assert 0 < metrics["timed_tokens"] < metrics["tokens"]  # tokens/s counts the timed steps 9-12 only
    assert not root.exists() and not Path(str(e2) + ".partial").exists()
    # The epoch folder is the same as the uninterrupted run's, apart from timings.
    ref_manifest = json.loads((plain_reference["e2"] / "manifest.json").read_text())
    manifest = json.loads((e2 / "manifest.json").read_text())
    assert manifest["outputs"] == ref_manifest["outputs"]


def test_midepoch_plain_killed_while_writing_is_never_resumed_and_keep_holds(tmp_path, tiny_model_dir, shards,
                                                                               plain_reference, plain_epoch1):
    e2 = tmp_path / "epoch-2"
    spec = write_job_spec(tmp_path / "epoch-2.launch.json", tiny_model_dir, shards, plain_epoch1, e2, 2, EVERY_1,
                          SEED)
    # A step checkpoint every step, keep 2; killed in the middle of writing step 11's (files written, no marker).
    out = worker_until_stalled(spec, AGENTTUNE_TEST_STALL_IN_STEP_SAVE="11")
    root = steps.steps_dir(e2)
    assert step_names(root) == ["step-10", "step-9"], "".join(out[-30:])  # 7 and 8 deleted after 10 was complete
    half = Path(str(e2) + ".partial") / "checkpoint-11"
    assert (half / "model.safetensors").is_file() and not (half / steps.MARKER).exists()
    # A folder that looks newer but has no marker (a copy cut short) and one whose file is truncated.
    shutil.copytree(root / "step-10", root / "step-12")
    (root / "step-12" / steps.MARKER).unlink()
    shutil.copytree(root / "step-10", root / "step-11")
    marker = steps.read_marker(root / "step-11")
    marker["step"] = 11
    (root / "step-11" / steps.MARKER).write_text(json.dumps(marker))
    with open(root / "step-11" / "optimizer.pt", "r+b") as fh:
        fh.truncate(100)
    assert "no step_checkpoint.json" in steps.incomplete_reason(root / "step-12")
    assert "optimizer.pt has 100 bytes" in steps.incomplete_reason(root / "step-11")

    said: list[str] = []
    metrics = train_epoch(tiny_model_dir, shards, plain_epoch1, e2, 2, EVERY_1, SEED, log=said.append)
    assert any("removing" in m and "epoch-2.partial" in m for m in said), said
    assert any("ignoring and removing the incomplete" in m and "step-12" in m for m in said), said
    assert any("ignoring and removing the incomplete" in m and "step-11" in m for m in said), said
    assert metrics["resumed_from_step"] == 10 and metrics["step_checkpoints_written"] == [11]
    assert sha(e2) == sha(plain_reference["e2"])
    assert not root.exists()


def test_midepoch_a_step_checkpoint_of_another_config_or_world_size_is_refused(tmp_path, tiny_model_dir, shards,
                                                                                plain_epoch1):
    e2 = tmp_path / "epoch-2"
    spec = write_job_spec(tmp_path / "epoch-2.launch.json", tiny_model_dir, shards, plain_epoch1, e2, 2, EVERY_2,
                          SEED)
    worker_until_stalled(spec, AGENTTUNE_TEST_STALL_AFTER_STEP="9")
    root = steps.steps_dir(e2)
    assert step_names(root) == ["step-8"]

    changed = dict(EVERY_2, learning_rate=2e-3)
    with pytest.raises(ValueError, match=r"step-8 was written by another job: train.learning_rate: 0.001 in the "
                                         r"checkpoint, 0.002 in this job.*delete .*epoch-2.steps") as err:
        train_epoch(tiny_model_dir, shards, plain_epoch1, e2, 2, changed, SEED, log=lambda m: None)
    assert str(root / "step-8") in str(err.value)
    with pytest.raises(ValueError, match=r"seed: 5 in the checkpoint, 6 in this job"):
        train_epoch(tiny_model_dir, shards, plain_epoch1, e2, 2, EVERY_2, SEED + 1, log=lambda m: None)
    other_shards = write_shards(tmp_path / "other-shards", seed=9)
    with pytest.raises(ValueError, match=r"shards.train-0.parquet: '[0-9a-f]{64}' in the checkpoint"):
        train_epoch(tiny_model_dir, other_shards, plain_epoch1, e2, 2, EVERY_2, SEED, log=lambda m: None)
    # Another world size (the real two-rank case is in the ZeRO-3 test below), checked the way every rank checks.
    current = steps.read_marker(root / "step-8")["fingerprint"]
    with pytest.raises(ValueError, match=r"world_size: 1 in the checkpoint, 2 in this job"):
        steps.choose_resume(root, dict(current, world_size=2), is_main=True, log=lambda m: None)
    # Turning step checkpoints off, or changing how often they are written, is not a change of the training.
    assert steps.choose_resume(root, current, is_main=True, log=lambda m: None)[0] == 8
    assert steps.training_config(dict(EVERY_2, step_checkpoints={"every_steps": 5}, retries=7, launcher="torchrun",
                                      nodes=2)) == steps.training_config(EVERY_2)
    assert step_names(root) == ["step-8"]  # nothing was deleted by the refusals


# --------------------------------------------------------------------------- DeepSpeed ZeRO-3

def _zero_cfg(base: dict, plan: LaunchPlan) -> dict:
    return dict(base, deepspeed=ZERO3, launcher=plan.launcher, nodes=plan.nodes, nproc_per_node=plan.nproc_per_node)


def _zero_job(plan: LaunchPlan, model, shards, prev, out, epoch, cfg) -> tuple[list[str], dict]:
    """(command, environment) of one ZeRO-3 job, started with the project's launch command."""
    spec = write_job_spec(Path(str(out) + ".launch.json"), model, shards, prev, out, epoch, _zero_cfg(cfg, plan),
                          SEED)
    env = {**launch_environment(plan, threads=2, on_gpu=False, deepspeed=True),
           "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
    return launch_command(plan, spec), env


def _zero_run(plan, model, shards, prev, out, epoch, cfg) -> int:
    cmd, env = _zero_job(plan, model, shards, prev, out, epoch, cfg)
    return run_command(cmd, env)


def test_midepoch_zero3_one_rank_killed_between_step_checkpoints_resumes_bit_identical(tmp_path, tiny_model_dir,
                                                                                        shards):
    plan = LaunchPlan("none")
    ref1, ref2 = tmp_path / "reference" / "epoch-1", tmp_path / "reference" / "epoch-2"
    e2 = tmp_path / "killed" / "epoch-2"
    assert _zero_run(plan, tiny_model_dir, shards, None, ref1, 1, OFF) == 0
    assert _zero_run(plan, tiny_model_dir, shards, ref1, ref2, 2, OFF) == 0

    # Epoch 2 from the same epoch 1, a step checkpoint every 2 steps, killed after step 9 (step-8 is complete).
    cmd, env = _zero_job(plan, tiny_model_dir, shards, ref1, e2, 2, EVERY_2)
    out = run_until_stalled(cmd, {**env, "AGENTTUNE_TEST_STALL_AFTER_STEP": "9"})
    root = steps.steps_dir(e2)
    assert step_names(root) == ["step-8"], "".join(out[-30:])
    assert ds.zero_checkpoint_world_size(root / "step-8") == 1
    assert "latest" in steps.read_marker(root / "step-8")["files"]

    assert _zero_run(plan, tiny_model_dir, shards, ref1, e2, 2, EVERY_2) == 0
    assert sha(e2) == sha(ref2)
    assert losses(e2) == losses(ref2)
    m = json.loads((e2 / "metrics.json").read_text())
    assert m["resumed_from_step"] == 8 and m["step_checkpoints_written"] == [10] and m["deepspeed_stage"] == 3
    assert not root.exists()


def test_midepoch_zero3_two_ranks_killed_between_step_checkpoints_resumes_bit_identical(tmp_path, tiny_model_dir,
                                                                                         shards):
    two = LaunchPlan("torchrun", 1, 2)
    ref, e1 = tmp_path / "reference" / "epoch-1", tmp_path / "killed" / "epoch-1"
    assert _zero_run(two, tiny_model_dir, shards, None, ref, 1, OFF) == 0

    # Epoch 1 on two ranks (3 optimizer steps: 12 rows, batch 1 × accumulation 2 × 2 ranks), a step checkpoint
    # by time, at every step (rank 0's clock, agreed by both ranks at each step); killed after step 2, before its
    # step checkpoint: step-1 is complete.
    cmd, env = _zero_job(two, tiny_model_dir, shards, None, e1, 1, BY_TIME)
    out = run_until_stalled(cmd, {**env, "AGENTTUNE_TEST_STALL_AFTER_STEP": "2"})
    root = steps.steps_dir(e1)
    assert step_names(root) == ["step-1"], "".join(out[-30:])
    files = steps.read_marker(root / "step-1")["files"]
    for rank in (0, 1):  # every rank's ZeRO shards and RNG state are in it
        assert f"global_step1/zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in files
        assert f"global_step1/bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files or \
            f"global_step1/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
        assert f"rng_state_{rank}.pth" in files

    # The same job on one rank is refused before it trains: the field is named.
    cmd, env = _zero_job(LaunchPlan("none"), tiny_model_dir, shards, None, e1, 1, BY_TIME)
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "world_size: 2 in the checkpoint, 1 in this job" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert step_names(root) == ["step-1"]

    # Two ranks again (the retry): resumes from step 1, ends bit-identical to the uninterrupted run.
    assert _zero_run(LaunchPlan("torchrun", 1, 2, find_free_port()), tiny_model_dir, shards, None, e1, 1,
                     BY_TIME) == 0
    assert sha(e1) == sha(ref)
    assert losses(e1) == losses(ref)
    m = json.loads((e1 / "metrics.json").read_text())
    assert m["resumed_from_step"] == 1 and m["world_size"] == 2 and m["step_checkpoints_written"] == [2]
    assert ds.zero_checkpoint_world_size(e1) == 2
    assert not root.exists()


# --------------------------------------------------------------------------- the time interval and the preflight

def test_midepoch_every_minutes_and_keep_one(tmp_path, tiny_model_dir, shards):
    # An interval shorter than a step: rank 0's clock says "due" after every step (two ranks: the ZeRO-3 test above).
    cfg = dict(CFG, epochs=1, step_checkpoints={"every_steps": None, "every_minutes": 1e-6, "keep": 1})
    said: list[str] = []
    metrics = train_epoch(tiny_model_dir, shards, None, tmp_path / "epoch-1", 1, cfg, SEED, log=said.append)
    assert metrics["step_checkpoints_written"] == [1, 2, 3, 4, 5]
    assert metrics["step_checkpoint_save_s"] > 0
    assert any("kept the newest 1" in m for m in said)


def test_midepoch_preflight_names_an_interval_longer_than_the_time_limit():
    problems = steps.step_checkpoint_problems(CFG, time_limit_minutes=60)
    assert len(problems) == 1 and "train.step_checkpoints.every_minutes is 120 min" in problems[0]
    assert "60 min" in problems[0]
    assert steps.step_checkpoint_problems(CFG, time_limit_minutes=24 * 60) == []
    assert steps.step_checkpoint_problems(CFG, time_limit_minutes=None) == []
    by_steps = dict(CFG, step_checkpoints={"every_steps": 500, "every_minutes": None})
    assert steps.step_checkpoint_problems(by_steps, 60) == []  # nothing to estimate with
    problems = steps.step_checkpoint_problems(by_steps, 60, estimated_step_seconds=12)
    assert len(problems) == 1 and "train.step_checkpoints.every_steps is 500 steps, about 100 min" in problems[0]
    off = dict(CFG, step_checkpoints={"every_steps": None, "every_minutes": None})
    problems = steps.step_checkpoint_problems(off, 24 * 60, estimated_epoch_minutes=40 * 60)
    assert len(problems) == 1 and "step checkpoints are off" in problems[0]
    # A 40 h epoch in 24 h jobs saving every 2 h: each job keeps at least 22 h, so 2 jobs (1 retry) do.
    assert steps.step_checkpoint_problems(CFG, 24 * 60, estimated_epoch_minutes=40 * 60) == []
    problems = steps.step_checkpoint_problems(dict(CFG, retries=0), 24 * 60, estimated_epoch_minutes=40 * 60)
    assert len(problems) == 1 and "train.retries (0) allows 1" in problems[0]
    # An epoch estimated to end well within the limit needs no step checkpoint to make progress (the test cluster's
    # 60-minute jobs of a two-minute tiny epoch): nothing to refuse, whatever the interval.
    assert steps.step_checkpoint_problems(CFG, 60, estimated_epoch_minutes=2) == []
    assert steps.step_checkpoint_problems(CFG, 60, estimated_epoch_minutes=45) != []


# --------------------------------------------------------------------------- the train rule's retries

@pytest.mark.slow
def test_midepoch_snakemake_retries_a_killed_epoch_job_which_resumes_bit_identical(tmp_path):
    """The tiny pipeline up to epoch 2, with each epoch's job SIGKILLing itself once in the middle of the epoch (a
    node failure): Snakemake retries it (`retries: train.retries`), the retry resumes from the step checkpoint, and
    both epochs equal an uninterrupted run of the same inputs."""
    import yaml

    from agenttune.common.config import with_defaults
    from agenttune.train.trainer import run_training

    run = "pytest-midepoch-retries"
    out = REPO / "results" / run
    shutil.rmtree(out, ignore_errors=True)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  step_checkpoints:\n    every_steps: 2\n    every_minutes: null\n")
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    # 19 optimizer steps per epoch in the tiny config: killed after global steps 5 (epoch 1) and 25 (epoch 2).
    env = {**os.environ, "AGENTTUNE_TEST_KILL_AFTER_STEP": "5,25"}
    try:
        proc = subprocess.run([snakemake, "--cores", "2", "--configfile", "config/test/config.yaml", str(overlay),
                               "--config", f"run={run}", "--", f"results/{run}/checkpoints/epoch-2"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=1500)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert log.count("Trying to restart job") == 2, log[-4000:]  # one retry per epoch
        for epoch, step in ((1, 4), (2, 24)):
            job_log = (out / "logs" / "train_epoch" / f"epoch-{epoch}.log").read_text()
            assert f"resuming from step checkpoint results/{run}/checkpoints/epoch-{epoch}.steps/step-{step}" \
                in job_log, job_log[-3000:]
            metrics = json.loads((out / "checkpoints" / f"epoch-{epoch}" / "metrics.json").read_text())
            assert metrics["resumed_from_step"] == step
            assert not (out / "checkpoints" / f"epoch-{epoch}.steps").exists()

        config = with_defaults(yaml.safe_load((REPO / "config" / "test" / "config.yaml").read_text()))
        model = REPO / "results" / "models" / config["model"]["name"]
        shards = sorted((out / "shards").glob("train-*.parquet"))
        reference = tmp_path / "reference" / "epoch-2"
        run_training(model, shards, None, reference, 2, config["train"], config["seed"], log=lambda m: None)
        assert sha(out / "checkpoints" / "epoch-2") == sha(reference)
    finally:
        shutil.rmtree(out, ignore_errors=True)
