#!/usr/bin/env bash
# Every GPU row of the benchmarks in one run (< 8 minutes on one GPU): one table, one JSON.
#   bash scripts/bench/gpu_check.sh [--out gpu_check.json] [--dry-run] [--rows models,mfu,...]
# See scripts/bench/gpu_check.py for the rows; a row whose prerequisite is missing is skipped
# with a line saying why.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec timeout 480 python "$root/scripts/bench/gpu_check.py" "$@"
