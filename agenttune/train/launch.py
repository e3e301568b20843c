"""Launch one training epoch: in this process, or as several ranks through torchrun, the DeepSpeed launcher or srun.

Takes: the `train` section of the run config (`launcher`, `nodes`, `nproc_per_node`, `master_port`), the job's
threads and the Snakemake resources it was given.
Gives: the command that starts every rank of `python -m agenttune.train.worker SPEC` (built here, tested without a cluster)
and `run_epoch_job`, which the train rule's script calls: it trains in-process for `launcher: none`, otherwise writes
the job spec next to the output, runs the launcher, streams the ranks' output into the job log and checks the result.

Launchers:
- `none`: this process is the only rank (DeepSpeed gets RANK=0, WORLD_SIZE=1 and a free port on 127.0.0.1).
- `torchrun`: one node: `torchrun --standalone --nproc_per_node P`. Several nodes: inside the Slurm job,
  `srun` starts one torchrun per node, and each derives the rendezvous host from `SLURM_JOB_NODELIST` with
  `scontrol show hostnames` inside that job step (c10d rendezvous, id = the Slurm job id).
- `deepspeed`: DeepSpeed's per-node launcher (`deepspeed.launcher.launch`) on the GPUs the job step was given: its
  ranks get CUDA_VISIBLE_DEVICES = the first P entries of the step's CUDA_VISIBLE_DEVICES (0..P-1 when it is unset:
  CPU runs, a machine of one's own), and fewer than P is refused. One node: started here, in the job. Several
  nodes: `srun` starts it once per node, and each task finds its node's GPUs and rank (SLURM_NODEID) itself
  (`python -m agenttune.train.launch deepspeed-node`); no pdsh, no ssh. The `deepspeed` runner is not used: `--num_gpus`
  makes it replace the job's CUDA_VISIBLE_DEVICES with 0..P-1, and across nodes it needs pdsh with passwordless
  ssh, or an MPI (openmpi, mpich, impi, mvapich); `--launcher slurm` wants a hostfile and `sinfo`, and its one srun
  task per rank runs `python SCRIPT` (no `-m`) without RANK/LOCAL_RANK: `launcher: srun` does that job here.
- `srun`: one rank per Slurm task (`nodes × nproc_per_node` tasks): each task sets RANK/LOCAL_RANK/WORLD_SIZE from
  SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS and MASTER_ADDR from `scontrol show hostnames` inside the job step. With
  snakemake-executor-plugin-slurm the rule carries `mpi: "srun"`, `nodes` and `tasks`, so the plugin allocates the
  tasks and runs the job without its own `srun -n1` wrapper (a nested multi-task srun would hang inside it).

What a site needs: on one node, nothing. Across nodes, for every launcher: srun and scontrol inside the job and the
rendezvous port open between the nodes; no pdsh, no ssh between nodes, no MPI. GPUs as Slurm GRES, so that each job
step's CUDA_VISIBLE_DEVICES names its GPUs on each node: every launcher keeps to them (torchrun and srun ranks
inherit it, the DeepSpeed launcher is handed it), and where a site does not fence devices (cgroup.conf
ConstrainDevices=yes) that is all that keeps the ranks off other jobs' GPUs.

The rank processes die with their parent (PR_SET_PDEATHSIG on Linux): a killed job leaves no rank behind that
could finish the epoch after Snakemake has given up on it.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from agenttune.cluster.launch_plan import LaunchPlan, plan_launch

WORKER_MODULE = "agenttune.train.worker"
# DeepSpeed's per-node launcher. Its --world_info (base64 JSON {node: [device ids]}) is the whole job: it starts one
# rank per id of node --node_rank, numbers them after the ranks of the nodes listed before it, and gives each
# CUDA_VISIBLE_DEVICES = that node's ids joined by "," (it only counts and joins them) and LOCAL_RANK = its index.
DEEPSPEED_NODE_LAUNCHER = "deepspeed.launcher.launch"
# Without a configured port, multi-node jobs take one from the Slurm job id so that two jobs sharing a node differ.
SLURM_PORT_EXPR = "$((20000 + SLURM_JOB_ID % 20000))"
# The rendezvous host: the allocation's first node, computed by the shell of the job step (the only place
# SLURM_JOB_NODELIST is sure to be set), as its NodeAddr from `scontrol show node` (node names need not resolve;
# the address Slurm itself uses does), else its name. No pipe into `head`, whose early exit could fail the step
# under `set -o pipefail`.
FIRST_HOST = ('HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST"); FIRST=${HOSTS%%$\'\\n\'*}; '
              'test -n "$FIRST"; NODE=$(scontrol show node "$FIRST" -o 2>/dev/null || true); '
              'if [[ $NODE =~ NodeAddr=([^[:space:]]+) ]]; then MASTER_ADDR=${BASH_REMATCH[1]}; '
              'else MASTER_ADDR=$FIRST; fi')


def worker_command(spec_path: str | Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", WORKER_MODULE, str(spec_path)]


def _port(plan: LaunchPlan) -> str:
    return str(plan.master_port) if plan.master_port else SLURM_PORT_EXPR


def srun_cpus_per_task(gpus_per_task: int, tasks_per_node: int, env=None,
                       cpus_per_gpu: int | None = None) -> list[str]:
    """`--cpus-per-task` for our srun job steps: CPUs per GPU × the task's GPUs when the job has CPUs per GPU (the
    slurm profile gives GPU rules `cpus_per_gpu`; it reaches the job as a Snakemake resource, since
    snakemake-executor-plugin-slurm removes SLURM_* variables from the job's environment; else
    `SLURM_CPUS_PER_GPU`), otherwise the node's CPUs (`SLURM_CPUS_ON_NODE`) shared by its tasks. srun does not pass a
    job's --cpus-per-gpu on to the tasks of a step (and Slurm 22.05-23.02 ignored the job's --cpus-per-task in
    steps), so without this a task, i.e. a torchrun with all its ranks or a rank with its data loading, may be bound
    to one CPU. With neither: nothing (srun's own default)."""
    env = os.environ if env is None else env
    per_gpu = str(cpus_per_gpu) if cpus_per_gpu else env.get("SLURM_CPUS_PER_GPU", "")
    on_node = env.get("SLURM_CPUS_ON_NODE", "")
    if per_gpu.isdigit() and int(per_gpu) > 0:
        cpus = int(per_gpu) * max(1, gpus_per_task)
    elif on_node.isdigit() and int(on_node) > 0:
        cpus = int(on_node) // max(1, tasks_per_node)
    else:
        return []
    return [f"--cpus-per-task={max(1, cpus)}"]


def node_gpus(nproc_per_node: int, env) -> list[str]:
    """The devices this node's ranks run on, as CUDA_VISIBLE_DEVICES names them: its first `nproc_per_node` entries.
    Slurm sets it in a GPU job step to that step's GPUs on the node; the entries (indices, or UUIDs) go on unchanged,
    so they mean for the ranks what they meant for the step, with or without device cgroups. Unset or empty (CPU
    runs, a machine of one's own): 0..P-1, what `deepspeed --num_gpus P` takes. Read where the ranks start: in the
    job for one node, in each node's task for several."""
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return [str(i) for i in range(nproc_per_node)]
    ids = [d.strip() for d in visible.split(",") if d.strip()]
    if len(ids) < nproc_per_node:
        raise ValueError(f"train.nproc_per_node is {nproc_per_node}, but this node's job step has {len(ids)} GPU(s) "
                         f"(CUDA_VISIBLE_DEVICES={visible}): give the train job {nproc_per_node} GPUs per node or "
                         f"set train.nproc_per_node to {len(ids)}")
    return ids[:nproc_per_node]


def deepspeed_node_command(nodes: int, nproc_per_node: int, node_rank: int, master_addr: str, master_port: int | str,
                           spec_path: str | Path, python: str = sys.executable, env=None) -> list[str]:
    """DeepSpeed's per-node launcher for node `node_rank` of `nodes`, on this node's GPUs (`node_gpus` of `env`,
    default os.environ). Only this node's entry of the world info names devices; the launcher reads the other
    entries only for their number of ranks, and those devices are known only on their own nodes ("?")."""
    env = os.environ if env is None else env
    world = {f"node{i}": node_gpus(nproc_per_node, env) if i == node_rank else ["?"] * nproc_per_node
             for i in range(nodes)}
    world_info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
    return [python, "-m", DEEPSPEED_NODE_LAUNCHER, f"--world_info={world_info}", f"--node_rank={node_rank}",
            f"--master_addr={master_addr}", f"--master_port={master_port}", "--module", WORKER_MODULE,
            str(spec_path)]


def _srun_per_node(plan: LaunchPlan, script: str, env, cpus_per_gpu: int | None) -> list[str]:
    """One task per node, running `script`; the step keeps the job's GPUs on every node (no --gres: Slurm's default)."""
    return ["srun", f"--nodes={plan.nodes}", f"--ntasks={plan.nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", *srun_cpus_per_task(plan.nproc_per_node, 1, env, cpus_per_gpu),
            "bash", "-c", script]


def launch_command(plan: LaunchPlan, spec_path: str | Path, python: str = sys.executable, env=None,
                   cpus_per_gpu: int | None = None) -> list[str]:
    """argv that starts all ranks of the worker for `spec_path`. Multi-node commands are meant to run inside a
    Slurm allocation: their rendezvous address and GPUs are found by the srun job step on each node, not here. The
    srun steps' CPUs come from `cpus_per_gpu` (the job's resource), else from `env` (default os.environ); the GPUs
    of a one-node DeepSpeed launch from `env`, so call this inside the job."""
    env = os.environ if env is None else env
    spec = str(spec_path)
    q = shlex.quote
    if plan.launcher == "none":
        return worker_command(spec, python)
    if plan.launcher == "torchrun" and plan.nodes == 1:
        # --standalone: a c10d rendezvous on a free local port, so two jobs on one machine never collide.
        return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(plan.nproc_per_node), "-m", WORKER_MODULE, spec]
    if plan.launcher == "torchrun":
        script = (
            "set -euo pipefail; "
            f"{FIRST_HOST}; "
            f"MASTER_PORT={_port(plan)}; "
            f"exec {q(python)} -m torch.distributed.run --nnodes {plan.nodes} "
            f"--nproc_per_node {plan.nproc_per_node} "
            '--rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" '
            f"-m {WORKER_MODULE} {q(spec)}"
        )
        return _srun_per_node(plan, script, env, cpus_per_gpu)
    if plan.launcher == "deepspeed" and plan.nodes == 1:
        return deepspeed_node_command(1, plan.nproc_per_node, 0, "127.0.0.1", plan.master_port or find_free_port(),
                                      spec, python, env)
    if plan.launcher == "deepspeed":
        # Each task's own CUDA_VISIBLE_DEVICES and SLURM_NODEID exist only inside it: the task builds its launcher.
        script = (
            "set -euo pipefail; "
            f"{FIRST_HOST}; "
            f"MASTER_PORT={_port(plan)}; "
            f"exec {q(python)} -m agenttune.train.launch deepspeed-node --nodes {plan.nodes} "
            f"--nproc_per_node {plan.nproc_per_node} "
            '--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" '
            f"{q(spec)}"
        )
        return _srun_per_node(plan, script, env, cpus_per_gpu)
    # srun: one rank per task; the rendezvous comes from the task's own Slurm environment.
    script = (
        "set -euo pipefail; "
        f"{FIRST_HOST}; "
        f"MASTER_PORT={_port(plan)}; "
        "export MASTER_ADDR MASTER_PORT RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID "
        f"LOCAL_WORLD_SIZE={plan.nproc_per_node}; "
        f"exec {q(python)} -m {WORKER_MODULE} {q(spec)}"
    )
    return ["srun", f"--nodes={plan.nodes}", f"--ntasks={plan.world_size}",
            f"--ntasks-per-node={plan.nproc_per_node}", "--kill-on-bad-exit=1",
            *srun_cpus_per_task(1, plan.nproc_per_node, env, cpus_per_gpu), "bash", "-c", script]


