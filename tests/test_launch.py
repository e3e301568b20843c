"""Launch commands: built by agenttune.train.launch from the config, and run for real where one machine allows.

The Slurm commands run under tests/fake_slurm.py's srun/scontrol with a probe in place of Python, which records what
each rank was started with: proof that the rendezvous is computed inside the job step from SLURM_JOB_NODELIST.
DeepSpeed's per-node launcher runs for real inside the probe, so the ranks it starts record the GPUs DeepSpeed gave
them. tests/test_deepspeed.py trains through these same commands.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

import fake_slurm

from agenttune.cluster.launch_plan import LaunchPlan, plan_launch, slurm_resources
from agenttune.train.launch import (launch_command, launch_environment, rank_environment, run_epoch_job,
                                    srun_cpus_per_task)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

PROBE = r'''
import json, os, runpy, sys, tempfile
argv = sys.argv[1:]
module = argv[argv.index("-m") + 1] if "-m" in argv else None
if module == "agenttune.train.launch" and "FAKE_NODE_GPUS" in os.environ:
    # Slurm gives each task of a GPU step its node's GPUs in CUDA_VISIBLE_DEVICES; the fake srun does not.
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["FAKE_NODE_GPUS"].split(";")[int(os.environ["SLURM_NODEID"])]
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
        "SLURM_NODEID", "CUDA_VISIBLE_DEVICES")
fd, _ = tempfile.mkstemp(suffix=".json", dir=os.environ["PROBE_DIR"])  # one per process image: exec keeps the pid
with os.fdopen(fd, "w") as fh:
    json.dump({"argv": argv, "env": {k: os.environ.get(k) for k in keys}}, fh)
if module in ("agenttune.train.launch", "deepspeed.launcher.launch"):
    # The launchers run for real, in this process; what they start with sys.executable is this probe again.
    sys.executable = os.path.abspath(__file__)
    sys.argv = [module, *argv[argv.index("-m") + 2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
elif module == "agenttune.train.worker" and "PROBE_STAY" in os.environ:  # a rank that stays up, as agenttune.train.worker does
    import time
    from agenttune.train.launch import die_with_parent
    die_with_parent()
    print("rank up", flush=True)
    time.sleep(120)
'''


def _world_info(argv: list[str]) -> dict:
    arg = next(a for a in argv if a.startswith("--world_info="))
    return json.loads(base64.urlsafe_b64decode(arg.split("=", 1)[1]))


def _probe(tmp_path) -> tuple[str, Path]:
    probe = tmp_path / "probe"
    probe.write_text(f"#!{sys.executable}\n{PROBE}")
    probe.chmod(0o755)
    records = tmp_path / "records"
    records.mkdir()
    return str(probe), records


def _records(records: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]


def _ranks(records: list[dict]) -> list[dict]:
    """The workers' records, in rank order."""
    workers = [r for r in records if r["argv"][r["argv"].index("-m") + 1] == "agenttune.train.worker"]
    return sorted(workers, key=lambda r: int(r["env"]["RANK"]))


def test_default_is_one_process_without_slurm_resources():
    plan = plan_launch({})
    assert plan == LaunchPlan("none", 1, 1, None) and plan.world_size == 1
    assert slurm_resources(plan) == {}
    assert launch_command(plan, "/s.json", python="py") == ["py", "-m", "agenttune.train.worker", "/s.json"]


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
        "-m", "agenttune.train.worker", "/s.json"]
    deepspeed = launch_command(LaunchPlan("deepspeed", 1, 8, 29400), "/s.json", python="py", env={})
    assert deepspeed[:3] == ["py", "-m", "deepspeed.launcher.launch"]
    assert deepspeed[4:] == ["--node_rank=0", "--master_addr=127.0.0.1", "--master_port=29400",
                             "--module", "agenttune.train.worker", "/s.json"]
    # no CUDA_VISIBLE_DEVICES (CPU, a machine of one's own): devices 0..P-1, as `deepspeed --num_gpus 8` took
    assert _world_info(deepspeed) == {"node0": [str(i) for i in range(8)]}


