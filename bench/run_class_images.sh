#!/usr/bin/env bash
# Class images for prior preservation (`svdiff train --num-class-images`): images per minute at
# 512 px on the random full-size SD 1.5 (random weights draw noise: the timing is that of real
# images), old default (DDIM, 50 steps, one image at a time) against the new one (DPM++ 2M, 25
# steps, --batch images through the UNet together), one process, alternating (bench/class_images.c).
# Each config is timed at 1 and 2 steps and extrapolated to its full step count (--full times the
# full counts: about 10 min an image on 2 cores); prints the medians, the ratio and peak RSS.
#
#   bench/run_class_images.sh [--rounds R (default 1)] [--batch B (default 4)] [--res N (512)]
#                             [--threads N] [--full]
#
# Environment: SVDIFF_BENCH_CACHE (default bench/out) holds the random model (made on first use);
# SVDIFF_BUILD_DIR uses an existing build instead of scripts/build.sh release.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=1 batch=4 res=512 threads=$(nproc) extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --batch) batch=$2; shift ;;
    --res) res=$2; shift ;;
    --threads) threads=$2; shift ;;
    --full) extra+=(--full) ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_class_images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
. bench/common.sh
bench_prepare_sd15
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$build/bench_class_images" --model "$model" --res "$res" --batch "$batch" --rounds "$rounds" --threads "$threads" \
  "${extra[@]}" 2>/dev/null | tee "$log"
echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 - "$log" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    if line.startswith("RESULT"):
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        rows.setdefault(kv["config"], []).append(kv)
med = {c: {k: statistics.median(float(r[k]) for r in rs) for k in ("images_per_min", "per_step_s", "fixed_s", "peak_rss_mb")}
       for c, rs in rows.items()}
print("| config | images/min (median) | s/step | fixed s | peak RSS MB | rounds |")
print("|---|---|---|---|---|---|")
for c in ("old", "new"):
    if c in rows:
        r, m = rows[c][0], med[c]
        print(f"| {c}: {r['sampler']} {r['steps']} steps, batch {r['batch']} | {m['images_per_min']:.3f} | "
              f"{m['per_step_s']:.2f} | {m['fixed_s']:.1f} | {m['peak_rss_mb']:.0f} | {len(rows[c])} |")
if "old" in med and "new" in med:
    print(f"new/old images per minute: {med['new']['images_per_min'] / med['old']['images_per_min']:.2f}x")
PY