def deepspeed_node_main(argv: list[str]) -> None:
    """`python -m agenttune.train.launch deepspeed-node ...`: each task of the multi-node DeepSpeed step (one per node)
    becomes DeepSpeed's per-node launcher for its node, SLURM_NODEID, on its own GPUs."""
    ap = argparse.ArgumentParser(prog="python -m agenttune.train.launch deepspeed-node")
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--nproc_per_node", type=int, required=True)
    ap.add_argument("--master_addr", required=True)
    ap.add_argument("--master_port", required=True)
    ap.add_argument("spec")
    args = ap.parse_args(argv)
    if "SLURM_NODEID" not in os.environ:
        sys.exit("agenttune.train.launch deepspeed-node: SLURM_NODEID is not set; it runs in the tasks of an srun step")
    node_rank = int(os.environ["SLURM_NODEID"])
    try:
        cmd = deepspeed_node_command(args.nodes, args.nproc_per_node, node_rank, args.master_addr, args.master_port,
                                     args.spec)
    except ValueError as err:
        sys.exit(f"agenttune.train.launch: node {node_rank} ({os.environ.get('SLURMD_NODENAME', 'unnamed')}): {err}")
    # exec, not a child: srun's signals and --kill-on-bad-exit reach the launcher, and its exit code is the task's.
    os.execv(cmd[0], cmd)


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torch_extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built ops are cached: $TORCH_EXTENSIONS_DIR, else .cache/torch_extensions in the working
    directory (the project root under Snakemake), so that the ~45 s build happens once per checkout."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.cwd() / ".cache" / "torch_extensions").resolve()


