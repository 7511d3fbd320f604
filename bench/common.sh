# Shared set-up of the bench/run_*.sh scripts (sourced, not run).

# bench_openblas_coretype: give PyTorch's OpenBLAS the kernels svdiff picks
# (src/base/runtime.h); Debian's OpenBLAS otherwise falls back to generic ones on recent Xeons.
bench_openblas_coretype() {
  if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512_bf16 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Cooperlake
    elif grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
  fi
}

# bench_prepare_sd15: sets cache (SVDIFF_BENCH_CACHE or bench/out), model (the random SD 1.5
# folder, made on first use) and build (SVDIFF_BUILD_DIR, or a fresh release build in build/).
bench_prepare_sd15() {
  cache="${SVDIFF_BENCH_CACHE:-bench/out}"
  model="$cache/sd15-random"
  mkdir -p "$cache"
  if [ ! -f "$model/model_index.json" ] || [ ! -f "$model/unet/diffusion_pytorch_model.safetensors" ]; then
    echo "making the random SD 1.5 model in $model (about a minute)..." >&2
    /usr/bin/python3 bench/make_random_sd15.py --out "$model" >&2
  fi
  if [ -n "${SVDIFF_BUILD_DIR:-}" ]; then
    build="$SVDIFF_BUILD_DIR"
  else
    scripts/install-deps.sh
    scripts/build.sh release >/dev/null
    build=build
  fi
}

# bench_torch_available: 0 when Debian's python3-torch can be imported, else says why not.
bench_torch_available() {
  /usr/bin/python3 -c "import torch" 2>/dev/null && return 0
  echo "(PyTorch side skipped: install python3-torch with scripts/install-deps.sh --reference)" >&2
  return 1
}
