#!/usr/bin/env bash
# Data parallelism over MPI on this machine (issue 21; README "Many machines"):
#  1. training-step throughput, 1 rank x 2 threads against 2 ranks x 1 thread, for the default
#     model (models/emoji-32, 32 px; STEPS steps) and the tiny test model (16 px, 20 x STEPS steps):
#     the same 2 samples per step
#     (1 process: --grad-accum 2; 2 ranks: 1 micro-batch each), median s/step of ROUNDS runs;
#  2. the gradient exchange per step (bench_dist_reduce): SD 1.5's shift gradient (322,856 floats,
#     1.29 MB: every conv / linear's min(out, in*k*k) singular values plus the norm gains) and the
#     default model's (17,310 floats), 2 ranks, exact path (allgather + ordered sum) and allreduce.
# Usage: bench/run_mpi.sh [STEPS (20)] [ROUNDS (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20} rounds=${2:-3}
build=${SVDIFF_BUILD_DIR:-build}
[ -n "${SVDIFF_BUILD_DIR:-}" ] || scripts/build.sh release svdiff bench_dist_reduce >/dev/null
"$build/svdiff" --version | grep -q "^MPI: .*MPI" || { echo "svdiff is built without MPI" >&2; exit 1; }
mpi=(mpirun --oversubscribe -np)
[ "$(id -u)" = 0 ] && mpi=(mpirun --oversubscribe --allow-run-as-root -np)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# s/step of one run: the summary's "time X s this run" over its steps (more digits than "(X s/step)")
step_time() { echo "scale=5; $(grep -o 'time *[0-9.]* s this run' "$1" | awk '{print $2}') / $2" | bc; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| model | layout | samples/step | s/step (median of $rounds) | samples/s |"
echo "|---|---|---|---|---|"
for m in emoji-32 tiny; do
  if [ $m = emoji-32 ]; then model=models/emoji-32 res=32 n=$steps; else model=tests/fixtures/tiny-sd/diffusers res=16 n=$((steps * 20)); fi
  args=(train --model "$model" --instance-dir tests/fixtures/train/images --instance-prompt "an emoji of sks dog"
        --resolution $res --steps "$n" --svd-cache none --quiet --force)
  for layout in "1x2" "2x1"; do
    for r in $(seq "$rounds"); do
      if [ $layout = 1x2 ]; then
        OMP_NUM_THREADS=2 "$build/svdiff" "${args[@]}" --threads 2 --grad-accum 2 -o "$work/o" > "$work/log" 2>&1
      else
        OMP_NUM_THREADS=1 "${mpi[@]}" 2 -x OMP_NUM_THREADS "$build/svdiff" "${args[@]}" --threads 1 -o "$work/o" > "$work/log" 2>&1
      fi
      step_time "$work/log" "$n"
    done > "$work/times"
    t=$(median < "$work/times")
    label=$([ $layout = 1x2 ] && echo "1 rank x 2 threads" || echo "2 ranks x 1 thread")
    printf '| %s | %s | 2 | %.4f | %.1f |\n' "$m" "$label" "$t" "$(echo "scale=4; 2 / $t" | bc)"
  done
done
echo
for n in 322856 17310; do
  OMP_NUM_THREADS=1 "${mpi[@]}" 2 "$build/bench_dist_reduce" $n 1 200
done
# the ordered sum of 64 gradients (one process: the allgather is a copy), the figure behind
# bench/mpi_scaling.py's --sum-ms
OMP_NUM_THREADS=1 "$build/bench_dist_reduce" 322856 64 30
