#!/usr/bin/env bash
# The minutes that 500 training steps at 512 px take: runs the real `svdiff train` (spectral
# shifts, batch 1, no prior preservation) on the random full-size SD 1.5 (bench/common.sh makes it)
# at --resolution 512 for a few steps, with its progress output time-stamped, and extrapolates 500
# steps from the median step. Prints the measured set-up (model open, SVD-cache load or SVD,
# instance images encoded), the SVD-cache load alone, the steps, the time after the last step
# (saving the shifts) and the total, per compute dtype, and RESULT lines (case=train500).
#
#   bench/run_train_500.sh [--steps N (measured, default 5)] [--target N (extrapolated, default 500)]
#       [--compute "fp32 bf16" (default both)] [--resolution PX (default 512)] [--threads N]
#       [-- EXTRA svdiff train ARGS (e.g. --gradient-checkpointing)]
#
# Per-step times are the differences of loss.csv's seconds column (the trainer's clock). The
# instance image is one random 512 px PNG made here: the trainer encodes an image with the VAE the
# first time a step draws it (then keeps its latent), so the first step holds that encode and the
# first touch of activations and scratch; it is given apart, and 500 steps = set-up + first step
# + 499 x the median of steps 2..N + the time after the last step. (Each further instance image
# adds one encode, about the first step minus the median.) The SVD cache is $SVDIFF_BENCH_CACHE/svd-cache,
# the one bench_train_step uses (the first run on a machine computes it: minutes).
# Environment: as bench/run_train_step.sh (SVDIFF_BENCH_CACHE, SVDIFF_BUILD_DIR,
# SVDIFF_BENCH_RESULTS: the RESULT lines are appended there).
set -euo pipefail
cd "$(dirname "$0")/.."

steps=5 target=500 computes="fp32 bf16" res=512 threads=$(nproc) extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift ;;
    --target) target=$2; shift ;;
    --compute) computes=$2; shift ;;
    --resolution) res=$2; shift ;;
    --threads) threads=$2; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_train_500.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$steps" -ge 1 ] 2>/dev/null || { echo "run_train_500.sh: --steps must be >= 1, not $steps" >&2; exit 2; }

. bench/common.sh
bench_prepare_sd15
bench_openblas_coretype
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
run="$cache/train500-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run/images"
load() { cut -d' ' -f1 /proc/loadavg; }
# the instance image: a smooth random colour field, PNG written with zlib only (no imaging library)
/usr/bin/python3 - "$run/images" "$res" <<'EOF'
import random, struct, sys, zlib
out, size = sys.argv[1], int(sys.argv[2])
for k in range(1):
    r = random.Random(k)
    c = [[r.randrange(256) for _ in range(3)] for _ in range(4)]
    rows = []
    for y in range(size):
        v = y / (size - 1)
        row = bytearray([0])
        for x in range(size):
            u = x / (size - 1)
            row += bytes(int((1 - u) * (1 - v) * c[0][i] + u * (1 - v) * c[1][i] + (1 - u) * v * c[2][i] + u * v * c[3][i])
                         for i in range(3))
        rows.append(bytes(row))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    with open(f"{out}/subject-{k}.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
EOF
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores); logs in $run" >&2

for compute in $computes; do
  out="$run/out-$compute"
  echo "[$(date +%H:%M:%S) load $(load)] svdiff train, $res px, $steps steps, $compute" >&2
  t0=$EPOCHREALTIME
  rc=0
  # each progress line gets a timestamp (the bar prints one line per update when not on a terminal)
  /usr/bin/time -v -o "$run/time-$compute.txt" "$build/svdiff" train --model "$model" --instance-dir "$run/images" \
    --instance-prompt "a photo of sks thing" --resolution "$res" --steps "$steps" --threads "$threads" \
    --compute-dtype "$compute" --svd-cache "$cache/svd-cache" -o "$out" "${extra[@]}" 2>&1 >/dev/null |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$run/progress-$compute.log" || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" != 0 ] || [ ! -f "$out/loss.csv" ]; then
    echo "  svdiff train ($compute) failed: see $run/progress-$compute.log" >&2
    tail -3 "$run/progress-$compute.log" >&2
    continue
  fi
  /usr/bin/python3 - "$t0" "$t1" "$out/loss.csv" "$run/progress-$compute.log" "$run/time-$compute.txt" "$compute" \
    "$res" "$steps" "$target" "$(load)" "$threads" <<'EOF' | tee -a "$run/results.txt" | tee -a "${SVDIFF_BENCH_RESULTS:-/dev/null}"
import re, statistics, sys
t0, t1, csv, log, timef, compute, res, steps, target, load, threads = sys.argv[1:12]
t0, t1, target = float(t0), float(t1), int(target)
secs = [float(l.split(",")[-1]) for l in open(csv).read().splitlines()[1:] if l.strip()]
per = [b - a for a, b in zip([0.0] + secs, secs)]
first, rest = per[0], (per[1:] if len(per) >= 2 else per)
med = statistics.median(rest)
svd_load, svd_how, done_at = None, "", None
for line in open(log):
    ts, _, text = line.partition(" ")
    m = re.search(r"unet svd: (\d+) matrices, (\d+) from the SVD cache, (\d+) computed, ([0-9.]+) s", text)
    if m:
        svd_load, svd_how = float(m.group(4)), f"{m.group(2)} loaded, {m.group(3)} computed"
    if text.startswith("train done"):
        done_at = float(ts)
total = t1 - t0
train_s = secs[-1]   # the trainer's clock, from the start of its loop to the last step
setup = (done_at - t0 - train_s) if done_at else (total - train_s)
post = (t1 - done_at) if done_at else 0.0
rss = 0
for line in open(timef):
    if "Maximum resident set size" in line:
        rss = int(line.split(":")[1]) / 1024
est = setup + first + (target - 1) * med + post
print(f"RESULT side=svdiff compute={compute} case=train{target} res={res} steps={len(secs)} threads={threads} "
      f"first_step_s={first:.2f} median_step_s={med:.2f} times={','.join(f'{p:.3f}' for p in per)} setup_s={setup:.1f} "
      f"svd_load_s={svd_load if svd_load is not None else -1:.1f} post_s={post:.1f} total_s={total:.1f} "
      f"est_s={est:.0f} est_min={est / 60:.1f} peak_rss_mb={rss:.0f} load={load}")
how = f"median of steps 2-{len(secs)}" if len(per) >= 2 else "(one step only)"
print(f"  {compute}: {len(secs)} steps at {res} px: first {first:.2f} s, {how} {med:.2f} s; set-up "
      f"{setup:.1f} s (SVD cache: {svd_load if svd_load is not None else '?'} s, {svd_how}), after the last step "
      f"{post:.1f} s, total {total:.1f} s, peak RSS {rss:.0f} MB -> {target} steps: {setup:.0f} + {first:.0f} + "
      f"{target - 1} x {med:.2f} + {post:.0f} s = {est / 60:.1f} min", file=sys.stderr)
EOF
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
