#!/bin/sh
# Rewrites the golden fixtures (tests/fixtures/*.safetensors) from the PyTorch reference.
# Needs Debian's torch (python3-torch) under /usr/bin/python3; output is byte-for-byte
# deterministic (single-threaded torch, fixed seeds), so a rerun leaves git clean.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${SVDIFF_TORCH_PYTHON:-/usr/bin/python3}
mkdir -p "$root/tests/fixtures"
"$py" "$here/gen_ops_golden.py" --out "$root/tests/fixtures/ops_golden.safetensors"
"$py" "$here/gen_clip_golden.py" --out "$root/tests/fixtures/clip"
