#!/usr/bin/env bash
# Install the Debian packages the Slurm tests need (slurmctld, slurmd, client tools, munge). Idempotent and quick
# when they are there. Called by .ci/run; never fails the CI run by itself: when it cannot install (not root, no
# apt-get, no network), the Slurm tests skip and say why.
set -uo pipefail
need=(slurmctld slurmd sinfo munged)
missing=0
for tool in "${need[@]}"; do command -v "$tool" >/dev/null || missing=1; done
if [[ $missing -eq 0 ]]; then
    echo "slurm: installed ($(slurmd -V 2>/dev/null))"
    exit 0
fi
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "slurm: not installed and cannot install (needs root and apt-get); the Slurm tests will skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq >/tmp/agenttune-slurm-apt.log 2>&1 &&
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge \
        >>/tmp/agenttune-slurm-apt.log 2>&1; then
    echo "slurm: installed ($(slurmd -V 2>/dev/null))"
else
    echo "slurm: apt-get failed (see /tmp/agenttune-slurm-apt.log); the Slurm tests will skip"
fi
exit 0
