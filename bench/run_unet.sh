#!/usr/bin/env bash
# Full-size UNet benchmark, svdiff (bench/unet.c) side by side with PyTorch (bench/unet_torch.py)
# on a random-weight SD 1.5 model (fp16, diffusers layout; made by bench/make_random_sd15.py into
# the cache folder when missing), then optionally one training step and `svdiff generate` at
# 512x512. The two sides alternate, one process per case each (so each peak RSS is that case's),
# and share whatever else the machine is doing: the load averages at start and end are printed.
#
#   bench/run_unet.sh [--reps N (32x32, default 3)] [--reps64 N (default 1)] [--rounds R (default 1)]
#                     [--threads N] [--no-torch] [--train] [--generate] [--gen-steps N (default 20)]
#                     [--passive (OMP_WAIT_POLICY=passive for both sides)]
#                     [--cases "fwd32 fwd64" (default; "none": only --train / --generate)]
#                     [--compute-dtype fp32|bf16 (svdiff side: SVDIFF_COMPUTE; RESULT lines get compute=)]
#
# Environment: SVDIFF_BENCH_CACHE (default bench/out, git-ignored) holds the model and the logs;
# SVDIFF_BUILD_DIR uses an existing build there instead of scripts/build.sh release (build/).
# --gen-steps below 20 extrapolates a 20-step run from the measured per-step and fixed times.
# SVDIFF_BENCH_RESULTS=FILE also appends the RESULT lines there (bench/run_all.sh collects them).
set -euo pipefail
cd "$(dirname "$0")/.."

reps=3 reps64=1 rounds=1 threads=$(nproc) torch=1 train=0 gen=0 gen_steps=20 cases="fwd32 fwd64" compute=fp32
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift ;;
    --reps64) reps64=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --threads) threads=$2; shift ;;
    --no-torch) torch=0 ;;
    --train) train=1 ;;
    --generate) gen=1 ;;
    --gen-steps) gen_steps=$2; shift ;;
    --passive) export OMP_WAIT_POLICY=passive ;;   # libgomp threads sleep instead of spinning
    --cases) cases=$2; [ "$cases" = none ] && cases=""; shift ;;
    --compute-dtype) compute=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_unet.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

. bench/common.sh
bench_prepare_sd15
if [ "$torch" = 1 ] && ! bench_torch_available; then torch=0; fi
bench_openblas_coretype

run="$cache/unet-run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run"
results="$run/results.txt"
: >"$results"
load() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(load)
echo "load average at start: $load_start ($(nproc) cores), OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}; logs in $run" >&2

side() {   # side NAME LOG cmd...: runs one benchmark process, keeps its RESULT lines
  local name=$1 log=$2
  shift 2
  echo "[$(date +%H:%M:%S) load $(load)] $name: $*" >&2
  if "$@" >"$log" 2>&1; then
    grep '^RESULT' "$log" | sed "s/\$/ load=$(load | cut -d' ' -f1)/; s/side=svdiff /side=svdiff compute=$compute /" |
      tee -a "${SVDIFF_BENCH_RESULTS:-/dev/null}" >>"$results"
  else
    echo "  failed (see $log):" >&2
    tail -5 "$log" >&2
  fi
}

for case in $cases; do
  for r in $(seq "$rounds"); do
    save=() check=()
    if [ "$case" = fwd32 ]; then save=(--save "$run/fwd32-io.safetensors"); check=(--check "$run/fwd32-io.safetensors"); fi
    side "svdiff $case round $r ($compute)" "$run/svdiff-$case-$r.log" env SVDIFF_COMPUTE="$compute" \
      "$build/bench_unet" --model "$model" --case "$case" \
      --reps "$reps" --reps64 "$reps64" --threads "$threads" "${save[@]}"
    if [ "$torch" = 1 ]; then
      side "torch $case round $r" "$run/torch-$case-$r.log" /usr/bin/python3 bench/unet_torch.py --model "$model" \
        --case "$case" --reps "$reps" --reps64 "$reps64" --threads "$threads" "${check[@]}"
    fi
  done
done

if [ "$train" = 1 ]; then   # svdiff only: SVD of every layer (minutes), then forward + backward
  side "svdiff train32" "$run/svdiff-train32.log" env SVDIFF_COMPUTE="$compute" "$build/bench_unet" --model "$model" \
    --case train32 --threads "$threads"
fi

if [ "$gen" = 1 ]; then
  # Each stderr line (one per step from the progress bar, then "wrote") gets a timestamp, so the
  # per-step time and the fixed part (load, text encoder, VAE decode, PNG) come out separately.
  echo "[$(date +%H:%M:%S) load $(load)] svdiff generate 512x512, $gen_steps steps, ddim, cfg 7.5" >&2
  t0=$EPOCHREALTIME
  set +e
  /usr/bin/time -v -o "$run/generate-time.txt" "$build/svdiff" generate --model "$model" \
    --prompt "a photograph of an astronaut riding a horse" --steps "$gen_steps" --sampler ddim --cfg 7.5 \
    --width 512 --height 512 --seed 1 --threads "$threads" --compute-dtype "$compute" -o "$run/generate.png" 2>&1 >/dev/null |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$run/generate.log"
  set -e
  /usr/bin/python3 - "$t0" "$run/generate.log" "$run/generate-time.txt" "$gen_steps" "$(load | cut -d' ' -f1)" \
    "$compute" <<'EOF' | tee -a "${SVDIFF_BENCH_RESULTS:-/dev/null}" >>"$results"
