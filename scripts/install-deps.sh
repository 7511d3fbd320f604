#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages svdiff needs to build and test (only the missing ones).
# Usage: scripts/install-deps.sh [--reference]   (--reference adds PyTorch for tests/reference/ and the
# benchmarks' PyTorch sides, and perf for bench/profile_step.sh)
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenblas-dev libopenblas0-openmp liblapacke-dev
      libcjson-dev libcmocka-dev libpng-dev libjpeg-dev libzip-dev openmpi-bin libopenmpi-dev
      clang libfuzzer-14-dev libomp-14-dev)   # the libFuzzer harnesses (scripts/fuzz.sh)
pkgs+=(python3 python3-pip python3-numpy)   # the Python bindings' tests (python/; numpy optional)
if [ "${1:-}" = "--reference" ]; then pkgs+=(python3-torch python3-numpy python3-regex); fi
if [ "${1:-}" = "--reference" ]; then pkgs+=(linux-perf); fi   # bench/profile_step.sh
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
