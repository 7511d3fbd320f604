#!/usr/bin/env bash
# One-time SVD of the SD 1.5 UNet: svdiff (bench/svd.c: weight_make_spectral_many, the layers in
# parallel with one single-threaded SVD each, as the trainer's SVD runs) side by side with PyTorch's torch.linalg.svd (bench/svd_torch.py)
# on the same matrices of the random-weight model, one process per side and round, alternating
# which side goes first. Prints each total, the medians and the ratio svdiff / PyTorch, with the
# load averages at start and end, and RESULT lines (case=svd, side=svdiff / torch, median_s,
# times) that bench/run_all.sh puts in its table.
#
#   bench/run_svd.sh [--largest N] [--smallest M] [--match TEXT] [--rounds R (default 1)]
#                    [--threads N (default: all cores)] [--no-torch]
#
# Default: every UNet conv / linear (282 matrices, about 3 minutes a side on 2 cores). A quick
# representative subset: --largest 20 --smallest 30. Environment as bench/run_unet.sh
# (SVDIFF_BENCH_CACHE, SVDIFF_BUILD_DIR, SVDIFF_BENCH_RESULTS: the RESULT lines are appended there).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

sel=() rounds=1 threads=$(nproc) torch=1
while [ $# -gt 0 ]; do
  case "$1" in
    --largest|--smallest|--match) sel+=("$1" "$2"); shift ;;
    --rounds) rounds=$2; shift ;;
    --threads) threads=$2; shift ;;
    --no-torch) torch=0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_svd.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
bench_openblas_coretype
bench_prepare_sd15
if [ "$torch" = 1 ] && ! bench_torch_available; then torch=0; fi
log="$cache/svd-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$log"
load() { cut -d' ' -f1 /proc/loadavg; }
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load at start: $load_start; logs in $log" >&2

total() { sed -n 's/^RESULT .*total_s=\([0-9.]*\).*/\1/p' "$1"; }
svdiff_side() {
  "$build/bench_svd" --model "$model" --threads "$threads" "${sel[@]}" >"$log/svdiff.$r"
  echo "[$(date +%H:%M:%S) load $(load)] round $r: svdiff $(total "$log/svdiff.$r") s" >&2
  total "$log/svdiff.$r" >>"$log/svdiff.t"
  grep '^MAT ' "$log/svdiff.$r" | awk '{print $2}' >"$log/names"
}
torch_side() {
  [ "$torch" = 1 ] || return 0
  /usr/bin/python3 bench/svd_torch.py --model "$model" --names "$log/names" --threads "$threads" >"$log/torch.$r"
  echo "[$(date +%H:%M:%S) load $(load)] round $r: torch $(total "$log/torch.$r") s" >&2
  total "$log/torch.$r" >>"$log/torch.t"
}
: >"$log/svdiff.t"; : >"$log/torch.t"
for r in $(seq "$rounds"); do   # svdiff first in odd rounds (it writes the list of names PyTorch reads)
  if [ $((r % 2)) = 1 ] || [ ! -s "$log/names" ]; then svdiff_side; torch_side; else torch_side; svdiff_side; fi
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load at end: $load_end" >&2
/usr/bin/python3 - "$log" "$torch" "$threads" "$load_start" "$load_end" "$(load)" <<'PY' | tee "$log/summary.txt"
import statistics, sys
log, torch, threads, l0, l1, load = sys.argv[1:7]
def times(side):
    return [float(x) for x in open(f"{log}/{side}.t").read().split()]
n = len(open(f"{log}/names").read().split())
s = times("svdiff")
t = times("torch") if torch == "1" else []
ms = statistics.median(s)
print(f"One-time SVD of {n} SD 1.5 UNet matrices, {threads} threads, load {l0} at start, {l1} at end:")
print(f"svdiff (the trainer's SVD, bench_svd): {', '.join(f'{x:.1f}' for x in s)} s, median {ms:.1f} s")
if t:
    mt = statistics.median(t)
    print(f"PyTorch torch.linalg.svd: {', '.join(f'{x:.1f}' for x in t)} s, median {mt:.1f} s; svdiff / PyTorch {ms / mt:.3f}")
for side, v in (("svdiff", s), ("torch", t)):
    if v:
        print(f"RESULT side={side} case=svd matrices={n} median_s={statistics.median(v):.3f} "
              f"times={','.join(f'{x:.3f}' for x in v)} threads={threads} load={load}")
PY
if [ -n "${SVDIFF_BENCH_RESULTS:-}" ]; then grep '^RESULT' "$log/summary.txt" >>"$SVDIFF_BENCH_RESULTS"; fi
exit 0
