#!/usr/bin/env bash
# Builds the release configuration and runs the operator micro-benchmark (bench/micro.c).
# Extra arguments go to the benchmark, e.g. bench/run_micro.sh --reps 9 --threads 2
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release >/dev/null
exec build/bench_micro "$@"
