"""The launch plan of a training job: which launcher, how many nodes and ranks, and the Slurm resources that follow.

Takes: the `train` section of the run config (`launcher`, `nodes`, `nproc_per_node`, `master_port`) and, in the job,
the Snakemake resources it was given. Gives: a checked `LaunchPlan` and the resources the train rule declares.
The cluster layer owns it because the Slurm profile and the train rule size jobs from it before anything trains;
agenttune.train.launch starts the ranks it describes.
"""

from __future__ import annotations

from dataclasses import dataclass

from agenttune.common.config import section_with_defaults

LAUNCHERS = ("none", "torchrun", "deepspeed", "srun")
_TRAIN_DEFAULTS = section_with_defaults({}, "train")


@dataclass(frozen=True)
class LaunchPlan:
    launcher: str = _TRAIN_DEFAULTS["launcher"]
    nodes: int = _TRAIN_DEFAULTS["nodes"]
    nproc_per_node: int = _TRAIN_DEFAULTS["nproc_per_node"]
    master_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


def plan_launch(train_cfg: dict, resources: dict | None = None) -> LaunchPlan:
    """The launch plan from the config; the Snakemake resources the job got (a profile may set them) must agree."""
    train_cfg = section_with_defaults(train_cfg, "train")
    plan = LaunchPlan(
        launcher=train_cfg["launcher"],
        nodes=int(train_cfg["nodes"]),
        nproc_per_node=int(train_cfg["nproc_per_node"]),
        master_port=train_cfg.get("master_port"),
    )
    if plan.launcher not in LAUNCHERS:
        raise ValueError(f"train.launcher: {plan.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if plan.nodes < 1 or plan.nproc_per_node < 1:
        raise ValueError("train.nodes and train.nproc_per_node must be at least 1")
    if plan.launcher == "none" and plan.world_size > 1:
        raise ValueError(f"train.launcher: none runs one process, but train.nodes × train.nproc_per_node = "
                         f"{plan.world_size}: choose torchrun, deepspeed or srun")
    expected = slurm_resources(plan)
    for key, value in expected.items():
        got = (resources or {}).get(key)
        if got is not None and str(got) != str(value):
            raise ValueError(f"the train_epoch job has resources {key}={got!r}, but the train config asks for "
                             f"{key}={value!r} (launcher {plan.launcher}, {plan.nodes} node(s) × "
                             f"{plan.nproc_per_node} process(es)); change the config, not the profile")
    return plan


def slurm_resources(plan: LaunchPlan) -> dict:
    """The Snakemake resources the train rule declares for this plan (read by snakemake-executor-plugin-slurm).

    `mpi` makes the plugin run the job itself in the batch step, where our own srun starts the tasks. Jobs that
    stay on one node without srun get none of these (the plugin runs them in `srun -n1`, which torchrun and the
    DeepSpeed launcher are happy inside)."""
    if plan.launcher == "srun":
        return {"nodes": plan.nodes, "tasks": plan.world_size, "mpi": "srun"}
    if plan.nodes > 1:  # torchrun or deepspeed across nodes: one launcher per node
        return {"nodes": plan.nodes, "tasks": plan.nodes, "mpi": "srun"}
    return {}
