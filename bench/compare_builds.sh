#!/usr/bin/env bash
# Two builds side by side on the full-size random SD 1.5 model: the UNet forward (bench_unet,
# batch 2, 32x32 and 64x64 latents) and the SVDiff training step (bench_train_step, batch 1,
# trainN: N x N latents, e.g. train32, train64), in fp32 and bf16 compute. The builds alternate case by case, one process per
# run, so the machine's noise falls on both; prints a table of medians (over --rounds processes,
# each itself the median of its --reps) with the ratio new/old and the peak RSS of each.
# For a refactoring that must not lose speed (issue 18), or a change that must gain some.
#
#   bench/compare_builds.sh OLD_BUILD_DIR NEW_BUILD_DIR [--rounds N (default 3)] [--reps N (default 2)]
#       [--threads N] [--compute "fp32 bf16"] [--cases "fwd32 fwd64 train32"]
#
# Environment: SVDIFF_BENCH_CACHE (default bench/out) holds the random model (made on first use)
# and the SVD cache (the first training run computes it: minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(readlink -f "$1") new=$(readlink -f "$2")
shift 2
rounds=3 reps=2 threads=$(nproc) computes="fp32 bf16" cases="fwd32 fwd64 train32"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --reps) reps=$2; shift ;;
    --threads) threads=$2; shift ;;
    --compute) computes=$2; shift ;;
    --cases) cases=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_builds.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for b in "$old" "$new"; do
  for x in bench_unet bench_train_step; do
    [ -x "$b/$x" ] || { echo "compare_builds.sh: $b/$x missing (scripts/build.sh release)" >&2; exit 2; }
  done
done
SVDIFF_BUILD_DIR=$new . bench/common.sh
SVDIFF_BUILD_DIR=$new bench_prepare_sd15
svd="$cache/svd-cache"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
  "flags: $(grep -o -w -e amx_bf16 -e avx512_bf16 /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2

one() {   # one WHICH BUILD COMPUTE CASE: runs one process, appends "which compute case seconds rss"
  local which=$1 b=$2 compute=$3 case=$4 line
  if [ "${case#train}" != "$case" ]; then
    line=$(SVDIFF_COMPUTE=$compute "$b/bench_train_step" --model "$model" --hw "${case#train}" --reps "$reps" \
      --threads "$threads" --svd-cache "$svd" | grep '^RESULT')
  else
    line=$(SVDIFF_COMPUTE=$compute "$b/bench_unet" --model "$model" --case "$case" --reps "$reps" \
      --reps64 "$reps" --threads "$threads" | grep '^RESULT')
  fi
  local s rss
  s=$(sed -E 's/.* median_s=([0-9.]+).*/\1/' <<<"$line")
  rss=$(sed -E 's/.* peak_rss_mb=([0-9.]+).*/\1/' <<<"$line")
  echo "$which $compute $case $s $rss" >>"$results"
  echo "[$(date +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)] $which $compute $case: $s s, $rss MB" >&2
}
for r in $(seq "$rounds"); do
  for compute in $computes; do
    for case in $cases; do
      # alternate which build goes first, so that neither always runs on a warmer machine
      if [ $((r % 2)) = 1 ]; then one old "$old" "$compute" "$case"; one new "$new" "$compute" "$case"
      else one new "$new" "$compute" "$case"; one old "$old" "$compute" "$case"; fi
    done
  done
done
/usr/bin/python3 - "$results" "$old" "$new" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"old: {sys.argv[2]}\nnew: {sys.argv[3]}\n")
print("| compute | case | old median s | new median s | new/old | old peak RSS MB | new peak RSS MB |")
print("|---|---|---|---|---|---|---|")
keys = []
for w, c, k, s, m in rows:
    if (c, k) not in keys: keys.append((c, k))
for c, k in keys:
    t = {w: [float(s) for w2, c2, k2, s, m in rows if (w2, c2, k2) == (w, c, k)] for w in ("old", "new")}
    r = {w: max(float(m) for w2, c2, k2, s, m in rows if (w2, c2, k2) == (w, c, k)) for w in ("old", "new")}
    mo, mn = statistics.median(t["old"]), statistics.median(t["new"])
    print(f"| {c} | {k} | {mo:.3f} | {mn:.3f} | {mn / mo:.3f} | {r['old']:.0f} | {r['new']:.0f} |")
PY
