"""Slurm: the site description, the resources each rule asks Slurm for, and checks that run before any submission.

Takes: a site file (`config/site.yaml`, or the file named by $AGENTTUNE_SLURM_SITE) that says what is particular to
one cluster (partitions, account, QoS, the GPU's gres name/type and feature, GPUs per node, CPUs and memory per GPU,
runtimes); a run's `train` section (launcher, nodes, ranks per node: agenttune.cluster.launch_plan); and what the cluster reports
(`scontrol show partition -o`, `scontrol show node -o`, `scontrol show config`), read live or from recorded text.
Gives: the `default-resources` / `set-resources` that profiles/slurm/config.yaml renders for
snakemake-executor-plugin-slurm, the resources of the training job (nodes, one launcher task per node, gres per
node, `mpi: srun` when it spans nodes), the torchrun/DeepSpeed rendezvous of a job step, and a list of problems
(unknown partition, more GPUs per node than the nodes have, a missing account where the site needs one, a runtime
over the partition's limit, ...) raised together as one `SlurmPlanError` before anything is submitted.

CLI: `python -m agenttune.cluster.slurm show` (the resources the profile will use) and
`python -m agenttune.cluster.slurm check --configfile config/agenttune-7b.yaml` (site and run plan against the live
cluster, or against recorded `scontrol` text with --recorded DIR). docs/slurm.md explains the design.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agenttune.cluster.launch_plan import plan_launch, slurm_resources
from agenttune.common.config import with_defaults

SITE_ENV = "AGENTTUNE_SLURM_SITE"
CHECK_ENV = "AGENTTUNE_SLURM_CHECK"  # "0": skip the checks against the live cluster (the site file is still checked)
DEFAULT_SITE = Path("config/site.yaml")
DEFAULT_CONFIG = Path("config/config.yaml")
TRAIN_RULE = "train_epoch"
# Rules whose placement and size the rules declare (train_resources, eval_resources), not the profile.
MODEL_RULES = (TRAIN_RULE, "predict", "predict_benchmark", "general_loss")
# A gpu_rules value: the rule's GPUs come from the run config (train.nodes × train.nproc_per_node).
FROM_RUN_CONFIG = "config"


class SlurmPlanError(ValueError):
    """A plan Slurm would refuse or run wrongly; the message lists every problem found, one per line."""

    def __init__(self, problems: list[str], source: str = "slurm plan"):
        self.problems = list(problems)
        super().__init__(f"{source}: {len(problems)} problem(s), nothing was submitted:\n"
                         + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------- the site file

@dataclass(frozen=True)
class Site:
    """What is particular to one cluster. Every field comes from the site file; docs/slurm.md shows an example."""

    source: str
    cpu_partition: str
    gpu_partition: str
    gres_name: str = "gpu"
    gpu_type: str | None = None          # gres type: --gres=gpu:<type>:N; None: untyped gres
    constraint: str | None = None        # node feature: sbatch -C
    gpus_per_node: int = 8
    cpus_per_gpu: int = 8
    mem_mb_per_gpu: int = 64000
    account: str | None = None
    account_required: bool = False
    qos: str | None = None
    cpu_mem_mb: int = 4000
    runtime: dict = field(default_factory=dict)      # minutes; "default" and per rule
    gpu_rules: dict = field(default_factory=dict)    # rule -> GPUs per node, or "config"
    slurm_extra: dict = field(default_factory=dict)  # rule -> extra sbatch flags

    def gres(self, n: int) -> str:
        return f"{self.gres_name}:{self.gpu_type}:{n}" if self.gpu_type else f"{self.gres_name}:{n}"

    def runtime_of(self, rule: str) -> int:
        return int(self.runtime.get(rule, self.runtime["default"]))


def site_path(path: str | Path | None = None) -> Path:
    """The explicit path, else $AGENTTUNE_SLURM_SITE, else config/site.yaml (relative to the working directory)."""
    return Path(path or os.environ.get(SITE_ENV) or DEFAULT_SITE)


def _field(data: dict, dotted: str, kind, source: str, problems: list[str], required=True, default=None,
           minimum: int | None = None):
    value = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        if required:
            problems.append(f"{source}: {dotted}: missing")
        return default
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok or (minimum is not None and value < minimum):
        want = {str: "a string", int: "an integer", bool: "true or false", dict: "a mapping"}[kind]
        want += f" >= {minimum}" if minimum is not None else ""
        problems.append(f"{source}: {dotted}: must be {want}, got {value!r}")
        return default
    return value


SITE_KEYS = {"account", "account_required", "qos", "partitions", "gpu", "cpu", "runtime", "gpu_rules", "slurm_extra"}


def parse_site(data: dict, source: str = "site") -> Site:
    """Build a Site from the parsed site file; every problem is named by file and field."""
    if not isinstance(data, dict):
        raise SlurmPlanError([f"{source}: must be a YAML mapping"], source)
    problems = [f"{source}: {key}: unknown key (known: {', '.join(sorted(SITE_KEYS))})"
                for key in data if key not in SITE_KEYS]
    f = lambda *a, **k: _field(data, *a, source=source, problems=problems, **k)  # noqa: E731
    site = dict(
        source=source,
        cpu_partition=f("partitions.cpu", str),
        gpu_partition=f("partitions.gpu", str),
        gres_name=f("gpu.gres", str, required=False, default="gpu"),
        gpu_type=f("gpu.type", str, required=False),
        constraint=f("gpu.constraint", str, required=False),
        gpus_per_node=f("gpu.per_node", int, minimum=1, default=1),
        cpus_per_gpu=f("gpu.cpus_per_gpu", int, minimum=1, default=1),
        mem_mb_per_gpu=f("gpu.mem_mb_per_gpu", int, minimum=1, default=1),
        account=f("account", str, required=False),
        account_required=f("account_required", bool, required=False, default=False),
        qos=f("qos", str, required=False),
        cpu_mem_mb=f("cpu.mem_mb", int, minimum=1, default=1),
        runtime=f("runtime", dict, default={}),
        gpu_rules=f("gpu_rules", dict, required=False, default={}),
        slurm_extra=f("slurm_extra", dict, required=False, default={}),
    )
    runtime = site["runtime"] or {}
    if "default" not in runtime:
        problems.append(f"{source}: runtime.default: missing (minutes for rules not listed)")
    for rule, minutes in runtime.items():
        if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 1:
            problems.append(f"{source}: runtime.{rule}: must be minutes as an integer >= 1, got {minutes!r}")
    for rule, gpus in (site["gpu_rules"] or {}).items():
        if gpus != FROM_RUN_CONFIG and (not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1):
            problems.append(f"{source}: gpu_rules.{rule}: must be GPUs per node (an integer >= 1) or "
                            f"'{FROM_RUN_CONFIG}' (from the run config), got {gpus!r}")
        elif gpus != FROM_RUN_CONFIG and gpus > (site["gpus_per_node"] or 0):
            problems.append(f"{source}: gpu_rules.{rule}: asks for {gpus} GPUs per node, but gpu.per_node is "
                            f"{site['gpus_per_node']}")
    for rule, extra in (site["slurm_extra"] or {}).items():
        if not isinstance(extra, str):
            problems.append(f"{source}: slurm_extra.{rule}: must be a string of sbatch flags, got {extra!r}")
    if site["account_required"] and not site["account"]:
        problems.append(f"{source}: account: missing, and this site needs one (account_required: true); "
                        "set account: <your Slurm account>")
    if problems:
        raise SlurmPlanError(problems, source)
    return Site(**site)


def load_site(path: str | Path | None = None) -> Site:
    path = site_path(path)
    if not path.is_file():
        raise SlurmPlanError([f"{path}: site file not found (set ${SITE_ENV} or create {DEFAULT_SITE}; "
                              "docs/slurm.md shows one)"], str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SlurmPlanError([f"{path}: not valid YAML: {e}"], str(path)) from None
    return parse_site(data, str(path))


# --------------------------------------------------------------------------- resources of the jobs

def train_shape(train_cfg: dict, source: str = "config") -> tuple[int, int]:
    """(nodes, GPUs per node) of the training job: the launch plan of the run config's `train` section
    (`nodes` × `nproc_per_node` ranks, one GPU each; agenttune.cluster.launch_plan)."""
    try:
        plan = plan_launch(train_cfg)
    except ValueError as e:
        raise SlurmPlanError([f"{source}: {e}"], source) from None
    return plan.nodes, plan.nproc_per_node


TRAIN_CPU_MEM_MB = 8000  # a training job outside the GPU partition (CPU runs, tests)


def train_resources(train_cfg: dict, site: Site | None = None, source: str = "config",
                    compute: dict | None = None) -> dict:
    """Resources of the training job for snakemake-executor-plugin-slurm, from the run config's `train` section;
    what rules/train.smk declares for `train_epoch`.

    agenttune.cluster.launch_plan decides the tasks: one launcher per node for torchrun/DeepSpeed over several nodes, one task
    per rank for `launcher: srun`, and `mpi: "srun"` whenever the job's script starts them with srun itself (the
    plugin otherwise runs the job inside `srun -n1`, where a nested multi-task srun hangs). Here the GPUs are added
    as gres per node, `gpu:<type>:<nproc_per_node>`, so that every node of a multi-node job gets the same GPUs
    (`--gpus=N` counts per job and may split them unevenly). `tasks_per_gpu: 0` stops the plugin from turning
    `tasks` into `--ntasks-per-gpu`. The site file is the one the profile reads; without one (a machine that never
    uses Slurm) the job gets no gres.
    """
    if site is None and site_path().is_file():
        site = load_site()
    try:
        plan = plan_launch(train_cfg)
    except ValueError as e:
        raise SlurmPlanError([f"{source}: {e}"], source) from None
    resources = dict(slurm_resources(plan))
    gpu_scale = compute is not None and compute["device"] != "cpu"
    if site is not None and (TRAIN_RULE in site.gpu_rules or gpu_scale):
        if plan.nproc_per_node > site.gpus_per_node:
            raise SlurmPlanError([f"{source}: train.nproc_per_node {plan.nproc_per_node} asks for "
                                  f"{plan.nproc_per_node} GPUs per node, but {site.source} says a node has "
                                  f"{site.gpus_per_node} (gpu.per_node); use more train.nodes"], source)
        # --mem is per node: the site's host memory per GPU for each of the node's GPUs (one memory setting).
        resources |= _gpu_partition(site) | {"gres": site.gres(plan.nproc_per_node), "nodes": plan.nodes,
                                             "mem_mb": plan.nproc_per_node * site.mem_mb_per_gpu,
                                             "runtime": site.runtime_of(TRAIN_RULE)}
    else:
        resources["mem_mb"] = TRAIN_CPU_MEM_MB
        if "tasks" in resources:
            resources["tasks_per_gpu"] = 0
    return resources


def _eval_job(eval_jobs_path, rule: str) -> dict:
    import json

    return json.loads(Path(eval_jobs_path).read_text())["jobs"][rule]


def eval_resources(rule: str, run_config: dict, site: Site | None = None, jobs: dict | None = None) -> dict:
    """Resources of an evaluation job that loads a model (`predict`, `predict_benchmark`, `general_loss`): what
    rules/evaluate.smk declares. In a GPU-scale run (`compute.device` a GPU) the job goes to the GPU partition with
    the GPUs, host memory and runtime that the evaluation preflight sized (`cost/eval_jobs.json`, the rule's input
    `eval_jobs`; read when the job is ready to run, after the preflight): gres `gpu:<type>:<GPUs>`, CPUs per GPU,
    one memory setting (`mem_mb`, at least the site's memory per GPU × GPUs), runtime the larger of the estimate and
    the site's `runtime.<rule>`. In a CPU run the job stays where the site puts it (`gpu_rules`, e.g. the test
    cluster's fake GPUs), with the sized host memory. Without a site file (no Slurm here) only the sizes. `jobs`:
    the preflight's `jobs` mapping itself, instead of reading it from the rule's input (planning, tests)."""
    if site is None and site_path().is_file():
        site = load_site()
    gpu_scale = run_config["compute"]["device"] != "cpu"

    def sized(input) -> dict:
        return jobs[rule] if jobs is not None else _eval_job(input.eval_jobs, rule)

    def mem_mb(wildcards, input):
        job = sized(input)
        floor = job["gpus"] * site.mem_mb_per_gpu if (site is not None and gpu_scale) else 0
        return max(job["mem_mb"], floor)

    def runtime(wildcards, input):
        job = sized(input)
        return max(job["runtime_min"], site.runtime_of(rule) if site is not None and rule in site.runtime else 0)

    resources = {"mem_mb": mem_mb, "runtime": runtime}
    if site is None:
        return resources
    if gpu_scale:
        resources |= _gpu_partition(site) | {"gres": lambda wildcards, input: site.gres(sized(input)["gpus"])}
    elif rule in site.gpu_rules and site.gpu_rules[rule] != FROM_RUN_CONFIG:
        gpus = site.gpu_rules[rule]
        resources |= _gpu_partition(site) | {
            "gres": site.gres(gpus),
            "mem_mb": lambda wildcards, input: max(mem_mb(wildcards, input), gpus * site.mem_mb_per_gpu)}
    return resources


def _gpu_partition(site: Site) -> dict:
    """What every job in the GPU partition asks for besides its GPUs, memory and runtime. `tasks_per_gpu: 0`: without
    it the plugin sends a GPU job's `tasks` as --ntasks-per-gpu."""
    resources = {"slurm_partition": site.gpu_partition, "cpus_per_gpu": site.cpus_per_gpu, "tasks_per_gpu": 0}
    if site.constraint:
        resources["constraint"] = site.constraint
    return resources


def _quoted(value):
    # Profile resource values are evaluated as Python by Snakemake; a quoted string stays a string even when it
    # happens to be a Python name ("max", "input") or a number-like account.
    return repr(value) if isinstance(value, str) else value


def profile_resources(site: Site) -> tuple[dict, dict]:
    """(default-resources, set-resources) of the slurm profile: the site's values for every rule (partition,
    account, QoS, memory and runtime of a CPU job, per-rule runtimes and extra flags). Where a rule runs on GPUs and
    how big it is, the rules declare themselves (`train_resources`, `eval_resources`): they know the run config and
    the preflight's sizes, which a profile does not, and a profile's set-resources would override them. One memory
    setting per job: `mem_mb` (never also `mem_mb_per_cpu`)."""
    default = {"slurm_partition": site.cpu_partition, "runtime": site.runtime_of("default"),
               "mem_mb": site.cpu_mem_mb}
    if site.account:
        default["slurm_account"] = site.account
    if site.qos:
        default["qos"] = site.qos
    per_rule: dict[str, dict] = {}
    for rule in site.runtime:
        if rule != "default" and rule not in MODEL_RULES:
            per_rule.setdefault(rule, {})["runtime"] = site.runtime_of(rule)
    for rule, extra in site.slurm_extra.items():
        per_rule.setdefault(rule, {})["slurm_extra"] = extra
    return default, per_rule


@dataclass(frozen=True)
class JobRequest:
    """One rule's request, in the terms the checks need."""

    rule: str
    partition: str
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int = 1
    mem_mb_per_node: int = 0
    runtime_min: int = 0
    constraint: str | None = None


def run_jobs(site: Site, run_config: dict, eval_jobs: dict, threads: int = 2) -> list[JobRequest]:
    """Every kind of Slurm job one run submits, as declared by its rules: the grouped CPU jobs, the training job
    (`train_resources`) and the evaluation jobs that load a model (`eval_resources`, sized by the evaluation
    preflight: `eval_jobs` is the `jobs` mapping of cost/eval_jobs.json)."""
    jobs = [JobRequest("(cpu rules)", site.cpu_partition, cpus_per_node=threads, mem_mb_per_node=site.cpu_mem_mb,
                       runtime_min=site.runtime_of("default"))]
    train = train_resources(run_config["train"], site, compute=run_config["compute"])
    gpus = _gres_count(train.get("gres"))
    nodes = train["nodes"] if "nodes" in train else 1  # a one-node job declares no nodes
    jobs.append(JobRequest(TRAIN_RULE, train.get("slurm_partition", site.cpu_partition), nodes, gpus,
                           gpus * site.cpus_per_gpu if gpus else threads, train["mem_mb"],
                           train.get("runtime", site.runtime_of(TRAIN_RULE)), train.get("constraint")))
    for rule in ("predict", "predict_benchmark", "general_loss"):
        if rule not in eval_jobs:
            continue
        res = eval_resources(rule, run_config, site, jobs=eval_jobs)
        resolved = {key: value(None, None) if callable(value) else value for key, value in res.items()}
        gpus = _gres_count(resolved.get("gres"))
        jobs.append(JobRequest(rule, resolved.get("slurm_partition", site.cpu_partition), 1, gpus,
                               gpus * site.cpus_per_gpu if gpus else threads, resolved["mem_mb"],
                               resolved["runtime"], resolved.get("constraint")))
    return jobs


def _gres_count(gres: str | None) -> int:
    return int(gres.rsplit(":", 1)[1]) if gres else 0


def planned_jobs(site: Site, train_cfg: dict | None = None, threads: int = 2) -> list[JobRequest]:
    """What the profile (and, given a run's train section, the training job) will ask of Slurm."""
    jobs = [JobRequest("(cpu rules)", site.cpu_partition, cpus_per_node=threads, mem_mb_per_node=site.cpu_mem_mb,
                       runtime_min=site.runtime_of("default"))]
    mem_per_cpu = max(1, site.mem_mb_per_gpu // site.cpus_per_gpu)
    for rule, gpus in site.gpu_rules.items():
        nodes = 1
        if gpus == FROM_RUN_CONFIG:
            # Without the run config, check what every run needs: one node with one GPU of the partition.
            nodes, gpus = train_shape(train_cfg) if train_cfg is not None else (1, 1)
        cpus = gpus * site.cpus_per_gpu
        jobs.append(JobRequest(rule, site.gpu_partition, nodes, gpus, cpus, cpus * mem_per_cpu,
                               site.runtime_of(rule), site.constraint))
    return jobs


# --------------------------------------------------------------------------- what the cluster says

@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[str, ...]
    state: str = "UP"
    max_time_min: int | None = None  # None: unlimited
    allow_accounts: tuple[str, ...] | None = None  # None: ALL
    allow_qos: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gres: tuple[tuple[str, str | None, int], ...]  # (name, type, count)
    features: frozenset[str]
    state: str = "IDLE"

    def gpus(self, name: str, gpu_type: str | None) -> int:
        return sum(n for g, t, n in self.gres if g == name and (gpu_type is None or t == gpu_type))


@dataclass(frozen=True)
class Cluster:
    partitions: dict
    nodes: dict
    enforce: frozenset[str] = frozenset()  # AccountingStorageEnforce
    accounting: str = "accounting_storage/none"


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=")


def parse_kv_line(line: str) -> dict[str, str]:
    """One `scontrol show ... -o` line; values may contain spaces (OS=, Reason=), keys never do."""
    matches = list(_KEY.finditer(line))
    out = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def expand_hostlist(expr: str) -> list[str]:
    """Slurm hostlist syntax: `node[1-3,7],gpu01` -> node1 node2 node3 node7 gpu01 (zero padding kept)."""
    names, depth, start = [], 0, 0
    parts = []
    for i, ch in enumerate(expr):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    parts.append(expr[start:])
    for part in filter(None, (p.strip() for p in parts)):
        m = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", part)
        if not m:
            names.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            hi = hi or lo
            for k in range(int(lo), int(hi) + 1):
                names.extend(expand_hostlist(f"{prefix}{str(k).zfill(len(lo))}{suffix}"))
    return names


def parse_time_minutes(text: str) -> int | None:
    """Slurm time: UNLIMITED/INFINITE, MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS -> whole minutes."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
    fields = [int(x) for x in rest.split(":")]
    if "-" in text:  # D-HH[:MM[:SS]]
        h, m, s = (fields + [0, 0])[:3]
    elif len(fields) == 3:
        h, m, s = fields
    elif len(fields) == 2:
        h, m, s = 0, fields[0], fields[1]
    else:
        h, m, s = 0, fields[0], 0
    return int(days) * 1440 + h * 60 + m + (1 if s else 0)


def _list_or_all(value: str | None) -> tuple[str, ...] | None:
    if value is None or value.upper() == "ALL":
        return None
    return tuple(v for v in value.split(",") if v)


def _records(text: str, key: str):
    """The `key=value` records of `scontrol show -o` output that have `key` (one per line)."""
    for line in text.splitlines():
        kv = parse_kv_line(line)
        if key in kv:
            yield kv


def parse_partitions(text: str) -> dict[str, Partition]:
    out = {}
    for kv in _records(text, "PartitionName"):
        nodes = kv.get("Nodes", "")
        out[kv["PartitionName"]] = Partition(
            name=kv["PartitionName"],
            nodes=tuple(expand_hostlist(nodes)) if nodes and nodes != "(null)" else (),
            state=kv.get("State", "UP"),
            max_time_min=parse_time_minutes(kv.get("MaxTime", "UNLIMITED")),
            allow_accounts=_list_or_all(kv.get("AllowAccounts")),
            allow_qos=_list_or_all(kv.get("AllowQos")),
        )
    return out


def parse_gres(text: str) -> tuple[tuple[str, str | None, int], ...]:
    """`gpu:a100:4(S:0-1),gpu:v100:2` or `gpu:4` -> ((gpu, a100, 4), (gpu, v100, 2)); `(null)` -> ()."""
    out = []
    for item in re.split(r",(?![^(]*\))", text or ""):
        item = re.sub(r"\(.*\)$", "", item.strip())
        if not item or item == "(null)":
            continue
        parts = item.split(":")
        count = int(re.match(r"\d+", parts[-1]).group()) if len(parts) > 1 and re.match(r"\d", parts[-1]) else 1
        name = parts[0]
        gtype = parts[1] if len(parts) == 3 else None
        out.append((name, gtype, count))
    return tuple(out)


def parse_nodes(text: str) -> dict[str, Node]:
    out = {}
    for kv in _records(text, "NodeName"):
        feats = kv.get("AvailableFeatures", "")
        out[kv["NodeName"]] = Node(
            name=kv["NodeName"],
            cpus=int(kv.get("CPUTot", kv.get("CPUEfctv", "0")) or 0),
            memory_mb=int(kv.get("RealMemory", "0") or 0),
            gres=parse_gres(kv.get("Gres", "")),
            features=frozenset(f for f in feats.split(",") if f and f != "(null)"),
            state=kv.get("State", "IDLE"),
        )
    return out


def parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def cluster_from_text(partitions: str, nodes: str, config: str = "") -> Cluster:
    cfg = parse_config(config)
    enforce = cfg.get("AccountingStorageEnforce", "none")
    return Cluster(parse_partitions(partitions), parse_nodes(nodes),
                   frozenset(e for e in enforce.split(",") if e and e != "none"),
                   cfg.get("AccountingStorageType", "accounting_storage/none"))


def read_cluster(timeout: float = 30) -> Cluster:
    """Ask the live cluster (scontrol must be on PATH and reach slurmctld)."""
    def run(*args):
        proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            raise SlurmPlanError([f"`scontrol {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}"],
                                 "slurm cluster")
        return proc.stdout

    return cluster_from_text(run("show", "partition", "-o"), run("show", "node", "-o"), run("show", "config"))


def default_account(timeout: float = 15) -> str | None:
    """The user's default account from slurmdbd (`sacctmgr`), or None when there is none or no database."""
    if not shutil.which("sacctmgr"):
        return None
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    try:
        proc = subprocess.run(["sacctmgr", "-n", "-P", "show", "user", user, "format=DefaultAccount"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = proc.stdout.strip().splitlines()[0].strip() if proc.returncode == 0 and proc.stdout.strip() else ""
    return value or None


def _default_account_if_needed(site: Site, cluster: Cluster | None) -> str | None:
    # Only a cluster that enforces associations makes the user's default account matter; sacctmgr needs slurmdbd.
    if cluster is None or site.account or "associations" not in cluster.enforce:
        return None
    return default_account()


# --------------------------------------------------------------------------- the checks

def check_site(site: Site, cluster: Cluster, jobs: list[JobRequest], user_default_account: str | None = None
               ) -> list[str]:
    """Every reason Slurm would refuse these jobs, or run them on the wrong hardware; [] when the plan is sound."""
    problems = []
    src = site.source
    known = ", ".join(sorted(cluster.partitions)) or "none"
    for role, name in (("cpu", site.cpu_partition), ("gpu", site.gpu_partition)):
        if name not in cluster.partitions:
            problems.append(f"{src}: partitions.{role}: unknown partition {name!r} (this cluster has: {known})")
        elif cluster.partitions[name].state.upper() != "UP":
            problems.append(f"{src}: partitions.{role}: partition {name!r} is {cluster.partitions[name].state}")

    # Accounts: a partition limited to some accounts, or a cluster that enforces associations, needs one.
    for name in {site.cpu_partition, site.gpu_partition} & set(cluster.partitions):
        allowed = cluster.partitions[name].allow_accounts
        if allowed is not None and site.account is None:
            problems.append(f"{src}: account: missing, and partition {name!r} only admits accounts "
                            f"{', '.join(allowed)}")
        elif allowed is not None and site.account not in allowed:
            problems.append(f"{src}: account: {site.account!r} may not use partition {name!r} "
                            f"(AllowAccounts={','.join(allowed)})")
        allowed_qos = cluster.partitions[name].allow_qos
        if site.qos and allowed_qos is not None and site.qos not in allowed_qos:
            problems.append(f"{src}: qos: {site.qos!r} is not allowed in partition {name!r} "
                            f"(AllowQos={','.join(allowed_qos)})")
    if "associations" in cluster.enforce and not site.account and not user_default_account:
        problems.append(f"{src}: account: missing, and this cluster enforces associations "
                        f"(AccountingStorageEnforce={','.join(sorted(cluster.enforce))}) while you have no "
                        "default account; set account: <your Slurm account>")

    gpu_part = cluster.partitions.get(site.gpu_partition)
    if gpu_part is not None:
        gpu_nodes = [cluster.nodes[n] for n in gpu_part.nodes if n in cluster.nodes]
        most = max((n.gpus(site.gres_name, site.gpu_type) for n in gpu_nodes), default=0)
        if 0 < most < site.gpus_per_node:
            problems.append(f"{src}: gpu.per_node: {site.gpus_per_node}, but the nodes of partition "
                            f"{site.gpu_partition!r} have at most {most} {site.gres('N').rsplit(':', 1)[0]}")

    for job in jobs:
        part = cluster.partitions.get(job.partition)
        if part is None:
            continue
        nodes = [cluster.nodes[n] for n in part.nodes if n in cluster.nodes]
        if job.constraint:
            wanted = set(re.split(r"[&,|]", job.constraint.replace("[", "").replace("]", ""))) - {""}
            nodes = [n for n in nodes if wanted & n.features] if "|" in job.constraint else \
                [n for n in nodes if wanted <= n.features]
            if not nodes:
                problems.append(f"{job.rule}: no node of partition {job.partition!r} has feature(s) "
                                f"{job.constraint!r} (gpu.constraint in {src})")
                continue
        if job.gpus_per_node:
            gres = site.gres("N").rsplit(":", 1)[0]
            gpu_nodes = [n for n in nodes if n.gpus(site.gres_name, site.gpu_type) >= job.gpus_per_node]
            most = max((n.gpus(site.gres_name, site.gpu_type) for n in nodes), default=0)
            if most == 0:
                problems.append(f"{job.rule}: no node of partition {job.partition!r} has gres {gres} "
                                f"(gpu.gres/gpu.type in {src})")
                continue
            if job.gpus_per_node > most:
                problems.append(f"{job.rule}: asks for {job.gpus_per_node} GPUs per node, but the nodes of "
                                f"partition {job.partition!r} have at most {most} {gres}")
                continue
            if len(gpu_nodes) < job.nodes:
                problems.append(f"{job.rule}: needs {job.nodes} nodes with {job.gpus_per_node} {gres} each; "
                                f"partition {job.partition!r} has {len(gpu_nodes)}")
                continue
            nodes = gpu_nodes
        if job.nodes > len(nodes):
            problems.append(f"{job.rule}: needs {job.nodes} nodes; partition {job.partition!r} has {len(nodes)}")
        most_cpus = max((n.cpus for n in nodes), default=0)
        if nodes and job.cpus_per_node > most_cpus:
            problems.append(f"{job.rule}: asks for {job.cpus_per_node} CPUs per node, but the nodes of partition "
                            f"{job.partition!r} have at most {most_cpus} (gpu.cpus_per_gpu in {src})")
        most_mem = max((n.memory_mb for n in nodes), default=0)
        if nodes and job.mem_mb_per_node > most_mem:
            problems.append(f"{job.rule}: asks for {job.mem_mb_per_node} MB per node, but the nodes of partition "
                            f"{job.partition!r} have at most {most_mem} MB (memory settings in {src})")
        if part.max_time_min is not None and job.runtime_min > part.max_time_min:
            problems.append(f"{job.rule}: runtime {job.runtime_min} min exceeds partition {job.partition!r}'s "
                            f"MaxTime of {part.max_time_min} min (runtime in {src})")
    return problems


def check(site: Site, cluster: Cluster | None, train_cfg: dict | None = None, user_default_account=None,
          source: str = "slurm plan") -> list[JobRequest]:
    """Raise SlurmPlanError listing every problem of the site (and run) plan; return the planned jobs."""
    problems = []
    if train_cfg is not None:
        try:
            train_resources(train_cfg, site)
        except SlurmPlanError as e:
            problems.extend(e.problems)
            train_cfg = None
    jobs = planned_jobs(site, train_cfg)
    if cluster is not None:
        problems.extend(check_site(site, cluster, jobs, user_default_account))
    if problems:
        raise SlurmPlanError(problems, source)
    return jobs


# --------------------------------------------------------------------------- the profile

def profile_settings(path: str | Path | None = None, live: bool | None = None) -> dict:
    """Everything profiles/slurm/config.yaml fills in from the site file, after checking the site against the live
    cluster (skipped when scontrol is absent or $AGENTTUNE_SLURM_CHECK=0). Raises SlurmPlanError otherwise."""
    site = load_site(path)
    if live is None:
        live = os.environ.get(CHECK_ENV, "1") != "0" and shutil.which("scontrol") is not None
    cluster = read_cluster() if live else None
    check(site, cluster, None, _default_account_if_needed(site, cluster), source=site.source)
    default, per_rule = profile_resources(site)
    default = {k: _quoted(v) for k, v in default.items()}
    per_rule = {rule: {k: _quoted(v) for k, v in r.items()} for rule, r in per_rule.items()}
    no_dbd = cluster is None or cluster.accounting.endswith("/none")
    return {
        "default-resources": default,
        "set-resources": per_rule,
        # Without slurmdbd, sacct cannot see jobs (status checks would spin) and the plugin's account guess fails.
        "slurm-status-command": "squeue" if no_dbd else "sacct",
        "slurm-no-account": site.account is None,
    }


def profile_settings_or_exit(path: str | Path | None = None) -> dict:
    """profile_settings for profiles/slurm/config.yaml: on a problem, print it and exit 1. (Raised inside the
    profile, the message would come after several hundred lines of snakemake's usage text.)"""
    try:
        return profile_settings(path)
    except SlurmPlanError as e:
        print(f"agenttune.cluster.slurm: {e}", file=sys.stderr)
        raise SystemExit(1) from None


# --------------------------------------------------------------------------- rendezvous inside a job step

def rendezvous(env: dict | None = None, resolve=None) -> dict:
    """MASTER_ADDR/MASTER_PORT/NNODES/NODE_RANK for torchrun or the DeepSpeed launcher, from the variables Slurm
    sets in each task of a job step (SLURM_JOB_NODELIST, SLURM_NODEID, SLURM_JOB_ID). The address is the first
    node's, as `scontrol show node` reports it (NodeAddr), since node names need not resolve; the port is derived
    from the job id so two jobs sharing a node do not collide."""
    env = os.environ if env is None else env
    missing = [v for v in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODEID") if v not in env]
    if missing:
        raise RuntimeError(f"not inside a Slurm job step ({', '.join(missing)} unset): start it with srun")
    first = expand_hostlist(env["SLURM_JOB_NODELIST"])[0]
    addr = (resolve or node_address)(first)
    return {
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(20000 + int(env["SLURM_JOB_ID"]) % 20000),
        "NNODES": str(len(expand_hostlist(env["SLURM_JOB_NODELIST"]))),
        "NODE_RANK": env["SLURM_NODEID"],
    }


def node_address(name: str) -> str:
    """A node's NodeAddr from scontrol; the name itself when scontrol cannot say."""
    try:
        proc = subprocess.run(["scontrol", "show", "node", name, "-o"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return name
    addr = parse_kv_line(proc.stdout.strip()).get("NodeAddr") if proc.returncode == 0 else None
    return addr or name


# --------------------------------------------------------------------------- CLI

def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_run_config(configfiles: list[str]) -> dict:
    """The run config as the Snakefile reads it, with the schema's defaults: the --configfile files merged in order
    (each over the one before), or config/config.yaml when none is given."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) if not configfiles and DEFAULT_CONFIG.is_file() else {}
    for path in configfiles:
        config = _deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return with_defaults(config)


def _recorded_cluster(folder: str) -> Cluster:
    d = Path(folder)
    config = d / "config.txt"
    return cluster_from_text((d / "partitions.txt").read_text(), (d / "nodes.txt").read_text(),
                             config.read_text() if config.is_file() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agenttune.cluster.slurm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("show", "print the resources the slurm profile and the training job will ask for"),
                        ("check", "check the site file (and a run config) against the cluster; exit 1 on problems")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--site", help=f"site file (default: ${SITE_ENV} or {DEFAULT_SITE})")
        p.add_argument("--configfile", nargs="*", default=[], help="run config(s), merged in order as Snakemake does (none: config/config.yaml)")
        p.add_argument("--recorded", help="folder with partitions.txt, nodes.txt, config.txt "
                                          "(outputs of scontrol show partition -o / node -o / config)")
        p.add_argument("--offline", action="store_true", help="check against the site file only")
    sub.add_parser("rendezvous", help="inside an srun task: print `export MASTER_ADDR=... MASTER_PORT=... NNODES=... "
                                      "NODE_RANK=...` for torchrun or the DeepSpeed launcher")
    args = parser.parse_args(argv)
    if args.cmd == "rendezvous":
        try:
            values = rendezvous()
        except RuntimeError as e:
            print(f"agenttune.cluster.slurm: {e}", file=sys.stderr)
            return 1
        print("export " + " ".join(f"{k}={v}" for k, v in values.items()))
        return 0
    try:
        site = load_site(args.site)
        train_cfg = load_run_config(args.configfile).get("train") if args.configfile else None
        if args.cmd == "show":
            default, per_rule = profile_resources(site)
            out = {"default-resources": default, "set-resources": per_rule}
            if train_cfg is not None:
                out["train_epoch (from the run config's train section)"] = train_resources(train_cfg, site)
            print(yaml.safe_dump(out, sort_keys=False), end="")
            return 0
        cluster = (_recorded_cluster(args.recorded) if args.recorded
                   else None if args.offline or not shutil.which("scontrol") else read_cluster())
        jobs = check(site, cluster, train_cfg, None if args.recorded else _default_account_if_needed(site, cluster),
                     source=site.source)
    except SlurmPlanError as e:
        print(e, file=sys.stderr)
        return 1
    against = "recorded cluster" if args.recorded else "site file only" if cluster is None else "live cluster"
    for job in jobs:
        print(f"ok: {job.rule}: partition {job.partition}, {job.nodes} node(s) × {job.gpus_per_node} GPU(s), "
              f"{job.cpus_per_node} CPUs, {job.mem_mb_per_node} MB, {job.runtime_min} min")
    print(f"plan is sound ({against})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
