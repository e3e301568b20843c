#!/usr/bin/env bash
# A private single-machine Slurm cluster for tests: munged + slurmctld + two slurmd ("node1", "node2", started with
# `slurmd -N`) on this host, each node with 2 fake A100s declared as gres (character devices made with mknod).
# Partitions: `cpu` (default) and `gpu`. No accounting database.
#
#   tests/slurm/cluster.sh start    write the config under $DIR, start the daemons, wait until both nodes are idle
#   tests/slurm/cluster.sh stop     stop the daemons this script started (by the PIDs in $DIR/run), nothing else
#   tests/slurm/cluster.sh status   exit 0 and print `sinfo` when the cluster answers, exit 1 otherwise
#   tests/slurm/cluster.sh env      print the `export SLURM_CONF=... PATH=...` a shell needs to talk to it
#
# DIR is $AGENTTUNE_SLURM_DIR or <repo>/.cache/slurm-cluster. Everything (config, munge key and socket, state,
# spool, logs, PID files) lives there; nothing under /etc or /var is touched. Needs root and the Debian packages
# (tests/slurm/install.sh). Ports: $AGENTTUNE_SLURM_PORT (slurmctld, default 17817) and the next two (slurmd).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${AGENTTUNE_SLURM_DIR:-$REPO/.cache/slurm-cluster}
PORT=${AGENTTUNE_SLURM_PORT:-17817}
NODES=(node1 node2)
GPUS_PER_NODE=2
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF

die() { echo "cluster.sh: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the PID in it is a running process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_config() {
    local host mem
    host=$(hostname -s)
    # Each virtual node claims the host's CPUs; memory is capped so two nodes fit in the host's RAM.
    local cpus
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 3))
    mkdir -p "$DIR"/{etc,munge,state,log,run,dev,bin} "${NODES[@]/#/$DIR/spool/}"
    # The executor plugin starts a job's inner `srun` with every SLURM_* variable removed but SLURM_JOB_ID and a few
    # others, SLURM_CONF included: a cluster whose config is not at /etc/slurm/slurm.conf is then unreachable from
    # inside a job. These wrappers (first on PATH for the tests) carry the config's path instead.
    local tool real path_without_wrappers
    path_without_wrappers=$(tr ':' '\n' <<<"$PATH" | grep -vxF "$DIR/bin" | paste -sd:)
    for tool in srun sbatch squeue scontrol sinfo scancel sacct; do
        real=$(PATH=$path_without_wrappers command -v "$tool") || continue
        printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$CONF" "$real" >"$DIR/bin/$tool"
        chmod +x "$DIR/bin/$tool"
    done
    chmod 700 "$DIR/munge"
    [[ -s $DIR/munge/munge.key ]] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
    chmod 400 "$DIR/munge/munge.key"
    cat >"$CONF" <<EOF
# Written by tests/slurm/cluster.sh; a throw-away test cluster.
ClusterName=agenttune-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Finished jobs stay visible to squeue/scontrol for an hour: the plugin polls squeue, the tests inspect jobs.
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
SlurmctldTimeout=30
SlurmdTimeout=30
EOF
    : >"$DIR/etc/gres.conf"
    echo "AutoDetect=off" >>"$DIR/etc/gres.conf"
    local i=0 n g
    for n in "${!NODES[@]}"; do
        echo "NodeName=${NODES[$n]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 1 + n)) CPUs=$cpus" \
            "RealMemory=$mem Gres=gpu:a100:$GPUS_PER_NODE Feature=a100,a100_80g State=UNKNOWN" >>"$CONF"
        for ((g = 0; g < GPUS_PER_NODE; g++)); do
            # A GPU gres without File= is dropped and the node drains; a character device is all Slurm checks.
            [[ -c $DIR/dev/nvidia$i ]] || mknod "$DIR/dev/nvidia$i" c 1 3
            echo "NodeName=${NODES[$n]} Name=gpu Type=a100 File=$DIR/dev/nvidia$i" >>"$DIR/etc/gres.conf"
            i=$((i + 1))
        done
    done
    local all
    all=$(IFS=,; echo "${NODES[*]}")
    cat >>"$CONF" <<EOF
PartitionName=cpu Nodes=$all Default=YES MaxTime=1-00:00:00 State=UP
PartitionName=gpu Nodes=$all Default=NO MaxTime=2-00:00:00 State=UP
EOF
}

start() {
    [[ $EUID -eq 0 ]] || die "needs root (daemons run as root on this throw-away cluster)"
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || die "$tool not found: run tests/slurm/install.sh"
    done
    if status >/dev/null 2>&1; then
        echo "cluster.sh: already running ($DIR)"
        return 0
    fi
    stop >/dev/null 2>&1 || true
    write_config
    # The daemons get no stdin/stdout/stderr of ours: a caller reading our output (a test's subprocess pipe) would
    # otherwise wait for them to exit. Their messages go to $DIR/log.
    munged --force --socket="$DIR/munge/munge.socket.2" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        </dev/null >>"$DIR/log/start.log" 2>&1
    # -c: start from a clean state (no jobs or node states left from an earlier cluster in this folder).
    slurmctld -c -f "$CONF" </dev/null >>"$DIR/log/start.log" 2>&1
    for n in "${NODES[@]}"; do
        slurmd -N "$n" -f "$CONF" </dev/null >>"$DIR/log/start.log" 2>&1
    done
    local t0=$SECONDS
    while ((SECONDS - t0 < 60)); do
        alive "$DIR/run/slurmctld.pid" || break
        if [[ $(timeout 5 sinfo -h -N -p cpu -t idle -o %N 2>/dev/null | sort -u | wc -l) -eq ${#NODES[@]} ]]; then
            echo "cluster.sh: up in $((SECONDS - t0))s: $DIR"
            sinfo -N -o "%N %P %t %c %m %G %f"
            return 0
        fi
        sleep 1
    done
    echo "--- start.log" >&2; tail -20 "$DIR/log/start.log" >&2 || true
    echo "--- slurmctld.log" >&2; tail -20 "$DIR/log/slurmctld.log" >&2 || true
    for n in "${NODES[@]}"; do echo "--- slurmd-$n.log" >&2; tail -20 "$DIR/log/slurmd-$n.log" >&2 || true; done
    stop || true
    die "the nodes did not become idle within 60 s (logs above, all of them in $DIR/log)"
}

stop() {
    local f pid stopped=0
    # slurmd first, then the controller, then munge; only the PIDs this script's daemons wrote.
    for f in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid" "$DIR/run/munged.pid"; do
        [[ -e $f ]] || continue
        if alive "$f"; then
            pid=$(cat "$f")
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            stopped=$((stopped + 1))
        fi
        rm -f "$f"
    done
    echo "cluster.sh: stopped $stopped daemon(s)"
}

status() {
    [[ -e $CONF ]] || { echo "cluster.sh: no cluster in $DIR"; return 1; }
    alive "$DIR/run/slurmctld.pid" || { echo "cluster.sh: slurmctld not running"; return 1; }
    timeout 10 sinfo -N -o "%N %P %t %c %m %G %f"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF PATH=$DIR/bin:\$PATH" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