def rank_environment(plan: LaunchPlan, threads: int | None, on_gpu: bool) -> dict:
    """Environment variables for the rank processes (added to the current environment)."""
    env = {"TORCH_EXTENSIONS_DIR": str(torch_extensions_dir()), "PYTHONUNBUFFERED": "1"}
    if not on_gpu:
        env["DS_ACCELERATOR"] = "cpu"
        # Ranks on one machine share its cores: one rank per core pair, not every rank on all cores.
        env["OMP_NUM_THREADS"] = str(max(1, (threads or os.cpu_count() or 1) // plan.nproc_per_node))
    return env


def launch_environment(plan: LaunchPlan, threads: int | None, on_gpu: bool, deepspeed: bool) -> dict:
    """Everything the ranks need in their environment; a lone DeepSpeed rank also gets its rendezvous."""
    env = rank_environment(plan, threads, on_gpu)
    if plan.launcher == "none" and deepspeed:
        env.update(single_process_environment())
    return env


def single_process_environment() -> dict:
    """What torch.distributed needs to run DeepSpeed as the only rank of this process."""
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(find_free_port())}


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere). Called in rank processes and in the
    launcher child, so that killing the job kills every rank."""
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def run_command(cmd: list[str], env: dict, log=print) -> int:
    """Run `cmd` with `env` added, copying its output line by line into `log`'s stream; return its exit code."""
    full_env = {**os.environ, **env}
    if cmd and cmd[0] == "srun" and any(a.startswith("--cpus-per-task=") for a in cmd):
        # srun reads SLURM_CPUS_PER_GPU (set in a job given --cpus-per-gpu) as its own --cpus-per-gpu, which
        # Slurm refuses together with --cpus-per-task: the step's CPUs are the explicit ones.
        full_env.pop("SLURM_CPUS_PER_GPU", None)
    with subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", bufsize=1, preexec_fn=die_with_parent) as proc:
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
        except BaseException:
            proc.kill()
            raise
        return proc.wait()


