"""The Slurm plan checks (agenttune.cluster.slurm) on recorded `scontrol` outputs, and the slurm profile in dry runs.

No cluster needed: tests/slurm/recorded/ holds the outputs of the live test cluster and of a typical A100 site.
The same checks against the live cluster are in tests/test_slurm_cluster.py.
"""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from agenttune.cluster import slurm

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "tests" / "slurm" / "recorded"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def recorded(name: str) -> slurm.Cluster:
    d = RECORDED / name
    return slurm.cluster_from_text((d / "partitions.txt").read_text(), (d / "nodes.txt").read_text(),
                                   (d / "config.txt").read_text())


def site_data(**changes) -> dict:
    """config/site.yaml as shipped, with dotted-key changes applied."""
    data = yaml.safe_load((REPO / "config" / "site.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        d = data
        for p in parents:
            d = d[p]
        d[last] = value
    return data


def site(**changes) -> slurm.Site:
    return slurm.parse_site(site_data(**changes), "site.yaml")


def problems(s: slurm.Site, cluster: slurm.Cluster, compute=None, default_account=None) -> list[str]:
    with pytest.raises(slurm.SlurmPlanError) as e:
        slurm.check(s, cluster, compute, default_account)
    return e.value.problems


# --------------------------------------------------------------------------- parsing what Slurm prints

def test_hostlists_times_and_gres_parse_like_slurm():
    assert slurm.expand_hostlist("gpu[001-003,010],login1") == ["gpu001", "gpu002", "gpu003", "gpu010", "login1"]
    assert slurm.expand_hostlist("node[1-2]") == ["node1", "node2"]
    assert slurm.parse_time_minutes("2-00:00:00") == 2880
    assert slurm.parse_time_minutes("01:00:00") == 60
    assert slurm.parse_time_minutes("1-12") == 2160
    assert slurm.parse_time_minutes("UNLIMITED") is None
    assert slurm.parse_gres("gpu:a100:8(S:0-1)") == (("gpu", "a100", 8),)
    assert slurm.parse_gres("gpu:4,shard:8") == (("gpu", None, 4), ("shard", None, 8))
    assert slurm.parse_gres("(null)") == ()


def test_recorded_test_cluster_is_read_completely():
    c = recorded("test-cluster")
    assert sorted(c.partitions) == ["cpu", "gpu"]
    assert c.partitions["gpu"].nodes == ("node1", "node2") and c.partitions["gpu"].max_time_min == 2880
    node = c.nodes["node1"]
    assert node.cpus == 2 and node.gpus("gpu", "a100") == 2 and "a100_80g" in node.features
    assert node.gpus("gpu", "h100") == 0
    assert c.accounting == "accounting_storage/none" and not c.enforce
    a100 = recorded("a100-site")
    assert a100.partitions["gpu"].allow_accounts == ("proj-llm", "proj-vision")
    assert a100.nodes["gpu003"].gpus("gpu", "a100") == 8 and a100.enforce == {"associations", "limits", "qos"}
    # OS= holds spaces and '#': the fields after it must still be read.
    assert a100.nodes["gpu003"].memory_mb == 1_000_000 and a100.nodes["cpu001"].gres == ()


# --------------------------------------------------------------------------- the site file

def test_shipped_site_file_parses_and_renders_profile_resources():
    """The profile carries the site's values for every rule; where a model-loading rule runs and how big it is, the
    rules declare (train_resources, eval_resources), so the profile's set-resources never override them. One
    memory setting per job: mem_mb, never mem_mb_per_cpu."""
    s = slurm.load_site(REPO / "config" / "site.yaml")
    default, per_rule = slurm.profile_resources(s)
    assert default == {"slurm_partition": "cpu", "runtime": 120, "mem_mb": 8000}
    assert per_rule == {"prepare_base_model": {"runtime": 240}}
    assert not set(per_rule) & set(slurm.MODEL_RULES)


@pytest.mark.parametrize("changes, expected", [
    ({"partitions.gpu": None}, "partitions.gpu: missing"),
    ({"gpu.per_node": "eight"}, "gpu.per_node: must be an integer >= 1, got 'eight'"),
    ({"gpu_rules.predict": 16}, "gpu_rules.predict: asks for 16 GPUs per node, but gpu.per_node is 8"),
    ({"account_required": True}, "account: missing, and this site needs one"),
    ({"runtime.predict": "8h"}, "runtime.predict: must be minutes as an integer >= 1"),
    ({"gpus": 8}, "gpus: unknown key"),
])
def test_bad_site_files_name_the_field(changes, expected):
    with pytest.raises(slurm.SlurmPlanError) as e:
        slurm.parse_site(site_data(**changes), "my-site.yaml")
    assert any(p.startswith("my-site.yaml: ") and expected in p for p in e.value.problems), e.value.problems


def test_missing_site_file_says_how_to_choose_one(tmp_path):
    with pytest.raises(slurm.SlurmPlanError, match="site file not found .*AGENTTUNE_SLURM_SITE"):
        slurm.load_site(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- the training job's shape

def train(nodes=1, per_node=1, launcher="torchrun"):
    return {"launcher": launcher, "nodes": nodes, "nproc_per_node": per_node}


def test_train_resources_one_node_and_several():
    s = site()
    gpu_job = {"slurm_partition": "gpu", "cpus_per_gpu": 8, "tasks_per_gpu": 0, "runtime": 2880,
               "constraint": "a100_80g"}
    # --mem is per node: the site's 120 GB per GPU for each GPU of the node (one memory setting).
    assert slurm.train_resources(train(1, 4), s) == {"nodes": 1, "gres": "gpu:a100:4", "mem_mb": 480000} | gpu_job
    # Several nodes: one torchrun per node, started by the job's own srun (mpi).
    assert slurm.train_resources(train(4, 8), s) == {
        "nodes": 4, "tasks": 4, "mpi": "srun", "gres": "gpu:a100:8", "mem_mb": 960000} | gpu_job
    # One rank per task.
    assert slurm.train_resources(train(2, 8, "srun"), s)["tasks"] == 16
    assert slurm.train_resources(train(1, 2), replace(s, gpu_type=None))["gres"] == "gpu:2"
    # A site that trains on CPU nodes (train_epoch not among its gpu_rules) asks for no GPUs in a CPU run...
    cpu_site = replace(s, gpu_rules={"predict": 1})
    cpu_job = slurm.train_resources(train(2, 1), cpu_site, compute={"device": "cpu"})
    assert "gres" not in cpu_job and cpu_job["mem_mb"] == slurm.TRAIN_CPU_MEM_MB
    # ... but a GPU-scale run (compute.device a GPU) always trains in the GPU partition.
    assert slurm.train_resources(train(1, 4), cpu_site, compute={"device": "a100-80g"})["gres"] == "gpu:a100:4"


@pytest.mark.parametrize("train_cfg, expected", [
    (train(1, 16), "train.nproc_per_node 16 asks for 16 GPUs per node, but site.yaml says a node has 8"),
    (train(2, 2, "none"), "train.launcher: none runs one process"),
    (train(1, 1, "mpirun"), "train.launcher: 'mpirun' is not one of"),
])
def test_train_shapes_the_site_cannot_hold_are_refused(train_cfg, expected):
    with pytest.raises(slurm.SlurmPlanError) as e:
        slurm.train_resources(train_cfg, site(), source="run.yaml")
    assert any(p.startswith("run.yaml: ") and expected in p for p in e.value.problems), e.value.problems


# --------------------------------------------------------------------------- the checks against a cluster

def test_sound_plans_pass_on_both_recorded_clusters():
    jobs = slurm.check(site(account="proj-llm", qos="long"), recorded("a100-site"), train(4, 8))
    job = next(j for j in jobs if j.rule == "train_epoch")
    assert (job.nodes, job.gpus_per_node, job.cpus_per_node, job.partition) == (4, 8, 64, "gpu")
    test_site = slurm.load_site(REPO / "tests" / "slurm" / "site.yaml")
    slurm.check(test_site, recorded("test-cluster"), train(2, 1))


def test_unknown_partition_lists_the_known_ones():
    found = problems(site(**{"partitions.gpu": "a100"}), recorded("test-cluster"))
    assert found == ["site.yaml: partitions.gpu: unknown partition 'a100' (this cluster has: cpu, gpu)"]


def test_more_gpus_per_node_than_the_nodes_have():
    # The site claims 8 GPUs per node; the test cluster's nodes have 2: the site itself is wrong...
    found = problems(site(**{"gpu.cpus_per_gpu": 1, "gpu.mem_mb_per_gpu": 1000}), recorded("test-cluster"))
    assert "site.yaml: gpu.per_node: 8, but the nodes of partition 'gpu' have at most 2 gpu:a100" in found
    # ...and a run asking for 4 per node is refused against the site's real per-node count.
    test_site = slurm.load_site(REPO / "tests" / "slurm" / "site.yaml")
    found = problems(test_site, recorded("test-cluster"), train(1, 4))
    assert any("asks for 4 GPUs per node" in p and "says a node has 2" in p for p in found), found
    # A GPU rule fixed by the site to more GPUs than a node of the partition has.
    big = slurm.parse_site(site_data(**{"partitions.gpu": "gpu-debug", "gpu.per_node": 8, "gpu.constraint": None,
                                        "gpu_rules.predict": 6, "runtime.predict": 30, "runtime.train_epoch": 60,
                                        "gpu.mem_mb_per_gpu": 8000, "gpu.cpus_per_gpu": 4}), "site.yaml")
    found = problems(big, recorded("a100-site"))
    assert "predict: asks for 6 GPUs per node, but the nodes of partition 'gpu-debug' have at most 4 gpu:a100" \
        in found


def test_missing_account_where_the_site_needs_one():
    found = problems(site(), recorded("a100-site"))
    assert "site.yaml: account: missing, and partition 'gpu' only admits accounts proj-llm, proj-vision" in found
    assert any("enforces associations" in p for p in found)
    # A default account in slurmdbd satisfies the association check, not the partition's account list.
    found = problems(site(), recorded("a100-site"), default_account="proj-llm")
    assert not any("enforces associations" in p for p in found) and any("only admits" in p for p in found)
    found = problems(site(account="someone-else"), recorded("a100-site"))
    assert "site.yaml: account: 'someone-else' may not use partition 'gpu' (AllowAccounts=proj-llm,proj-vision)" \
        in found


def test_qos_features_runtime_cpus_and_memory_are_checked():
    found = problems(site(account="proj-llm", qos="debug", **{"gpu.constraint": "h100", "runtime.default": 2000}),
                     recorded("a100-site"))
    assert "site.yaml: qos: 'debug' is not allowed in partition 'gpu' (AllowQos=normal,long)" in found
    assert "predict: no node of partition 'gpu' has feature(s) 'h100' (gpu.constraint in site.yaml)" in found
    assert any(p.startswith("(cpu rules): runtime 2000 min exceeds partition 'cpu'") for p in found)
    found = problems(site(account="proj-llm", **{"gpu.cpus_per_gpu": 16, "gpu.mem_mb_per_gpu": 200000}),
                     recorded("a100-site"), train(1, 8))
    assert any("train_epoch: asks for 128 CPUs per node" in p for p in found)
    assert any("train_epoch: asks for 1600000 MB per node" in p for p in found)


def test_training_rule_is_checked_without_a_run_config():
    # The profile knows no run config: the training job's partition, feature and runtime are still checked.
    found = problems(site(account="proj-llm", **{"runtime.train_epoch": 4000}), recorded("a100-site"))
    assert found == ["train_epoch: runtime 4000 min exceeds partition 'gpu''s MaxTime of 2880 min "
                     "(runtime in site.yaml)"]


def test_more_nodes_than_the_partition_has():
    found = problems(site(account="proj-llm"), recorded("a100-site"), train(10, 8))
    assert "train_epoch: needs 10 nodes with 8 gpu:a100 each; partition 'gpu' has 8" in found


# --------------------------------------------------------------------------- rendezvous

def test_rendezvous_uses_the_first_nodes_address_and_a_job_port():
    env = {"SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "gpu[003-004]", "SLURM_NODEID": "1"}
    seen = []
    r = slurm.rendezvous(env, resolve=lambda name: seen.append(name) or "10.2.0.3")
    assert seen == ["gpu003"]
    assert r == {"MASTER_ADDR": "10.2.0.3", "MASTER_PORT": "20123", "NNODES": "2", "NODE_RANK": "1"}
    with pytest.raises(RuntimeError, match="not inside a Slurm job step"):
        slurm.rendezvous({})


# --------------------------------------------------------------------------- the profile in dry runs

def dry_run(*args, site_file: str, check: str = "0"):
    env = {**os.environ, slurm.SITE_ENV: site_file, slurm.CHECK_ENV: check}
    cmd = [SNAKEMAKE, "--profile", "profiles/slurm", "-n", "--configfile", "config/test/config.yaml", *args,
           "--config", "run=pytest-slurm-dry"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_profile_plans_with_site_resources():
    proc = dry_run(site_file="tests/slurm/site.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    predict = out[out.index("rule predict:"):]
    predict = predict[:predict.index("\n\n")]
    for expected in ("slurm_partition=gpu", "constraint=a100_80g", "gres=gpu:a100:1", "cpus_per_gpu=2"):
        assert expected in predict, predict
    demo = out[out.index("rule demo_traces:"):]
    assert "slurm_partition=cpu" in demo[:demo.index("\n\n")]


@pytest.mark.slow
def test_profile_stops_before_planning_on_a_bad_site(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text(yaml.safe_dump(site_data(account_required=True)))
    proc = dry_run(site_file=str(bad))
    assert proc.returncode == 1
    assert "account: missing, and this site needs one" in proc.stderr
    assert "Building DAG" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the paper-scale configs

@pytest.mark.parametrize("size, nodes, per_node", [("7b", 1, 4), ("14b", 1, 8), ("72b", 4, 8)])
def test_paper_configs_fit_a_typical_a100_site(size, nodes, per_node, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = slurm.load_run_config([f"config/agenttune-{size}.yaml"])
    assert cfg["compute"]["devices"] == nodes * per_node and cfg["compute"].get("nodes", 1) == nodes
    jobs = slurm.check(site(account="proj-llm"), recorded("a100-site"), cfg["train"])
    job = next(j for j in jobs if j.rule == "train_epoch")
    assert (job.nodes, job.gpus_per_node, job.runtime_min) == (nodes, per_node, 2880)
    # The seed's table: ~25, ~24 and ~40 h per epoch; one epoch is one job within the 48 h of the gpu partition.
    assert cfg["compute"]["time_limit_hours"] * 60 == job.runtime_min


@pytest.mark.slow
def test_paper_config_plans_through_the_profile_without_the_model():
    # models/Qwen2-72B-Instruct does not exist here: planning needs neither the model nor the data.
    assert not (REPO / "models" / "Qwen2-72B-Instruct").exists()
    env = {**os.environ, slurm.SITE_ENV: "config/site.yaml", slurm.CHECK_ENV: "0"}
    proc = subprocess.run([SNAKEMAKE, "--profile", "profiles/slurm", "-n", "--configfile",
                           "config/agenttune-72b.yaml"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    train = out[out.index("rule train_epoch:"):]
    train = train[:train.index("\n\n")]
    for expected in ("nodes=4", "tasks=4", "mpi=srun", "slurm_partition=gpu", "constraint=a100_80g", "runtime=2880"):
        assert expected in train, train
