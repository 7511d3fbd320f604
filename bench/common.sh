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

# bench_prepare_sdxl: sets cache, build (as bench_prepare_sd15) and model: a full-size SDXL base 1.0
# folder with random fp16 weights (`svdiff init --config configs/sdxl-base.json`, seed 0; 6.9 GB on
# disk, made on first use, a few minutes), with the CLIP tokenizer of SVDIFF_TOKENIZER (default
# /work/shared/data/clip-vit-l-14-tokenizer) as tokenizer/ and tokenizer_2/ when that folder exists.
bench_prepare_sdxl() {
  cache="${SVDIFF_BENCH_CACHE:-bench/out}"
  model="$cache/sdxl-random"
  mkdir -p "$cache"
  if [ -n "${SVDIFF_BUILD_DIR:-}" ]; then
    build="$SVDIFF_BUILD_DIR"
  else
    scripts/install-deps.sh
    scripts/build.sh release >/dev/null
    build=build
  fi
  if [ ! -f "$model/model_index.json" ] || [ ! -f "$model/unet/diffusion_pytorch_model.safetensors" ]; then
    local tok="${SVDIFF_TOKENIZER:-/work/shared/data/clip-vit-l-14-tokenizer}" free_gb
    free_gb=$(df -Pk "$cache" | awk 'NR == 2 {printf "%d", $4 / 1048576}')
    if [ "$free_gb" -lt 12 ]; then
      echo "bench_prepare_sdxl: $cache has $free_gb GB free; the random SDXL model needs 7 GB (and its SVD cache 15 GB more)" >&2
      return 1
    fi
    echo "making the random SDXL base 1.0 model in $model (fp16, 6.9 GB; minutes)..." >&2
    rm -rf "$model.tmp"
    "$build/svdiff" init --config configs/sdxl-base.json --dtype fp16 $([ -f "$tok/vocab.json" ] && echo --tokenizer "$tok") \
      -o "$model.tmp" >&2
    mv "$model.tmp" "$model"
  fi
}