def test_deepspeed_on_one_node_starts_ranks_only_on_the_gpus_of_the_job(tmp_path):
    """Slurm gave the job GPUs 2 and 5 of the node; `deepspeed --num_gpus 2` would have put the ranks on 0 and 1,
    another job's GPUs where devices are not fenced. DeepSpeed's own launcher runs here, the ranks are probes."""
    probe, records = _probe(tmp_path)
    job = {"CUDA_VISIBLE_DEVICES": "2,5"}
    cmd = launch_command(LaunchPlan("deepspeed", 1, 2, 29400), tmp_path / "spec.json", python=probe, env=job)
    assert "--num_gpus" not in cmd and _world_info(cmd) == {"node0": ["2", "5"]}
    proc = subprocess.run(cmd, env={**os.environ, **job, "PROBE_DIR": str(records), "DS_ACCELERATOR": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = _ranks(_records(records))
    assert [(r["env"]["RANK"], r["env"]["LOCAL_RANK"], r["env"]["WORLD_SIZE"], r["env"]["CUDA_VISIBLE_DEVICES"])
            for r in ranks] == [("0", "0", "2", "2,5"), ("1", "1", "2", "2,5")]
    assert {(r["env"]["MASTER_ADDR"], r["env"]["MASTER_PORT"]) for r in ranks} == {("127.0.0.1", "29400")}
    # a job given more GPUs than ranks per node: the first P
    more = launch_command(LaunchPlan("deepspeed", 1, 2, 29400), "/s.json", python="py",
                          env={"CUDA_VISIBLE_DEVICES": "3,6,7"})
    assert _world_info(more) == {"node0": ["3", "6"]}


def test_deepspeed_refuses_fewer_visible_gpus_than_ranks_per_node():
    with pytest.raises(ValueError, match=r"train.nproc_per_node is 4, but .* has 1 GPU\(s\) "
                                         r"\(CUDA_VISIBLE_DEVICES=3\)"):
        launch_command(LaunchPlan("deepspeed", 1, 4), "/s.json", python="py", env={"CUDA_VISIBLE_DEVICES": "3"})


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


def _fake_slurm_job(tmp_path, plan, extra_env=None):
    """Run the plan's command in a fake Slurm job of plan.nodes nodes; returns the finished process, the records
    of every probe started and the srun lines."""
    probe, records = _probe(tmp_path)
    env = {**fake_slurm.install(tmp_path / "bin"), "PROBE_DIR": str(records), "SLURM_JOB_ID": "4242",
           "FAKE_SLURM_JOB_NODES": str(plan.nodes), "DS_ACCELERATOR": "cpu", **(extra_env or {})}
    # The job's own shell has no node list: only the tasks srun starts get one.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    cmd = launch_command(plan, str(tmp_path / "spec.json"), python=probe, env={})
    proc = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, timeout=120)
    srun_lines = (tmp_path / "bin" / "srun.log").read_text().splitlines()
    return proc, _records(records), srun_lines


def _run_under_fake_slurm(tmp_path, plan, extra_env=None):
    proc, records, srun_lines = _fake_slurm_job(tmp_path, plan, extra_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return records, srun_lines


def test_srun_starts_one_rank_per_task_with_the_rendezvous_from_the_job_step(tmp_path):
    ranks, srun = _run_under_fake_slurm(tmp_path, LaunchPlan("srun", 2, 2))
    assert srun[0].startswith("--nodes=2 --ntasks=4 --ntasks-per-node=2 --kill-on-bad-exit=1 bash -c")
    envs = sorted((r["env"] for r in ranks), key=lambda e: int(e["RANK"]))
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in envs] == [
        ("0", "0", "4"), ("1", "1", "4"), ("2", "0", "4"), ("3", "1", "4")]
    # The first node's NodeAddr (its name, fakenode1, does not resolve), a port from the job id.
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["LOCAL_WORLD_SIZE"]) for e in envs} == {("127.0.0.1", "24242", "2")}
    assert all(r["argv"] == ["-m", "agenttune.train.worker", str(tmp_path / "spec.json")] for r in ranks)


def test_torchrun_over_srun_uses_a_c10d_rendezvous_at_the_first_node(tmp_path):
    ranks, srun = _run_under_fake_slurm(tmp_path, LaunchPlan("torchrun", 2, 4, 29555))
    assert srun[0].startswith("--nodes=2 --ntasks=2 --ntasks-per-node=1")
    assert len(ranks) == 2  # one torchrun per node, each starting 4 local ranks
    for r in ranks:
        argv = " ".join(r["argv"])
        assert argv.startswith("-m torch.distributed.run --nnodes 2 --nproc_per_node 4")
        assert "--rdzv_id 4242 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:29555" in argv


