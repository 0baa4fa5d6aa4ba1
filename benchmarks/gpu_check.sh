#!/usr/bin/env bash
# Device check for a lent GPU machine (it reaches no network): one run under 8 minutes on one
# GPU, one JSON file. See benchmarks/gpu_check.py for what it measures.
#
#   bash benchmarks/gpu_check.sh [OUT.json]
#
# Default output: $OUT/gpu_check.json when $OUT is set (the device tool's folder), else
# benchmarks/results/gpu_check.json. An existing file is never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:+$OUT/gpu_check.json}}"
out="${out:-benchmarks/results/gpu_check.json}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
# The repository's package, whether or not it is installed on this machine.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# 420 s of measurements inside 450 s, whatever happens: well under 8 minutes.
timeout --kill-after=10 450 python benchmarks/gpu_check.py --out "$out" --budget 420 --workdir "${TMPDIR:-/tmp}/ovs3d_gpu_check"