import re, sys
t0, log, timef, steps, load = float(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
compute = sys.argv[6]
step_t, wrote, done = {}, None, None
for line in open(log):
    ts, _, text = line.rstrip("\n").partition(" ")
    m = re.match(r"generate\s+\d+% (\d+)/(\d+)", text)
    if m:  # without a tty the bar prints at each tenth and every 5 s: first sighting of each step
        step_t.setdefault(int(m.group(1)), float(ts))
    elif text.startswith("wrote "):
        wrote = float(ts)
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(timef).read())
ok = rss and wrote and steps in step_t and "Exit status: 0" in open(timef).read()
if not ok:
    print(f"generate failed: see {log}", file=sys.stderr)
    sys.exit(0)
k0 = min(step_t)   # mean step time after the first printed step (which also holds the set-up)
per_step = (step_t[steps] - step_t[k0]) / (steps - k0) if steps > k0 else step_t[steps] - t0
before = step_t[k0] - t0 - k0 * per_step    # process start, load, tokenizer, text encoder
after = wrote - step_t[steps]               # VAE decode, PNG write
total = wrote - t0
est20 = before + 20 * per_step + after
print(f"RESULT side=svdiff compute={compute} case=generate512 steps={steps} total_s={total:.1f} per_step_s={per_step:.2f} "
      f"before_s={before:.1f} decode_s={after:.1f} est20_s={est20:.1f} peak_rss_mb={int(rss.group(1)) / 1024:.0f} "
      f"load={load}")
EOF
fi

load_end=$(load)
/usr/bin/python3 - "$results" "$load_start" "$load_end" "$(nproc)" <<'EOF'
import statistics, sys
path, load0, load1, ncpu = sys.argv[1:5]
rows = {}
for line in open(path):
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    rows.setdefault((kv["case"], kv["side"]), []).append(kv)

def agg(case, side):
    rs = rows.get((case, side))
    if not rs:
        return None
    times = [float(t) for r in rs for t in r.get("times", r.get("median_s", "")).split(",") if t]
    return dict(rs[-1], med=statistics.median(times), n=len(times),
                rss=max(float(r["peak_rss_mb"]) for r in rs))

print(f"\nUNet benchmark, random SD 1.5 weights (fp16 file; svdiff keeps fp16 and converts per layer, "
      f"torch holds fp32). Load average at start {load0}, at end {load1} on {ncpu} cores: the machine is "
      f"shared, times are noisy; the sides alternate to share the noise.\n")
print("| case | svdiff s | torch s | torch/svdiff | svdiff peak RSS MB | torch peak RSS MB | svdiff GFLOP/s | "
      "torch GFLOP/s | sgemm GFLOP/s (svdiff / torch) |")
print("|---|---|---|---|---|---|---|---|---|")
for case, label in (("fwd32", "forward 32x32, batch 2"), ("fwd64", "forward 64x64, batch 2")):
    s, t = agg(case, "svdiff"), agg(case, "torch")
    if not s and not t:
        continue
    gflop = float((s or t)["gflop"])
    f = lambda a, k, fmt: fmt.format(a[k]) if a else "-"
    ratio = f"{t['med'] / s['med']:.2f}" if s and t else "-"
    rate = lambda a: f"{gflop / a['med']:.1f}" if a else "-"
    print(f"| {label} (n={s['n'] if s else 0}/{t['n'] if t else 0}) | {f(s, 'med', '{:.2f}')} | {f(t, 'med', '{:.2f}')} | "
          f"{ratio} | {f(s, 'rss', '{:.0f}')} | {f(t, 'rss', '{:.0f}')} | "
          f"{rate(s)} | {rate(t)} | "
          f"{s['sgemm_gflops'] if s else '-'} / {t['sgemm_gflops'] if t else '-'} |")
s = agg("train32", "svdiff")
if s:
    print(f"| training step 32x32, batch 1, all layers spectral: fwd {float(s['fwd_s']):.2f} + bwd "
          f"{float(s['bwd_s']):.2f} (SVD {s['svd_s']} s once) | {s['med']:.2f} | - | - | {s['rss']:.0f} | - | - | - | "
          f"{s['sgemm_gflops']} / - |")
g = rows.get(("generate512", "svdiff"))
if g:
    g = g[-1]
    est = "" if g["steps"] == "20" else f", 20 steps extrapolated: {g['est20_s']} s"
    print(f"| svdiff generate 512x512, ddim, cfg 7.5, {g['steps']} steps: {g['per_step_s']} s/step, "
          f"before sampling {g['before_s']} s, VAE decode + PNG {g['decode_s']} s{est} | {g['total_s']} | - | - | "
          f"{g['peak_rss_mb']} | - | - | - | - |")
print(f"\nGFLOP per sample (counted from the config by bench_unet; matches docs/stable-diffusion.md): "
      f"180.1 at 32x32, 803.3 at 64x64; batch 2 doubles them. torch/svdiff > 1: svdiff is faster.")
print(f"RESULT lines: {path}")
EOF
