#!/usr/bin/env bash
# Builds the release configuration and runs the operator micro-benchmark (bench/micro.c),
# then the same operations in PyTorch CPU (bench/micro_torch.py) when Debian's python3-torch
# is installed (scripts/install-deps.sh --reference). Extra arguments go to both,
# e.g. bench/run_micro.sh --reps 9 --threads 2
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release >/dev/null
build/bench_micro "$@"
echo
. bench/common.sh
if bench_torch_available; then
  bench_openblas_coretype
  /usr/bin/python3 bench/micro_torch.py "$@"
fi
