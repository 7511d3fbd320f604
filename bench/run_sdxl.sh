#!/usr/bin/env bash
# SDXL benchmarks (issue 22) on a full-size SDXL base 1.0 UNet with random fp16 weights (made on
# first use by `svdiff init --config configs/sdxl-base.json`, never committed), one process per
# case, never two at once, ending in one markdown table:
#   svd      the one-time SVD of every UNet conv / linear into the SVD cache (bench_train_step
#            --svd-only: unet_make_spectral_stored as `svdiff train` runs it, or in batches with
#            --svd-batch-mb; minutes; later runs load the factors from the cache)
#   fwd64    UNet forward, 64x64 latents (512 px), batch 2 (CFG), 77 context tokens of 2048, pooled
#   fwd128   embedding 1280 and time ids; 128x128 (1024 px) likewise. svdiff (bench_unet) in each
#            --compute dtype against PyTorch CPU fp32 (bench/unet_torch.py: gen_sdxl_golden.SDXLUNet)
#            on the same weights, the sides alternating; at 64x64 PyTorch also runs svdiff's fp32
#            inputs and prints the largest difference of the outputs
#   train64  one SVDiff training step (bench_train_step: every conv / linear spectral from the SVD
#   train128 cache, element norm shifts, batch 1, forward + backward + AdamW) in --train-compute
#            (default bf16: bf16 factors), without and with transformer checkpointing (--train-ckpt;
#            `svdiff train --gradient-checkpointing` is the latter)
#   generate `svdiff generate` 1024x1024 (--gen-size) with the model's defaults (SDXL: euler, cfg 5),
#            --gen-steps steps under /usr/bin/time -v; fewer than 30 steps are extrapolated to 30
#
#   bench/run_sdxl.sh [--cases "svd fwd64 fwd128 train64 train128 generate" (default: all)]
#       [--compute "fp32 bf16" (svdiff forwards)] [--train-compute bf16] [--gen-compute bf16]
#       [--train-ckpt "none transformers"]
#       [--reps N (timed forwards / steps per process, default 1)] [--rounds R (processes per case
#       and side, default 1)] [--start-round N (numbering of the rounds: odd rounds run svdiff first,
#       even ones PyTorch; default 1)] [--warmup N (untimed runs first: 0 or 1 forward,
#       default 1 at 64x64, 0 at 128x128; N training steps, default 0)]
#       [--gen-steps N (default 3)] [--gen-size PX (default 1024)] [--threads N] [--no-torch] [--force-torch]
#       [--svd-batch-mb M (default 0: the trainer's way; M: a cache save after every M MB of fp32
#       factors)] [--table RESULTS.txt (print the table of an earlier run)]
#
# Environment: SVDIFF_BENCH_CACHE (default bench/out, git-ignored) holds the model (6.9 GB), the SVD
# cache (svd-cache/, 14 GB for SDXL, beside SD 1.5's) and the logs; SVDIFF_BUILD_DIR uses an
# existing release build; SVDIFF_TOKENIZER the CLIP tokenizer copied into the model (generate needs
# it). SVDIFF_BENCH_RESULTS=FILE also appends the RESULT lines there (bench/run_all.sh --sdxl).
# The PyTorch side holds the UNet in fp32 (10.3 GB): it is skipped when MemAvailable is under
# 13 GB (64x64) / 16 GB (128x128) unless --force-torch.
set -euo pipefail
cd "$(dirname "$0")/.."

cases="svd fwd64 fwd128 train64 train128 generate" computes="fp32 bf16" train_compute=bf16 gen_compute=bf16
train_ckpt="none transformers"
reps=1 rounds=1 start_round=1 warmup="" gen_steps=3 gen_size=1024 threads=$(nproc) torch=1 force=0 svd_batch=0 table=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases=$2; shift ;;
    --compute) computes=$2; shift ;;
    --train-compute) train_compute=$2; shift ;;
    --gen-compute) gen_compute=$2; shift ;;
    --train-ckpt) train_ckpt=$2; shift ;;
    --reps) reps=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --start-round) start_round=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --gen-steps) gen_steps=$2; shift ;;
    --gen-size) gen_size=$2; shift ;;
    --threads) threads=$2; shift ;;
    --no-torch) torch=0 ;;
    --force-torch) force=1 ;;
    --svd-batch-mb) svd_batch=$2; shift ;;
    --table) table=$2; shift ;;
    -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_sdxl.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