def run_epoch_job(base_model_dir: str | Path, shard_paths: list, prev_epoch_dir: str | Path | None,
                  out_dir: str | Path, epoch: int, train_cfg: dict, seed: int, compute: dict | None = None,
                  threads: int | None = None, resources: dict | None = None, log=print) -> dict:
    """Train epoch `epoch` as the config's launcher says; return the epoch's metrics."""
    import torch

    from agenttune.train.trainer import train_epoch, write_job_spec

    plan = plan_launch(train_cfg, resources)
    on_gpu = torch.cuda.is_available()
    out_dir = Path(out_dir)
    log(f"launch: {plan.launcher}, {plan.nodes} node(s) × {plan.nproc_per_node} process(es), "
        f"world size {plan.world_size}" + (", DeepSpeed ZeRO-3" if train_cfg.get("deepspeed") else ""))
    env = launch_environment(plan, threads, on_gpu, bool(train_cfg.get("deepspeed")))
    if plan.launcher == "none":
        for key, value in env.items():
            os.environ.setdefault(key, value)
        return train_epoch(base_model_dir, shard_paths, prev_epoch_dir, out_dir, epoch, train_cfg, seed,
                           compute=compute, log=log)

    spec = out_dir.resolve().with_name(out_dir.name + ".launch.json")  # absolute: ranks may start elsewhere
    cmd = launch_command(plan, spec, cpus_per_gpu=(resources or {}).get("cpus_per_gpu"))  # refuses before writing
    write_job_spec(spec, base_model_dir, shard_paths, prev_epoch_dir, out_dir, epoch, train_cfg, seed, compute)
    log("command: " + shlex.join(cmd))
    rc = run_command(cmd, env, log)
    if rc != 0:
        raise RuntimeError(f"training epoch {epoch}: the {plan.launcher} launcher exited with {rc} "
                           "(the ranks' output is above)")
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"training epoch {epoch}: the launcher exited 0 but {metrics_path} was not written")
    spec.unlink(missing_ok=True)
    metrics = json.loads(metrics_path.read_text())
    log(f"epoch {epoch} done on {plan.world_size} rank(s): {metrics['tokens_per_s']:.1f} tokens/s, wrote {out_dir}")
    return metrics


if __name__ == "__main__":
    if sys.argv[1:2] != ["deepspeed-node"]:
        sys.exit("usage: python -m agenttune.train.launch deepspeed-node --nodes N --nproc_per_node P --master_addr A "
                 "--master_port PORT SPEC (run by the multi-node DeepSpeed launch command)")
    deepspeed_node_main(sys.argv[2:])
