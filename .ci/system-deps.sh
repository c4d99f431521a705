#!/usr/bin/env bash
# System packages the tests use as users meet them (Debian, as root): a real one-node SLURM (the tests
# start and stop their own private cluster) and headless Chromium (the workflow report is rendered).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
bash "$(dirname "$0")/slurm-setup.sh"
if ! command -v chromium >/dev/null 2>&1; then
    echo "system-deps: installing chromium"
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q chromium >/dev/null; }
fi
