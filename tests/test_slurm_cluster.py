"""The tiny pipeline through `snakemake --profile slurm` on a real Slurm cluster that the test starts.

tests/slurm/cluster.sh starts munged, slurmctld and two slurmd (node1, node2; 2 CPUs and 2 fake A100s each) under a
private folder. The set-up step of the README, `python -m agenttune.cluster.profile install`, makes the project's
Slurm profile the Snakemake profile `slurm` of a temporary XDG_CONFIG_HOME (nothing of the user's is read or
written), and every run here is the literal `snakemake --profile slurm ...` from the project root, with the test
cluster's site file (tests/slurm/site.yaml, by $AGENTTUNE_SLURM_SITE). The tiny pipeline's run checks that every
non-local job went through sbatch and the controller (job ids in Snakemake's output, a Slurm log per job, the
controller's allocation records, GPU jobs in the gpu partition with their gres), that the small CPU rules ran as
three group jobs (data, tokenize, report: each one sbatch, its rules together in that one Slurm job, at most
`cores` CPUs), so there are fewer submissions than jobs (the counts are printed), and that the results equal a
local run of the same config. Bad site files and run configs are refused, live, before anything is submitted.
A training job killed in the middle of its epoch (`scancel`, or SIGKILL to its job step) is submitted again by
Snakemake (the train rule's `retries:`), resumes from its step checkpoint and ends byte-identical to an
uninterrupted local run. A two-node ZeRO-3 job matches two local ranks.

Skips, saying why, when the Slurm packages are missing (tests/slurm/install.sh installs them as root) or the cluster
does not come up. Bring-up takes seconds; the two pipeline runs take several minutes on 2 cores.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
TEST_SITE = "tests/slurm/site.yaml"
RUN = "pytest-slurm"
LOCAL_RUN = "pytest-slurm-local"

pytestmark = pytest.mark.slow


def _free_port_block(n: int = 3) -> int:
    """A first port such that it and the next n-1 are free (slurmctld + one slurmd per node)."""
    for base in range(17900, 18900, 10):
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    pytest.skip("no block of free ports for the test cluster in 17900-18900")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sinfo", "sbatch") if not shutil.which(t)]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): tests/slurm/install.sh installs the "
                    "Debian packages (root + apt-get)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons must run as root")
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "AGENTTUNE_SLURM_DIR": str(folder), "AGENTTUNE_SLURM_PORT": str(_free_port_block())}
    stop = ["bash", str(CLUSTER), "stop"]
    try:
        start = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as e:
        subprocess.run(stop, env=env, capture_output=True, timeout=60)
        pytest.skip(f"the test Slurm cluster did not start within 180 s: {e.stdout!r} {e.stderr!r}"[-1500:])
    if start.returncode != 0:
        subprocess.run(stop, env=env, capture_output=True, timeout=60)
        pytest.skip(f"the test Slurm cluster did not start: {(start.stdout + start.stderr)[-1500:]}")
    env["SLURM_CONF"] = str(folder / "etc" / "slurm.conf")
    env["PATH"] = f"{folder / 'bin'}:{env['PATH']}"
    env["AGENTTUNE_SLURM_SITE"] = TEST_SITE
    env.pop("AGENTTUNE_SLURM_CHECK", None)
    env["CLUSTER_DIR"] = str(folder)
    # The README's set-up step, into a temporary user config folder: `--profile slurm` then finds the profile there
    # (no site folder, no $SNAKEMAKE_PROFILE to interfere). `snakemake` is the venv's, first on PATH after the
    # cluster's wrappers.
    env["XDG_CONFIG_HOME"] = str(folder / "xdg-config")
    env["XDG_CONFIG_DIRS"] = str(folder / "xdg-site")
    env.pop("SNAKEMAKE_PROFILE", None)
    env["PATH"] = f"{folder / 'bin'}:{Path(SNAKEMAKE).parent}:{os.environ['PATH']}"
    setup = subprocess.run([sys.executable, "-m", "agenttune.cluster.profile", "install"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert (folder / "xdg-config" / "snakemake" / "slurm" / "config.yaml").is_file(), setup.stdout
    try:
        yield env
    finally:
        subprocess.run(stop, env=env, capture_output=True, timeout=60)


def slurm_jobs(env) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def snakemake_slurm(env, *args, timeout=1500):
    """The literal `snakemake --profile slurm ...` (the installed user profile), from the project root."""
    cmd = ["snakemake", "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "3", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Using profiles slurm and workflow specific profile profiles/default" in proc.stderr, proc.stderr[-2000:]
    return proc


def test_bad_plans_stop_before_any_submission(cluster, tmp_path):
    before = slurm_jobs(cluster)
    site = yaml.safe_load((REPO / TEST_SITE).read_text())
    cases = {
        "unknown partition": ({"partitions": {**site["partitions"], "gpu": "a100"}},
                              "partitions.gpu: unknown partition 'a100' (this cluster has: cpu, gpu)"),
        "more GPUs per node than exist": ({"gpu": {**site["gpu"], "per_node": 4}},
                                          "gpu.per_node: 4, but the nodes of partition 'gpu' have at most 2 "
                                          "gpu:a100"),
        "missing account": ({"account_required": True}, "account: missing, and this site needs one"),
        "runtime over the limit": ({"runtime": {**site["runtime"], "train_epoch": 4000}},
                                   "train_epoch: runtime 4000 min exceeds partition 'gpu''s MaxTime of 2880 min"),
    }
    for name, (change, expected) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '-')}.yaml"
        bad.write_text(yaml.safe_dump({**site, **change}))
        # A real run (no -n), with a one-job target so that a check that missed would submit little.
        proc = snakemake_slurm({**cluster, "AGENTTUNE_SLURM_SITE": str(bad)}, "--configfile",
                               "config/test/config.yaml", "--config", f"run={RUN}-bad", "--",
                               f"results/{RUN}-bad/traces/demo.jsonl", timeout=300)
        assert proc.returncode == 1, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        assert expected in proc.stderr, (name, proc.stderr[-2000:])
        assert "nothing was submitted" in proc.stderr
    # A run config asking for more GPUs per node than the site's nodes have, checked against the live cluster.
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(yaml.safe_dump({"train": {"launcher": "torchrun", "nodes": 1, "nproc_per_node": 4}}))
    proc = subprocess.run([sys.executable, "-m", "agenttune.cluster.slurm", "check", "--configfile", str(run_cfg)],
                          cwd=REPO, env=cluster, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "train.nproc_per_node 4 asks for 4 GPUs per node, but tests/slurm/site.yaml says a node has 2" \
        in proc.stderr
    assert slurm_jobs(cluster) == before, "a refused plan submitted jobs"


def scontrol_job(env, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def report_sections(out: Path, run: str) -> list[str]:
    text = (out / "report.md").read_text().replace(f"`{run}`", "`RUN`")
    sections = text.split("\n## ")
    kept = [sections[0]] + [s for s in sections[1:] if s.startswith("Data")]
    assert "| epoch-2 |" in kept[0] and len(kept) == 2, text[:2000]
    return kept


SUBMITTED = re.compile(r"^Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.$")
# config/test/config.yaml makes 5 token shards (train 3, val 1, test 1)
SHARDS = 5


def submissions(output: str):
    """From Snakemake's output: ([(rule, (slurm id, log))] of the jobs submitted alone, [{group, rules, slurm_id,
    log}] of the group jobs). Snakemake announces a batch of jobs first and submits them after, so a submission is
    matched to its job by its Slurm log's folder: rule_RULE/... alone, group_GROUP_<its rules>/... for a group
    job, whose jobs are the ones indented under "Group job GROUP (jobs in lexicogr. order):"."""
    announced: dict[str, list[str]] = {}
    group = None
    for line in output.splitlines():
        if m := re.search(r"\] Group job (\w+) \(jobs in lexicogr\. order\):$", line):
            group = m.group(1)
            assert group not in announced, f"group {group} announced twice"
            announced[group] = []
        elif m := re.match(r"^    (?:rule|checkpoint) (\w+):$", line):
            announced[group].append(m.group(1))
    singles, groups = [], []
    for line in output.splitlines():
        if not (m := SUBMITTED.match(line)):
            continue
        slurm_id, log = m.group(2), m.group(3)
        folder = Path(log).relative_to(REPO / ".snakemake" / "slurm_logs").parts[0]
        if folder.startswith("rule_"):
            singles.append((folder.removeprefix("rule_"), (slurm_id, log)))
        else:
            name = next(g for g in announced if folder.startswith(f"group_{g}_"))
            groups.append({"group": name, "rules": announced[name], "slurm_id": slurm_id, "log": log})
    assert sorted(g["group"] for g in groups) == sorted(announced), (groups, announced)
    assert Counter(r for r, _ in singles) == Counter(re.findall(r"^(?:rule|checkpoint) (\w+):$", output, re.M))
    return singles, groups


def test_tiny_pipeline_through_slurm_matches_local_run(cluster, capsys):
    for run in (RUN, LOCAL_RUN):
        shutil.rmtree(REPO / "results" / run, ignore_errors=True)
    proc = snakemake_slurm(cluster, "--configfile", "config/test/config.yaml", "--config", f"run={RUN}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]

    # Every job that is not a local rule went through sbatch, alone or in its group job: one "submitted with SLURM
    # jobid" line per Slurm job. (Snakemake announces a job as "rule NAME:" / "checkpoint NAME:", a local one as
    # "localrule" / "localcheckpoint", and a group job as "Group job GROUP (jobs in lexicogr. order):" followed by
    # its jobs, indented; a checkpoint adds jobs on the way, so the first job table is not the final count.)
    singles, groups = submissions(output)
    local = re.findall(r"^local(?:rule|checkpoint) (\w+):$", output, re.M)
    remote_jobs = len(singles) + sum(len(g["rules"]) for g in groups)
    sbatch = len(singles) + len(groups)
    assert sbatch == len(re.findall(r"has been submitted with SLURM jobid", output)) > 0
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", output)
    assert done and int(done[-1][0]) == remote_jobs + len(local), (done, singles, groups, local)
    assert "cost_preflight" in local and "cost_preflight" not in (rule for rule, _ in singles)

    # The small CPU rules ran as one Slurm job per group, their rules together in it (the group job's own log
    # counts them off), on at most `cores: 2` CPUs (profiles/slurm): fewer submissions than jobs.
    expected = {"data": Counter(["demo_traces", "ingest", "format_samples", "eval_items", "general_items"]),
                "tokenize": Counter(["tokenize_shard"] * SHARDS + ["shards_manifest"]),
                "report": Counter(["score"] * 3 + ["human_sheet", "report"])}
    assert {g["group"]: Counter(g["rules"]) for g in groups} == expected, groups
    with capsys.disabled():
        print(f"\nSlurm: {sbatch} sbatch submissions for {remote_jobs} cluster jobs ({len(local)} local jobs): "
              + ", ".join(f"group {g['group']} {len(g['rules'])} jobs in 1" for g in groups)
              + f", {len(singles)} jobs alone ({', '.join(sorted(Counter(r for r, _ in singles)))})")
    assert sbatch < remote_jobs
    for g in groups:
        log = Path(g["log"])
        assert log.parent.name.startswith(f"group_{g['group']}_"), log
        # the Snakemake inside the group job announces each job it runs once, as a local rule of that job
        ran = Counter(re.findall(r"^localrule (\w+):$", log.read_text(), re.M))
        assert ran == Counter(g["rules"]), (g, ran)
        n = len(g["rules"])
        assert f"{n} of {n} steps (100%) done" in log.read_text(), log.read_text()[-3000:]
        info = scontrol_job(cluster, g["slurm_id"])
        assert info["JobState"] == "COMPLETED" and info["Partition"] == "cpu" and int(info["NumCPUs"]) <= 2, info
        assert "gres" not in info.get("TresPerNode", ""), info

    ctld_log = (Path(cluster["CLUSTER_DIR"]) / "log" / "slurmctld.log").read_text()
    by_rule: dict[str, list[str]] = {}
    for rule, (slurm_id, log) in singles + [(g["group"], (g["slurm_id"], g["log"])) for g in groups]:
        assert Path(log).is_file(), f"no Slurm log {log}"
        # The main scheduler logs "sched: Allocate JobId=N NodeList=nodeK"; the backfill scheduler, which starts a job
        # when the main pass has not yet, logs "sched/backfill: _start_job: Started JobId=N in PART on nodeK".
        started = rf"(?:Allocate JobId={slurm_id} NodeList=node\d|Started JobId={slurm_id} in \w+ on node\d)"
        assert re.search(started, ctld_log), f"job {slurm_id} not allocated"
        info = scontrol_job(cluster, slurm_id)
        assert info["JobState"] == "COMPLETED", info
        if rule not in expected:
            assert re.match(r"rule_(.+?)(?:_wildcards_.*)?$", info["Comment"]).group(1) == rule, info
        by_rule.setdefault(rule, []).append(slurm_id)
        if rule in ("train_epoch", "predict"):
            assert info["Partition"] == "gpu" and info["Features"] == "a100_80g", info
        else:
            assert info["Partition"] == "cpu" and "gres" not in info.get("TresPerNode", ""), info
        if rule == "predict":
            assert info["TresPerNode"] == "gres:gpu:a100:1", info
    assert set(by_rule) == {rule for rule, _ in singles} | set(expected)
    assert len(by_rule["predict"]) == 3 and len(by_rule["train_epoch"]) == 2

    local = subprocess.run([SNAKEMAKE, "--profile", "profiles/local", "--configfile", "config/test/config.yaml",
                            "--config", f"run={LOCAL_RUN}"], cwd=REPO, capture_output=True, text=True,
                           timeout=1500)
    assert local.returncode == 0, local.stderr[-5000:]

    slurm_out, local_out = REPO / "results" / RUN, REPO / "results" / LOCAL_RUN
    for model in ("base", "epoch-1", "epoch-2"):
        for name in ("predictions.jsonl", "scores.json"):
            a = (slurm_out / "eval" / model / name).read_bytes()
            b = (local_out / "eval" / model / name).read_bytes()
            assert a == b, f"{model}/{name} differs between the Slurm and the local run"
    for epoch in (1, 2):
        a = json.loads((slurm_out / "checkpoints" / f"epoch-{epoch}" / "metrics.json").read_text())
        b = json.loads((local_out / "checkpoints" / f"epoch-{epoch}" / "metrics.json").read_text())
        assert a["loss_curve"] == b["loss_curve"] and a["global_step"] == b["global_step"]
    # The report's evaluation and data sections; its training table also holds wall times and tokens/s.
    assert report_sections(slurm_out, RUN) == report_sections(local_out, LOCAL_RUN)
    for run in (RUN, LOCAL_RUN):
        shutil.rmtree(REPO / "results" / run, ignore_errors=True)


TWO_NODES = {"train": {"launcher": "torchrun", "nodes": 2, "nproc_per_node": 1, "deepspeed": {"stage": 3}}}
ONE_NODE_TWO_RANKS = {"train": {"launcher": "torchrun", "nodes": 1, "nproc_per_node": 2, "deepspeed": {"stage": 3}}}


def test_two_node_two_rank_zero3_training_matches_two_local_ranks(cluster, tmp_path):
    """Training as one Slurm job over node1 and node2, one rank on each (torchrun per node, c10d rendezvous built in
    the job step, DeepSpeed ZeRO-3 over gloo on CPU), ends with the same weights as two ranks on this machine."""
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    if "launcher" not in schema["properties"]["train"]["properties"]:
        pytest.skip("this tree has no multi-rank training launch (train.launcher): agenttune.train.launch is not wired")
    run, local_run = f"{RUN}-2nodes", f"{LOCAL_RUN}-2ranks"
    for name in (run, local_run):
        shutil.rmtree(REPO / "results" / name, ignore_errors=True)
    (tmp_path / "two-nodes.yaml").write_text(yaml.safe_dump(TWO_NODES))
    (tmp_path / "one-node.yaml").write_text(yaml.safe_dump(ONE_NODE_TWO_RANKS))
    target = "checkpoints/epoch-2"

    # Two things this test needs from the training side, checked first so that their absence reads as a skip with
    # the reason, not as a hung rendezvous: the train rule declares its GPUs per node (agenttune.cluster.slurm
    # .train_resources), and the rendezvous address does not rely on node names resolving (node1 and node2 of the
    # test cluster do not; their NodeAddr does).
    dry = snakemake_slurm(cluster, "-n", "--configfile", "config/test/config.yaml", str(tmp_path / "two-nodes.yaml"),
                          "--config", f"run={run}", timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = dry.stdout + dry.stderr
    train_block = planned[planned.index("rule train_epoch:"):]
    train_block = train_block[:train_block.index("\n\n")]
    if "gres=gpu:a100:1" not in train_block or "mpi=srun" not in train_block:
        pytest.skip("rules/train.smk does not declare train_epoch's resources with agenttune.cluster.slurm.train_resources "
                    f"(planned: {train_block.splitlines()[-1].strip()})")
    from agenttune.cluster.launch_plan import LaunchPlan
    from agenttune.train.launch import launch_command

    command = " ".join(launch_command(LaunchPlan("torchrun", 2, 1), "spec.json"))
    if "NodeAddr" not in command and "agenttune.cluster.slurm rendezvous" not in command:
        pytest.skip("agenttune.train.launch takes MASTER_ADDR from the node name, which does not resolve on the test "
                    "cluster: use the node's NodeAddr (agenttune.cluster.slurm.rendezvous)")

    proc = snakemake_slurm(cluster, "--configfile", "config/test/config.yaml", str(tmp_path / "two-nodes.yaml"),
                           "--config", f"run={run}", "--", f"results/{run}/{target}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    train_jobs = [slurm_id for _, slurm_id, log in re.findall(
        r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", output) if "rule_train_epoch" in log]
    assert len(train_jobs) == 2, output[-3000:]
    for slurm_id in train_jobs:
        info = scontrol_job(cluster, slurm_id)
        assert (info["JobState"], info["NumNodes"], info["NodeList"]) == ("COMPLETED", "2", "node[1-2]"), info
        assert info["TresPerNode"] == "gres:gpu:a100:1" and info["Partition"] == "gpu", info
    for epoch in (1, 2):
        log = (REPO / "results" / run / "logs" / "train_epoch" / f"epoch-{epoch}.log").read_text()
        assert "launch: torchrun, 2 node(s) × 1 process(es), world size 2, DeepSpeed ZeRO-3" in log, log[-3000:]
        assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in log
        # each node's torchrun gets the CPUs of its GPU (site: cpus_per_gpu 2), from the rule's resources
        assert "--kill-on-bad-exit=1 --cpus-per-task=2 bash -c" in log, log[-3000:]
        assert "DeepSpeed ZeRO-3 on 2 rank(s)" in log, log[-3000:]

    local = subprocess.run([SNAKEMAKE, "--profile", "profiles/local", "--configfile", "config/test/config.yaml",
                            str(tmp_path / "one-node.yaml"), "--config", f"run={local_run}", "--",
                            f"results/{local_run}/{target}"], cwd=REPO, capture_output=True, text=True,
                           timeout=1500)
    assert local.returncode == 0, local.stderr[-5000:]
    for epoch in (1, 2):
        a = REPO / "results" / run / "checkpoints" / f"epoch-{epoch}"
        b = REPO / "results" / local_run / "checkpoints" / f"epoch-{epoch}"
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes(), f"epoch {epoch}"
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert ma["loss_curve"] == mb["loss_curve"]
    for name in (run, local_run):
        shutil.rmtree(REPO / "results" / name, ignore_errors=True)


STEP_CHECKPOINTS = {"train": {"step_checkpoints": {"every_steps": 2, "every_minutes": None}}}


def wait_for(predicate, what: str, proc, timeout: float = 600):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = predicate()
        if found:
            return found
        assert proc.poll() is None, f"snakemake ended (rc {proc.returncode}) while waiting for {what}"
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_training_job_killed_mid_epoch_is_retried_and_matches_local_run(cluster, tmp_path):
    """Each epoch's training job is killed in the middle of its epoch on the cluster, from outside: epoch 1's with
    `scancel` (the Slurm job ends CANCELLED: the Snakemake of the run submits it again), epoch 2's with SIGKILL to
    its job step (`scancel --signal=KILL JOB.0`, what a `kill -9` of the step does: the Snakemake inside the job
    runs the rule again in a new step of the same job). Both are the train rule's `retries:` (train.retries); each
    retry resumes from the epoch's newest step checkpoint (every 2 optimizer steps here), and both epochs end
    byte-identical to an uninterrupted local run. The test hook
    AGENTTUNE_TEST_STALL_AFTER_STEP holds a job that did not resume after global step 7 (epoch 1) and 27 (epoch 2;
    19 steps per epoch), so the kill lands exactly there, after step checkpoints 6 and 26."""
    run, local_run = f"{RUN}-killed", f"{LOCAL_RUN}-uninterrupted"
    for name in (run, local_run):
        shutil.rmtree(REPO / "results" / name, ignore_errors=True)
    overlay = tmp_path / "step-checkpoints.yaml"
    overlay.write_text(yaml.safe_dump(STEP_CHECKPOINTS))
    target = "checkpoints/epoch-2"
    out_file = tmp_path / "snakemake.out"
    env = {**cluster, "AGENTTUNE_TEST_STALL_AFTER_STEP": "7,27"}
    cmd = ["snakemake", "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "3", "--configfile", "config/test/config.yaml", str(overlay),
           "--config", f"run={run}", "--", f"results/{run}/{target}"]
    kills = {}
    with out_file.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        for epoch, step, how in ((1, 7, "scancel"), (2, 27, "scancel --signal=KILL JOB.0")):
            log = REPO / "results" / run / "logs" / "train_epoch" / f"epoch-{epoch}.log"
            slurm_id = wait_for(lambda: next((m.group(2) for m in map(SUBMITTED.match, out_file.read_text()
                                                                      .splitlines())
                                              if m and f"/rule_train_epoch/{epoch}/" in m.group(3)), None),
                                f"the submission of epoch {epoch}", proc)
            wait_for(lambda: log.is_file() and f"test hook: stalling after step {step}" in log.read_text(),
                     f"epoch {epoch}'s job to stall after step {step}", proc)
            assert (REPO / "results" / run / "checkpoints" / f"epoch-{epoch}.steps" / f"step-{step - 1}").is_dir()
            if epoch == 1:
                args = ["scancel", slurm_id]
            else:  # the job's steps (the plugin runs the rule in `srun -n1`: step 0), not its batch shell
                steps = subprocess.run(["squeue", "-h", "-s", "-j", slurm_id, "-o", "%i"], env=cluster,
                                       capture_output=True, text=True, timeout=30).stdout.split()
                steps = [s for s in steps if re.fullmatch(rf"{slurm_id}\.\d+", s)]
                assert steps, f"no running step in job {slurm_id}"
                args = ["scancel", "--signal=KILL", *steps]
            killed = subprocess.run(args, env=cluster, capture_output=True, text=True, timeout=30)
            assert killed.returncode == 0, killed.stderr
            print(f"\nepoch {epoch}: `{' '.join(args)}` after step {step}")
            kills[epoch] = slurm_id
        proc.wait(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            for job in slurm_jobs(cluster):
                subprocess.run(["scancel", job], env=cluster, capture_output=True, timeout=30)
    output = out_file.read_text()
    assert proc.returncode == 0, output[-5000:]
    train_jobs = [(m.group(3).split("/rule_train_epoch/")[1].split("/")[0], m.group(2))
                  for m in map(SUBMITTED.match, output.splitlines()) if m and "/rule_train_epoch/" in m.group(3)]
    # Epoch 1's job ended (CANCELLED): the Snakemake of this run submitted it again. Epoch 2's job lived on with
    # its step killed: the Snakemake inside the job (the rule's `retries:` apply there too) ran the rule again in a
    # new step of the same allocation, and the job COMPLETED.
    assert [e for e, _ in train_jobs] == ["1", "1", "2"], train_jobs
    states = {slurm_id: scontrol_job(cluster, slurm_id)["JobState"] for _, slurm_id in train_jobs}
    assert [states[s] for _, s in train_jobs] == ["CANCELLED", "COMPLETED", "COMPLETED"], states
    assert train_jobs[0][1] == kills[1] and train_jobs[2][1] == kills[2]
    in_job = Path(next(m.group(3) for m in map(SUBMITTED.match, output.splitlines())
                       if m and m.group(2) == kills[2])).read_text()
    assert f"Force Terminated StepId={kills[2]}.0" in in_job and "Trying to restart job" in in_job, in_job[-3000:]
    assert "checkpoints/epoch-2.steps/step-26 (global step 26)" in in_job, in_job[-3000:]
    for epoch, step in ((1, 6), (2, 26)):
        log = (REPO / "results" / run / "logs" / "train_epoch" / f"epoch-{epoch}.log").read_text()
        assert f"resuming from step checkpoint results/{run}/checkpoints/epoch-{epoch}.steps/step-{step}" in log, \
            log[-3000:]
        metrics = json.loads((REPO / "results" / run / "checkpoints" / f"epoch-{epoch}" / "metrics.json").read_text())
        assert metrics["resumed_from_step"] == step
        assert not (REPO / "results" / run / "checkpoints" / f"epoch-{epoch}.steps").exists()

    local = subprocess.run([SNAKEMAKE, "--profile", "profiles/local", "--configfile", "config/test/config.yaml",
                            str(overlay), "--config", f"run={local_run}", "--", f"results/{local_run}/{target}"],
                           cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert local.returncode == 0, local.stderr[-5000:]
    for epoch in (1, 2):
        a = REPO / "results" / run / "checkpoints" / f"epoch-{epoch}"
        b = REPO / "results" / local_run / "checkpoints" / f"epoch-{epoch}"
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes(), f"epoch {epoch}"
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert ma["loss_curve"] == mb["loss_curve"] and ma["global_step"] == mb["global_step"]
    for name in (run, local_run):
        shutil.rmtree(REPO / "results" / name, ignore_errors=True)