render() {   # render RESULTS.txt: the markdown table
  /usr/bin/python3 - "$1" "$(nproc)" <<'EOF'
import statistics, sys
path, ncpu = sys.argv[1], sys.argv[2]
rows = {}
for line in open(path):
    if not line.startswith("RESULT"):
        continue
    kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    side = kv["side"]
    case = kv["case"] + ("" if kv.get("ckpt", "none") == "none" else "-" + kv["ckpt"])
    key = (case, side, kv.get("compute", "fp32") if side == "svdiff" else "fp32")
    rows.setdefault(key, []).append(kv)

def times(rs):
    return [float(t) for r in rs for t in r.get("times", r.get("median_s", "")).split(",") if t]

def loads(rs):
    ls = sorted(float(r["load"]) for r in rs if r.get("load"))
    return f"{ls[0]:.1f}" if len(ls) == 1 else f"{ls[0]:.1f}-{ls[-1]:.1f}" if ls else "?"

def peak(rs):
    return max(float(r.get("peak_rss_mb", 0)) for r in rs)

print(f"| case | side, compute | s (median) | n | vs PyTorch fp32 | peak RSS MB | GFLOP/s | load (1 min, {ncpu} cores) |")
print("|---|---|---|---|---|---|---|---|")
for case, label in (("fwd64", "UNet forward 64x64 (512 px), batch 2"), ("fwd128", "UNet forward 128x128 (1024 px), batch 2")):
    t = rows.get((case, "torch", "fp32"))
    tmed = statistics.median(times(t)) if t else None
    gflop = None
    for compute in ("fp32", "bf16"):
        s = rows.get((case, "svdiff", compute))
        if s:
            gflop = float(s[-1]["gflop"])
    for side, compute in (("svdiff", "fp32"), ("svdiff", "bf16"), ("torch", "fp32")):
        rs = rows.get((case, side, compute))
        if not rs:
            continue
        med = statistics.median(times(rs))
        ratio = f"{med / tmed:.3f}x" if tmed and side == "svdiff" else "-"
        rate = f"{gflop / med:.0f}" if gflop else "-"
        name = "PyTorch" if side == "torch" else "svdiff"
        print(f"| {label} | {name} {compute} | {med:.2f} | {len(times(rs))} | {ratio} | {peak(rs):.0f} | {rate} | {loads(rs)} |")
    if t and any("check_maxabs" in r for r in t):
        r = [r for r in t if "check_maxabs" in r][-1]
        print(f"| {label}: svdiff fp32 vs PyTorch fp32, same inputs | max abs diff {r['check_maxabs']} "
              f"| max rel to max abs {r['check_rel']} | | | | | |")
fl = (rows.get(("flops", "svdiff", "fp32")) or [{}])[-1]
for case, label in (("train64", "SVDiff training step 64x64 (512 px), batch 1"),
                    ("train64-transformers", "SVDiff training step 64x64 (512 px), batch 1, transformer checkpointing"),
                    ("train128", "SVDiff training step 128x128 (1024 px), batch 1"),
                    ("train128-transformers", "SVDiff training step 128x128 (1024 px), batch 1, transformer checkpointing")):
    for compute in ("fp32", "bf16"):
        rs = rows.get((case, "svdiff", compute))
        if not rs:
            continue
        r = rs[-1]
        med = statistics.median(times(rs))
        # dense-equivalent: forward + input gradients = 2 forwards of one sample (frozen weights: no dW)
        hw = "hw" + case[5:].split("-")[0]
        rate = f"{2 * float(fl[hw]) / med:.0f}" if fl.get(hw) else "-"
        print(f"| {label}: fwd {float(r['fwd_s']):.1f} + bwd {float(r['bwd_s']):.1f} + AdamW {float(r['opt_s']):.2f} s; "
              f"RSS before the step {r['rss_before_mb']} MB (factors {r['factors_mb']} MB), set-up peak {r['setup_peak_mb']} MB "
              f"| svdiff {compute} factors | {med:.2f} | {len(times(rs))} | - | {peak(rs):.0f} | {rate} | {loads(rs)} |")
rs = rows.get(("svd", "svdiff", "bf16")) or rows.get(("svd", "svdiff", "fp32"))
for compute in ("fp32", "bf16"):
    rs = rows.get(("svd", "svdiff", compute))
    if rs:
        for r in rs:
            what = (f"{r['svd_computed']} SVDs computed, cache saved ({r['saves_s']} s of batch saves)"
                    if int(r["svd_computed"]) else f"factors of {r['svd_loaded']} layers loaded from the cache")
            print(f"| UNet SVD, {r['layers']} layers: {what} | svdiff {compute} | {float(r['svd_s']):.0f} "
                  f"({float(r['svd_s']) / 60:.1f} min) | 1 | - | {r['setup_peak_mb']} | - | {loads([r])} |")
for compute in ("fp32", "bf16"):
    gens = sorted({k[0] for k in rows if k[0].startswith("generate")})
    for rs in (rows.get((g, "svdiff", compute)) for g in gens):
        if not rs:
            continue
        r = rs[-1]
        est = ("" if r["steps"] == "30" else f"; 30 steps extrapolated: {float(r['est30_s']):.0f} s "
               f"({float(r['est30_s']) / 60:.1f} min)")
        print(f"| svdiff generate {r['case'][8:]} px, {r['sampler']}, cfg {r['cfg']}, {r['steps']} steps measured: "
              f"{r['per_step_s']} s/step, {r['before_s']} s before sampling, {r['decode_s']} s VAE decode + PNG{est} "
              f"| svdiff {compute} | {r['total_s']} | 1 | - | {r['peak_rss_mb']} | - | {loads([r])} |")
print()
for case, how in (("train128", ""), ("train128-transformers", ", transformer checkpointing")):
    tr = rows.get((case, "svdiff", "bf16"))
    if tr:
        s = statistics.median(times(tr))
        print(f"500 training steps at 1024 px (bf16 factors, batch 1{how}, {tr[-1].get('threads', '?')} threads): "
              f"500 x {s:.1f} s = {500 * s / 3600:.1f} h (steps only: no sampling, checkpoints or data loading).")
for case, bound, what in (("generate1024", 10240, "generate 1024 px"), ("train128", 16384, "train 1024 px, bf16 factors"),
                          ("train128-transformers", 16384, "train 1024 px, bf16 factors, transformer checkpointing")):
    for compute in ("fp32", "bf16"):
        rs = rows.get((case, "svdiff", compute))
        if rs:
            p = peak(rs)
            print(f"Issue bound, {what} ({compute}): peak RSS {p:.0f} MB <= {bound} MB: {'yes' if p <= bound else 'NO'}.")
for case in ("fwd64", "fwd128"):
    t = rows.get((case, "torch", "fp32"))
    for compute, target in (("fp32", 0.6), ("bf16", 0.4)):
        s = rows.get((case, "svdiff", compute))
        if s and t:
            q = statistics.median(times(s)) / statistics.median(times(t))
            print(f"Issue target, {case} {compute}: svdiff / PyTorch fp32 = {q:.3f} <= {target}: {'met' if q <= target else 'NOT met'}.")
print(f"RESULT lines: {path}")
EOF
}

