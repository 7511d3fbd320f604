#!/usr/bin/env bash
# Configures and builds svdiff. Usage: scripts/build.sh [release|asan|fuzz] [TARGET...]  (default release,
# every target; e.g. `scripts/build.sh release svdiff` builds only the command-line tool)
# release -> build/ (-O3 -march=native); asan -> build-asan/ (ASan + UBSan, -O1 -g);
# fuzz -> build-fuzz/ (clang, libFuzzer + ASan + UBSan; default target: the fuzz_* harnesses).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-release}"
shift || true
case "$kind" in
  release) dir=build; flags=(-DCMAKE_BUILD_TYPE=Release) ;;
  asan) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DSVDIFF_SANITIZE=ON) ;;
  fuzz) dir=build-fuzz; flags=(-DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo
                               -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DSVDIFF_FUZZ=ON)
        [ $# -eq 0 ] && set -- fuzz ;;
  *) echo "usage: $0 [release|asan|fuzz]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$dir" -j"$(nproc)" "${targets[@]}"