def test_deepspeed_over_srun_starts_each_nodes_launcher_on_that_nodes_gpus(tmp_path):
    """One DeepSpeed launcher per node, started by srun (no pdsh, no ssh). Slurm gave the first node GPUs 2,5 and
    the second 0,3; each node's ranks get their own, and the ranks are numbered across the nodes."""
    records, srun = _run_under_fake_slurm(tmp_path, LaunchPlan("deepspeed", 2, 2, 29400),
                                          {"FAKE_NODE_GPUS": "2,5;0,3"})
    assert srun == [srun[0]] and srun[0].startswith("--nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1")
    assert "pdsh" not in srun[0] and "ssh" not in srun[0]
    launchers = [r for r in records if "deepspeed.launcher.launch" in r["argv"]]
    assert sorted(r["env"]["SLURM_NODEID"] for r in launchers) == ["0", "1"]
    for r in launchers:
        node = int(r["env"]["SLURM_NODEID"])
        assert f"--node_rank={node}" in r["argv"] and "--master_addr=127.0.0.1" in r["argv"]
        assert _world_info(r["argv"])[f"node{node}"] == ["2,5", "0,3"][node].split(",")
    ranks = _ranks(records)
    assert [(r["env"]["RANK"], r["env"]["LOCAL_RANK"], r["env"]["SLURM_NODEID"], r["env"]["CUDA_VISIBLE_DEVICES"])
            for r in ranks] == [("0", "0", "0", "2,5"), ("1", "1", "0", "2,5"), ("2", "0", "1", "0,3"),
                                ("3", "1", "1", "0,3")]
    assert {(r["env"]["WORLD_SIZE"], r["env"]["MASTER_ADDR"], r["env"]["MASTER_PORT"]) for r in ranks} == {
        ("4", "127.0.0.1", "29400")}
    assert all(r["argv"][-1] == str(tmp_path / "spec.json") for r in ranks)


def test_deepspeed_over_srun_refuses_a_node_with_fewer_gpus_than_ranks(tmp_path):
    proc, records, _ = _fake_slurm_job(tmp_path, LaunchPlan("deepspeed", 2, 2, 29400), {"FAKE_NODE_GPUS": "2,5;3"})
    assert proc.returncode != 0
    assert re.search(r"node 1 \(.*\): train.nproc_per_node is 2, but this node's job step has 1 GPU\(s\) "
                     r"\(CUDA_VISIBLE_DEVICES=3\)", proc.stderr), proc.stderr[-3000:]
    assert not [r for r in records if r["env"]["SLURM_NODEID"] == "1" and "deepspeed.launcher.launch" in r["argv"]]


def test_ranks_die_with_the_job_that_launched_them(tmp_path):
    rank = "import time; from agenttune.train.launch import die_with_parent; die_with_parent(); print('up', flush=True); " \
           "time.sleep(120)"
    job = f"import sys; from agenttune.train.launch import run_command; run_command([sys.executable, '-c', {rank!r}], {{}})"
    proc = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive


def test_deepspeed_ranks_die_with_the_job_that_launched_them(tmp_path):
    """DeepSpeed's launcher is the job's own child: killed with the job, it takes its ranks along. (Started by the
    `deepspeed` runner it was a grandchild that outlived the job, with its ranks.)"""
    probe, records = _probe(tmp_path)
    job = ("import sys; from agenttune.train.launch import LaunchPlan, launch_command, run_command; "
           f"run_command(launch_command(LaunchPlan('deepspeed', 1, 2), 's.json', python={probe!r}, env={{}}), {{}})")
    proc = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PROBE_DIR": str(records), "PROBE_STAY": "1", "DS_ACCELERATOR": "cpu"})
    ups = 0
    while ups < 2:  # the two ranks' lines may share one
        line = proc.stdout.readline()
        assert line, "the job ended before both ranks were up"
        ups += line.count("rank up")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) == 3  # the launcher and its two ranks
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
    from agenttune.train.launch import run_command

    fake = tmp_path / "srun"
    fake.write_text("#!/bin/sh\necho \"CPG=${SLURM_CPUS_PER_GPU-unset}\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CPUS_PER_GPU", "8")
    assert run_command(["srun", "--cpus-per-task=8", "true"], {}) == 0
    assert capsys.readouterr().out == "CPG=unset\n"
    assert run_command(["srun", "true"], {}) == 0  # no explicit CPUs: the job's setting stays
    assert capsys.readouterr().out == "CPG=8\n"
