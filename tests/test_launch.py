"""Launch commands: built by agenttune.launch from the config, and run for real where one machine allows.

The Slurm commands run under tests/fake_slurm.py's srun/scontrol with a probe in place of Python, which records what
each rank was started with: proof that the rendezvous is computed inside the job step from SLURM_JOB_NODELIST.
tests/test_deepspeed.py trains through these same commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

import fake_slurm

from agenttune.launch import (LaunchPlan, launch_command, launch_environment, plan_launch,
                              rank_environment, run_epoch_job, slurm_resources, srun_cpus_per_task)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

PROBE = r'''
import json, os, sys
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")
with open(os.path.join(os.environ["PROBE_DIR"], f"{os.getpid()}.json"), "w") as fh:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}, fh)
'''


def test_default_is_one_process_without_slurm_resources():
    plan = plan_launch({})
    assert plan == LaunchPlan("none", 1, 1, None) and plan.world_size == 1
    assert slurm_resources(plan) == {}
    assert launch_command(plan, "/s.json", python="py") == ["py", "-m", "agenttune.train", "/s.json"]


@pytest.mark.parametrize("cfg, expected", [
    ({"launcher": "srun", "nodes": 2, "nproc_per_node": 4}, {"nodes": 2, "tasks": 8, "mpi": "srun"}),
    ({"launcher": "srun", "nodes": 1, "nproc_per_node": 2}, {"nodes": 1, "tasks": 2, "mpi": "srun"}),
    ({"launcher": "torchrun", "nodes": 4, "nproc_per_node": 8}, {"nodes": 4, "tasks": 4, "mpi": "srun"}),
    ({"launcher": "deepspeed", "nodes": 2, "nproc_per_node": 8}, {"nodes": 2, "tasks": 2, "mpi": "srun"}),
    ({"launcher": "torchrun", "nodes": 1, "nproc_per_node": 8}, {}),
])
def test_slurm_resources_follow_the_plan(cfg, expected):
    assert slurm_resources(plan_launch(cfg)) == expected


@pytest.mark.parametrize("cfg, resources, words", [
    ({"launcher": "none", "nproc_per_node": 2}, None, "runs one process"),
    ({"launcher": "mpirun"}, None, "not one of"),
    ({"launcher": "srun", "nodes": 2, "nproc_per_node": 4}, {"tasks": 4}, "resources tasks=4.*tasks=8"),
    ({"launcher": "torchrun", "nodes": 2}, {"nodes": 3, "mpi": "srun"}, "resources nodes=3"),
])
def test_inconsistent_launch_settings_are_refused(cfg, resources, words):
    with pytest.raises(ValueError, match=words):
        plan_launch(cfg, resources)


def test_run_epoch_job_refuses_resources_that_disagree_with_the_config(tmp_path):
    with pytest.raises(ValueError, match="resources tasks=2"):
        run_epoch_job(tmp_path / "model", [], None, tmp_path / "epoch-1", 1,
                      {"launcher": "srun", "nproc_per_node": 4}, 0, resources={"tasks": 2, "nodes": None})


def test_single_node_commands():
    assert launch_command(LaunchPlan("torchrun", 1, 4), "/s.json", python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "4",
        "-m", "agenttune.train", "/s.json"]
    assert launch_command(LaunchPlan("deepspeed", 1, 8, 29400), "/s.json", python="py") == [
        "py", "-m", "deepspeed.launcher.runner", "--num_gpus", "8", "--master_port", "29400",
        "--module", "agenttune.train", "/s.json"]


def test_rank_environment_splits_the_cores_and_keeps_the_op_cache_in_the_project(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    env = rank_environment(LaunchPlan("torchrun", 1, 2), threads=8, on_gpu=False)
    assert env["OMP_NUM_THREADS"] == "4" and env["DS_ACCELERATOR"] == "cpu"
    assert env["TORCH_EXTENSIONS_DIR"] == str(tmp_path / ".cache" / "torch_extensions")
    gpu = rank_environment(LaunchPlan("torchrun", 1, 8), threads=64, on_gpu=True)
    assert "DS_ACCELERATOR" not in gpu and "OMP_NUM_THREADS" not in gpu
    lone = launch_environment(LaunchPlan("none"), 2, False, deepspeed=True)
    assert (lone["RANK"], lone["WORLD_SIZE"], lone["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert "RANK" not in launch_environment(LaunchPlan("none"), 2, False, deepspeed=False)


def _run_under_fake_slurm(tmp_path, plan):
    probe = tmp_path / "probe"
    probe.write_text(f"#!{sys.executable}\n{PROBE}")
    probe.chmod(0o755)
    records = tmp_path / "records"
    records.mkdir()
    env = {**fake_slurm.install(tmp_path / "bin"), "PROBE_DIR": str(records), "SLURM_JOB_ID": "4242",
           "FAKE_SLURM_JOB_NODES": str(plan.nodes)}
    # The job's own shell has no node list: only the tasks srun starts get one.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    cmd = launch_command(plan, str(tmp_path / "spec.json"), python=str(probe), env={})
    proc = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    srun_lines = (tmp_path / "bin" / "srun.log").read_text().splitlines()
    return [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))], srun_lines


def test_srun_starts_one_rank_per_task_with_the_rendezvous_from_the_job_step(tmp_path):
    ranks, srun = _run_under_fake_slurm(tmp_path, LaunchPlan("srun", 2, 2))
    assert srun[0].startswith("--nodes=2 --ntasks=4 --ntasks-per-node=2 --kill-on-bad-exit=1 bash -c")
    envs = sorted((r["env"] for r in ranks), key=lambda e: int(e["RANK"]))
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in envs] == [
        ("0", "0", "4"), ("1", "1", "4"), ("2", "0", "4"), ("3", "1", "4")]
    # The first node's NodeAddr (its name, fakenode1, does not resolve), a port from the job id.
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["LOCAL_WORLD_SIZE"]) for e in envs} == {("127.0.0.1", "24242", "2")}
    assert all(r["argv"] == ["-m", "agenttune.train", str(tmp_path / "spec.json")] for r in ranks)


def test_torchrun_over_srun_uses_a_c10d_rendezvous_at_the_first_node(tmp_path):
    ranks, srun = _run_under_fake_slurm(tmp_path, LaunchPlan("torchrun", 2, 4, 29555))
    assert srun[0].startswith("--nodes=2 --ntasks=2 --ntasks-per-node=1")
    assert len(ranks) == 2  # one torchrun per node, each starting 4 local ranks
    for r in ranks:
        argv = " ".join(r["argv"])
        assert argv.startswith("-m torch.distributed.run --nnodes 2 --nproc_per_node 4")
        assert "--rdzv_id 4242 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:29555" in argv


def test_deepspeed_launcher_gets_a_hostfile_from_the_allocation(tmp_path):
    ranks, srun = _run_under_fake_slurm(tmp_path, LaunchPlan("deepspeed", 2, 8, 29400))
    assert srun[0].startswith("--nodes=1 --ntasks=1")
    hostfile = tmp_path / "spec.json.hostfile"
    assert hostfile.read_text() == "fakenode1 slots=8\nfakenode2 slots=8\n"
    argv = " ".join(ranks[0]["argv"])
    assert f"--hostfile {hostfile} --launcher pdsh --num_nodes 2 --num_gpus 8" in argv
    assert "--master_addr 127.0.0.1 --master_port 29400 --module agenttune.train" in argv


def test_ranks_die_with_the_job_that_launched_them(tmp_path):
    rank = "import time; from agenttune.launch import die_with_parent; die_with_parent(); print('up', flush=True); " \
           "time.sleep(120)"
    job = f"import sys; from agenttune.launch import run_command; run_command([sys.executable, '-c', {rank!r}], {{}})"
    proc = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive


def _dry_run(tmp_path, train_extra: dict, name: str):
    base = yaml.safe_load((REPO / "config" / "test" / "config.yaml").read_text())
    override = tmp_path / f"{name}.yaml"
    override.write_text(yaml.safe_dump({"run": f"pytest-{name}", "train": {**base["train"], **train_extra}}))
    return subprocess.run([SNAKEMAKE, "-n", "--configfile", "config/test/config.yaml", str(override)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_train_rule_asks_slurm_for_one_task_per_rank(tmp_path):
    proc = _dry_run(tmp_path, {"deepspeed": {"stage": 3}, "launcher": "srun", "nodes": 2, "nproc_per_node": 2},
                    "srun-plan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    block = out[out.index("rule train_epoch:"):]
    resources = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
    assert "nodes=2" in resources and "tasks=4" in resources and "mpi=srun" in resources

    bad = _dry_run(tmp_path, {"launcher": "none", "nproc_per_node": 2}, "bad-plan")
    assert bad.returncode != 0
    assert "runs one process" in bad.stdout + bad.stderr


def test_gpu_stack_lives_only_in_the_gpu_environment():
    for path in (REPO / "requirements.txt", REPO / "envs" / "train-cpu.yaml"):
        wanted = [line.split("#")[0].strip().lower() for line in path.read_text().splitlines()]
        gpu_only = [w for w in wanted if w and any(k in w for k in ("flash-attn", "flash_attn", "nvidia-", "cuda"))]
        assert not gpu_only, f"{path.name} would install GPU packages on CPU machines: {gpu_only}"
    assert "deepspeed==0.19.8" in (REPO / "requirements.txt").read_text()
    gpu = yaml.safe_load((REPO / "envs" / "train-gpu.yaml").read_text())
    pip = next(d["pip"] for d in gpu["dependencies"] if isinstance(d, dict))
    assert "torch==2.13.0" in pip and "deepspeed==0.19.8" in pip
    post = (REPO / "envs" / "train-gpu.post-deploy.sh").read_text()
    assert "flash-attn==" in post and "--no-build-isolation" in post


def test_srun_steps_get_the_cpus_of_their_gpus_or_their_share_of_the_node():
    # the slurm profile's GPU rules: --cpus-per-gpu 8; torchrun per node with 4 GPUs -> 32 CPUs for its one task
    env = {"SLURM_CPUS_PER_GPU": "8", "SLURM_CPUS_ON_NODE": "64"}
    torchrun = launch_command(LaunchPlan("torchrun", 2, 4), "/s.json", python="py", env=env)
    assert torchrun[:7] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                            "--cpus-per-task=32", "bash"]
    # one task per GPU: 8 each
    assert "--cpus-per-task=8" in launch_command(LaunchPlan("srun", 2, 4), "/s.json", python="py", env=env)
    # no --cpus-per-gpu (a CPU job): the node's CPUs split between the node's tasks
    cpu_only = launch_command(LaunchPlan("srun", 1, 2), "/s.json", python="py", env={"SLURM_CPUS_ON_NODE": "16"})
    assert "--cpus-per-task=8" in cpu_only
    assert srun_cpus_per_task(4, 1, {}) == []  # outside an allocation: srun's own default
    # under snakemake-executor-plugin-slurm the job sees no SLURM_* variables: the rule's cpus_per_gpu resource
    assert launch_command(LaunchPlan("torchrun", 2, 4), "/s.json", python="py", env={}, cpus_per_gpu=6)[5] == \
        "--cpus-per-task=24"


def test_srun_steps_with_explicit_cpus_do_not_inherit_cpus_per_gpu(tmp_path, monkeypatch, capsys):
    """srun reads SLURM_CPUS_PER_GPU as --cpus-per-gpu, which Slurm refuses next to --cpus-per-task."""
    from agenttune.launch import run_command

    fake = tmp_path / "srun"
    fake.write_text("#!/bin/sh\necho \"CPG=${SLURM_CPUS_PER_GPU-unset}\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CPUS_PER_GPU", "8")
    assert run_command(["srun", "--cpus-per-task=8", "true"], {}) == 0
    assert capsys.readouterr().out == "CPG=unset\n"
    assert run_command(["srun", "true"], {}) == 0  # no explicit CPUs: the job's setting stays
    assert capsys.readouterr().out == "CPG=8\n"
