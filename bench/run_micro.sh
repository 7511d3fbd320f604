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
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  # Give PyTorch's OpenBLAS the same kernels svdiff picks (src/base/runtime.h); Debian's
  # OpenBLAS otherwise falls back to generic kernels on recent Xeons.
  if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512_bf16 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Cooperlake
    elif grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
  fi
  /usr/bin/python3 bench/micro_torch.py "$@"
else
  echo "(PyTorch side skipped: install python3-torch with scripts/install-deps.sh --reference)"
fi