if [ -n "$table" ]; then render "$table"; exit 0; fi

. bench/common.sh
bench_prepare_sdxl
if [ "$torch" = 1 ] && ! bench_torch_available; then torch=0; fi
bench_openblas_coretype
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}   # as bench/run_all.sh: both sides alike

run="$cache/sdxl-run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run"
results="$run/results.txt"
: >"$results"
load() { cut -d' ' -f1-3 /proc/loadavg; }
avail_gb() { awk '/^MemAvailable:/ {printf "%.1f", $2 / 1048576}' /proc/meminfo; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; flags:" \
  "$(grep -o -w -e amx_bf16 -e avx512_bf16 /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2
echo "load average at start: $(load); MemAvailable $(avail_gb) GB; OMP_WAIT_POLICY=$OMP_WAIT_POLICY;" \
  "$threads threads; logs in $run" >&2
has() { case " $cases " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
unet_file="$model/unet/diffusion_pytorch_model.safetensors"
# svdiff maps the weights: read the file once before each svdiff process so that no side pays for
# disk reads the other (PyTorch reads every tensor at load time, untimed) does not.
warm_file() { cat "$unet_file" >/dev/null; }

side() {   # side NAME COMPUTE LOG cmd...: runs one benchmark process, keeps its RESULT lines
  local name=$1 compute=$2 log=$3 l0
  shift 3
  l0=$(load | cut -d' ' -f1)
  echo "[$(date +%H:%M:%S) load $(load)] $name: $*" >&2
  if "$@" >"$log" 2>&1; then
    # the load column: the higher of the 1-minute averages at the start and end of the process
    grep '^RESULT' "$log" | sed "s/\$/ load=$(printf '%s\n' "$l0" "$(load | cut -d' ' -f1)" | sort -g | tail -1) threads=$threads/;
      s/side=svdiff /side=svdiff compute=$compute /" | tee -a "${SVDIFF_BENCH_RESULTS:-/dev/null}" >>"$results"
    grep '^RESULT' "$log" | sed 's/^RESULT/  /' | cut -c1-220 >&2
  else
    echo "  failed (see $log):" >&2
    tail -5 "$log" >&2
  fi
}

# FLOPs per sample from the model's UNet config (bench_unet's count), for the training steps' GFLOP/s
"$build/bench_unet" --flops --config "$model/unet/config.json" |
  sed -nE 's/.* ([0-9]+)x[0-9]+ latents.*: ([0-9.]+) GFLOP.*/\1 \2/p' |
  awk '{printf "%s hw%s=%s", (NR == 1 ? "RESULT side=svdiff case=flops" : ""), $1, $2} END {print ""}' >>"$results"

svd="$cache/svd-cache"
if has svd; then
  side "svdiff SVD of the UNet ($train_compute)" "$train_compute" "$run/svd.log" env SVDIFF_COMPUTE="$train_compute" \
    "$build/bench_train_step" --model "$model" --svd-only --svd-cache "$svd" --svd-batch-mb "$svd_batch" --threads "$threads"
fi

torch_ok() {   # torch_ok HW: enough memory for PyTorch's fp32 UNet and its activations?
  local need=$([ "$1" -le 64 ] && echo 13 || echo 16)
  if [ "$force" = 0 ] && awk -v a="$(avail_gb)" -v n="$need" 'BEGIN {exit !(a < n)}'; then
    echo "PyTorch fwd$1 skipped: MemAvailable $(avail_gb) GB < $need GB (--force-torch runs it anyway)" >&2
    return 1
  fi
}
for hw in 64 128; do
  has "fwd$hw" || continue
  w=${warmup:-$([ "$hw" -le 64 ] && echo 1 || echo 0)}
  for r in $(seq "$start_round" $((start_round + rounds - 1))); do
    svd_side() {
      local c save=()
      for c in $computes; do
        # the fp32 inputs and output of the first 64x64 round, for PyTorch's comparison
        if [ "$hw" = 64 ] && [ "$r" = 1 ] && [ "$c" = fp32 ]; then save=(--save "$run/fwd64-io.safetensors"); else save=(); fi
        warm_file
        side "svdiff fwd$hw round $r ($c)" "$c" "$run/svdiff-fwd$hw-$c-$r.log" env SVDIFF_COMPUTE="$c" \
          "$build/bench_unet" --model "$model" --case "fwd$hw" --reps "$reps" --reps64 "$reps" --reps128 "$reps" \
          $([ "$w" = 0 ] && echo --no-warmup) --threads "$threads" "${save[@]}"
      done
    }
    torch_side() {
      [ "$torch" = 1 ] && torch_ok "$hw" || return 0
      local check=()
      [ -f "$run/fwd64-io.safetensors" ] && [ "$hw" = 64 ] && [ "$r" = 1 ] &&
        check=(--check "$run/fwd64-io.safetensors" --check-case fwd64)
      side "torch fwd$hw round $r" fp32 "$run/torch-fwd$hw-$r.log" /usr/bin/python3 bench/unet_torch.py --model "$model" \
        --case "fwd$hw" --reps "$reps" --reps64 "$reps" --reps128 "$reps" $([ "$w" = 0 ] && echo --no-warmup) \
        --threads "$threads" "${check[@]}"
    }
    # alternate which side goes first, so that neither always runs on a warmer (or busier) machine
    if [ $((r % 2)) = 1 ]; then svd_side; torch_side; else torch_side; svd_side; fi
  done
done

for hw in 64 128; do
  has "train$hw" || continue
  for r in $(seq "$rounds"); do
    for ck in $train_ckpt; do
      warm_file
      side "svdiff train$hw ckpt $ck round $r ($train_compute)" "$train_compute" "$run/svdiff-train$hw-$ck-$r.log" \
        env SVDIFF_COMPUTE="$train_compute" "$build/bench_train_step" --model "$model" --hw "$hw" --reps "$reps" \
        --ckpt "$ck" ${warmup:+--warmup "$warmup"} --threads "$threads" --svd-cache "$svd" --svd-batch-mb "$svd_batch"
    done
  done
done

if has generate; then
  for c in $gen_compute; do
    # Each stderr line (one per step from the progress bar, then "wrote") gets a timestamp, so the
    # per-step time and the fixed part (load, text encoders, VAE decode, PNG) come out separately.
    echo "[$(date +%H:%M:%S) load $(load)] svdiff generate ${gen_size}x$gen_size, $gen_steps steps, model defaults ($c)" >&2
    l0=$(load | cut -d' ' -f1)
    t0=$EPOCHREALTIME
    set +e
    /usr/bin/time -v -o "$run/generate-$c-time.txt" "$build/svdiff" generate --model "$model" \
      --prompt "a photograph of an astronaut riding a horse" --steps "$gen_steps" --width "$gen_size" --height "$gen_size" \
      --seed 1 --threads "$threads" --compute-dtype "$c" -o "$run/generate-$c.png" 2>&1 >/dev/null |
      while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$run/generate-$c.log"
    set -e
    l1=$(printf '%s\n' "$l0" "$(load | cut -d' ' -f1)" | sort -g | tail -1)
    /usr/bin/python3 - "$t0" "$run/generate-$c.log" "$run/generate-$c-time.txt" "$gen_steps" "$l1" "$c" \
      "$run/generate-$c.png" "$threads" "$gen_size" <<'EOF' | tee -a "${SVDIFF_BENCH_RESULTS:-/dev/null}" | tee -a "$results" >&2
import re, sys, zlib
t0, log, timef, steps, load, compute, png, threads, size = sys.argv[1:10]
t0, steps = float(t0), int(steps)
step_t, wrote = {}, None
for line in open(log):
    ts, _, text = line.rstrip("\n").partition(" ")
    m = re.match(r"generate\s+\d+% (\d+)/(\d+)", text)
    if m:  # without a tty the bar prints at each tenth and every 5 s: first sighting of each step
        step_t.setdefault(int(m.group(1)), float(ts))
    elif text.startswith("wrote "):
        wrote = float(ts)
tv = open(timef).read()
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)
if not (rss and wrote and steps in step_t and "Exit status: 0" in tv):
    print(f"generate failed: see {log}", file=sys.stderr)
    sys.exit(0)
sampler = cfg = "?"
try:  # the PNG's parameters chunk says which sampler and guidance the defaults gave
    data = open(png, "rb").read()
    text = data.decode("latin-1")
    m = re.search(r"[Ss]ampler[\"']?[:=]\s*[\"']?([a-z_0-9]+)", text)
    g = re.search(r"(?:cfg|CFG scale|guidance)[\"']?[:=]\s*([0-9.]+)", text)
    sampler, cfg = (m.group(1) if m else "?"), (g.group(1) if g else "?")
except OSError:
    pass
k0 = min(step_t)   # mean step time after the first printed step (which also holds the set-up)
per_step = (step_t[steps] - step_t[k0]) / (steps - k0) if steps > k0 else step_t[steps] - t0
before = step_t[k0] - t0 - k0 * per_step    # process start, load, tokenizers, both text encoders
after = wrote - step_t[steps]               # VAE decode, PNG write
print(f"RESULT side=svdiff compute={compute} case=generate{size} steps={steps} sampler={sampler} cfg={cfg} "
      f"total_s={wrote - t0:.1f} per_step_s={per_step:.2f} before_s={before:.1f} decode_s={after:.1f} "
      f"est30_s={before + 30 * per_step + after:.1f} peak_rss_mb={int(rss.group(1)) / 1024:.0f} load={load} "
      f"threads={threads}")
EOF
  done
fi

echo "load average at end: $(load)" >&2
echo
echo "SDXL benchmarks of $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null ||
  echo ' + uncommitted changes'), random SDXL base 1.0 weights (fp16 file), $threads threads, $(grep -m1 'model name' \
  /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'):"
echo
render "$results"
