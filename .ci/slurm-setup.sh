#!/usr/bin/env bash
# Install what the SLURM tests (tests/test_dispatch.py) need: Debian's slurm-wlm and munge.
#
#   .ci/slurm-setup.sh            # as root (or with passwordless sudo); idempotent, quiet when already installed
#   .ci/slurm-setup.sh --check    # only report; exit 1 if something is missing
#
# It installs packages only. The tests start (and stop) their own private one-node cluster
# (tests/slurm_cluster.py: own munged socket and key, free TCP ports, state in pytest's temp dir), so
# nothing is configured or started here and no system service is touched. Those tests need root.
set -euo pipefail

programs=(munged slurmctld slurmd sbatch squeue sinfo scontrol scancel srun)
missing=()
for p in "${programs[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$p" >/dev/null 2>&1 || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm-setup: SLURM and MUNGE are installed ($(PATH="$PATH:/usr/sbin" slurmctld -V 2>/dev/null || echo '?'))"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "slurm-setup: missing ${missing[*]}; run .ci/slurm-setup.sh (apt-get install -y slurm-wlm munge)" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
else
    echo "slurm-setup: need root to apt-get install slurm-wlm munge (missing: ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "slurm-setup: installing slurm-wlm munge (missing: ${missing[*]})"
if ! "${sudo[@]}" apt-get install -y -q slurm-wlm munge >/dev/null; then
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q slurm-wlm munge >/dev/null
fi
echo "slurm-setup: installed $(PATH="$PATH:/usr/sbin" slurmctld -V)"
