"""A stand-in for `srun` and `scontrol` inside a Slurm allocation, so that the launch commands agenttune.train.launch builds
for Slurm run for real on one machine. srun starts its tasks as local processes with the SLURM_* variables a real
job step gives them (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS, SLURM_NNODES, SLURM_JOB_NODELIST,
SLURM_JOB_ID); the allocation has FAKE_SLURM_JOB_NODES nodes (default: as many as the step), named fakenode<i>,
names that do not resolve, as on the project's test cluster. scontrol answers `show hostnames` with those names and
`show node NAME -o` with NodeAddr=127.0.0.1. tests/test_slurm_cluster.py runs the same commands under a real
Slurm."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRUN = r'''
import os, re, signal, subprocess, sys, time
args = sys.argv[1:]
opts = {}
while args and args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
nodes = int(opts.get("nodes", 1))
ntasks = int(opts.get("ntasks", nodes))
per_node = int(opts.get("ntasks-per-node", -(-ntasks // nodes)))
with open(os.environ["FAKE_SLURM_LOG"], "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
# The job's node list (every node of the allocation), not just this step's: as in a real job step.
job_nodes = int(os.environ.get("FAKE_SLURM_JOB_NODES", nodes))
def nodelist(n):
    return f"fakenode[1-{n}]" if n > 1 else "fakenode1"
procs = []
for task in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(task), SLURM_LOCALID=str(task % per_node),
               SLURM_NODEID=str(task // per_node), SLURM_NTASKS=str(ntasks), SLURM_NNODES=str(nodes),
               SLURM_JOB_NODELIST=nodelist(job_nodes), SLURM_STEP_NODELIST=nodelist(nodes),
               SLURM_JOB_ID=os.environ.get("SLURM_JOB_ID", "4242"), SLURM_STEP_ID="0")
    procs.append(subprocess.Popen(args, env=env))
codes = [None] * ntasks
while any(c is None for c in codes):
    for i, p in enumerate(procs):
        if codes[i] is None:
            codes[i] = p.poll()
    if opts.get("kill-on-bad-exit") == "1" and any(c not in (None, 0) for c in codes):
        for p in procs:
            if p.poll() is None:
                p.kill()
        codes = [p.wait() for p in procs]
        break
    time.sleep(0.1)
sys.exit(max((abs(c) for c in codes), default=0))
'''

SCONTROL = r'''
import re, sys
if sys.argv[1:3] == ["show", "hostnames"] and len(sys.argv) == 4:
    m = re.fullmatch(r"[a-z]+\[(\d+)-(\d+)\]", sys.argv[3])
    count = int(m.group(2)) - int(m.group(1)) + 1 if m else 1
    print("\n".join(f"fakenode{i + 1}" for i in range(count)))
elif sys.argv[1:3] == ["show", "node"] and len(sys.argv) == 5 and sys.argv[4] == "-o":
    print(f"NodeName={sys.argv[3]} Arch=x86_64 CoresPerSocket=1 NodeAddr=127.0.0.1 NodeHostName={sys.argv[3]} "
          "State=ALLOCATED")
else:
    sys.exit(f"fake scontrol: unsupported arguments {sys.argv[1:]}")
'''


def install(bin_dir: Path) -> dict:
    """Write `srun` and `scontrol` into bin_dir; return environment variables that put them first on PATH.
    Every srun call line is appended to bin_dir/srun.log."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_SLURM_LOG": str(bin_dir / "srun.log")}
