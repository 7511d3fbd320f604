#!/usr/bin/env bash
# One SVDiff training step on a full-size random SD 1.5 UNet (batch 1, 77 context tokens):
# svdiff (bench/train_step.c: factors from the SVD cache, backward to the shifts only, AdamW)
# side by side with PyTorch in the svdiff-pytorch formulation (bench/train_step_torch.py: every
# weight rebuilt as U diag(relu(S + delta)) Vh per forward, autograd, AdamW) at 32x32 latents,
# then svdiff alone at 64x64 (512 px) without and with transformer checkpointing. One process
# per case, never two at once (the PyTorch step needs ~13-14 GB). Prints a table.
#
#   bench/run_train_step.sh [--reps N (32x32, default 2)] [--reps64 N (default 1)] [--threads N]
#       [--no-torch] [--no-64] [--torch-random-factors] [--torch-drop-dense] [--force-torch]
#       [--perf (perf record of one svdiff 32x32 step after its set-up, top symbols printed)]
#       [--compute-dtype fp32|bf16 (svdiff side: SVDIFF_COMPUTE; RESULT lines get compute=)]
#       [--ckpt64 "none transformers" (default; the 64x64 checkpointing modes run)]
#       [--torch-full (also PyTorch's plain full fine-tune forward + backward, 32x32 and 64x64)]
#       [--no-svdiff (PyTorch side only)]
#
# Environment: SVDIFF_BENCH_CACHE (default bench/out, git-ignored) holds the model, the SVD cache
# (the first svdiff run computes it: minutes, about 5 GB on disk) and the logs;
# SVDIFF_BUILD_DIR uses an existing build there instead of scripts/build.sh release (build/).
# The PyTorch side is skipped when MemAvailable is under 15 GB (--force-torch runs it anyway).
# SVDIFF_BENCH_RESULTS=FILE also appends the RESULT lines there (bench/run_all.sh collects them).
set -euo pipefail
cd "$(dirname "$0")/.."

reps=2 reps64=1 threads=$(nproc) torch=1 do64=1 torch_args=() force=0 perf=0 compute=fp32
ckpt64="none transformers" torch_full=0 svdiff=1
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift ;;
    --reps64) reps64=$2; shift ;;
    --threads) threads=$2; shift ;;
    --no-torch) torch=0 ;;
    --no-64) do64=0 ;;
    --torch-random-factors) torch_args+=(--random-factors) ;;
    --torch-drop-dense) torch_args+=(--drop-dense) ;;
    --force-torch) force=1 ;;
    --perf) perf=1 ;;
    --compute-dtype) compute=$2; shift ;;
    --ckpt64) ckpt64=$2; shift ;;
    --torch-full) torch_full=1 ;;
    --no-svdiff) svdiff=0 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_train_step.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

. bench/common.sh
bench_prepare_sd15
if [ "$torch" = 1 ] && ! bench_torch_available; then torch=0; fi
bench_openblas_coretype

run="$cache/train-step-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run"
results="$run/results.txt"
: >"$results"
load() { cut -d' ' -f1-3 /proc/loadavg; }
avail_gb() { awk '/^MemAvailable:/ {printf "%.1f", $2 / 1048576}' /proc/meminfo; }
load_start=$(load)
echo "load average at start: $load_start ($(nproc) cores); MemAvailable $(avail_gb) GB; logs in $run" >&2

side() {   # side NAME LOG cmd...: runs one benchmark process, keeps its RESULT line
  local name=$1 log=$2
  shift 2
  echo "[$(date +%H:%M:%S) load $(load)] $name: $*" >&2
  if "$@" >"$log" 2>&1; then
    grep '^RESULT' "$log" | sed "s/\$/ load=$(load | cut -d' ' -f1)/; s/side=svdiff /side=svdiff compute=$compute /" |
      tee -a "${SVDIFF_BENCH_RESULTS:-/dev/null}" >>"$results"
    grep -E '^(opened|before the step|SVD |random factors)' "$log" | sed 's/^/  /' >&2 || true
  else
    echo "  failed (see $log):" >&2
    tail -5 "$log" >&2
  fi
}

svd="$cache/svd-cache"
if [ "$svdiff" = 1 ]; then
  side "svdiff train32 ($compute)" "$run/svdiff-train32.log" env SVDIFF_COMPUTE="$compute" "$build/bench_train_step" \
    --model "$model" --hw 32 --reps "$reps" --threads "$threads" --svd-cache "$svd"
fi
if [ "$torch" = 1 ]; then
  if [ "$force" = 0 ] && awk -v a="$(avail_gb)" 'BEGIN {exit !(a < 15)}'; then
    echo "PyTorch side skipped: MemAvailable $(avail_gb) GB < 15 GB, and its 32x32 step needs ~13-14 GB" \
      "(--force-torch runs it anyway)" >&2
  else
    side "torch train32" "$run/torch-train32.log" /usr/bin/python3 bench/train_step_torch.py --model "$model" \
      --hw 32 --reps "$reps" --threads "$threads" "${torch_args[@]}"
  fi
fi
if [ "$do64" = 1 ] && [ "$svdiff" = 1 ]; then
  for ck in $ckpt64; do
    side "svdiff train64 ckpt $ck ($compute)" "$run/svdiff-train64-$ck.log" env SVDIFF_COMPUTE="$compute" \
      "$build/bench_train_step" --model "$model" --hw 64 --reps "$reps64" --ckpt "$ck" --threads "$threads" --svd-cache "$svd"
  done
fi
if [ "$torch" = 1 ] && [ "$torch_full" = 1 ]; then   # plain full fine-tune, forward + backward, for scale
  for hw in 32 $([ "$do64" = 1 ] && echo 64); do
    side "torch full fine-tune $hw" "$run/torch-full$hw.log" /usr/bin/python3 bench/train_step_torch.py --model "$model" \
      --full --hw "$hw" --reps "$([ "$hw" = 32 ] && echo "$reps" || echo "$reps64")" --warmup 1 --threads "$threads"
  done
fi
if [ "$perf" = 1 ]; then
  if command -v perf >/dev/null; then
    # perf attaches once the set-up (cache load) is over, so the profile is the step alone.
    echo "[$(date +%H:%M:%S) load $(load)] perf record: svdiff train32, 1 step" >&2
    SVDIFF_COMPUTE="$compute" "$build/bench_train_step" --model "$model" --hw 32 --reps 1 --threads "$threads" \
      --svd-cache "$svd" >"$run/perf-run.log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && ! grep -qs '^before the step' "$run/perf-run.log"; do sleep 0.5; done
    perf record -F 499 -p "$pid" -o "$run/perf.data" >/dev/null 2>&1 || true
    wait "$pid" || true
    perf report -i "$run/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
      grep -E '^ +[0-9.]+%' | head -15 >"$run/perf-top.txt" || true
    echo "perf top symbols of the step (see $run/perf-top.txt):" >&2
    head -8 "$run/perf-top.txt" >&2
  else
    echo "(perf not installed: --perf skipped)" >&2
  fi
fi

load_end=$(load)
/usr/bin/python3 - "$results" "$load_start" "$load_end" "$(nproc)" "$threads" <<'EOF'
import sys
path, load0, load1, ncpu, threads = sys.argv[1:6]
rows = {}
for line in open(path):
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    key = (kv["case"], kv.get("ckpt", "none"), kv["side"])
    rows[key] = kv

print(f"\nSVDiff training step, random SD 1.5 UNet (fp16 file), batch 1, 77 context tokens, {threads} threads. "
      f"Load average at start {load0}, at end {load1} on {ncpu} cores (the machine is shared: times are noisy).")
print("Step = forward + MSE + backward to every delta and norm shift + clip + AdamW; median of n timed steps "
      "(after one untimed warm-up step at 32x32, whose time is given as 'first'). Peak RSS = VmHWM from just "
      "before the first step (set-up excluded; RSS before the step in brackets).\n")
print("| case | svdiff s (fwd + bwd + AdamW) | torch s (fwd + bwd + AdamW) | torch/svdiff | svdiff peak RSS MB | "
      "torch peak RSS MB |")
print("|---|---|---|---|---|---|")
def cell(r):
    if not r:
        return "-"
    return (f"{float(r['median_s']):.2f} ({float(r['fwd_s']):.2f} + {float(r['bwd_s']):.2f} + "
            f"{float(r['opt_s']):.3f}; n={r['reps']}{', first ' + r['first_s'] if r.get('warmup', '0') != '0' else ''})")
def mem(r):
    return f"{r['peak_rss_mb']} ({r['rss_before_mb']})" if r else "-"
for case, ck, label in (("train32", "none", "32x32 (256 px)"), ("train64", "none", "64x64 (512 px)"),
                        ("train64", "transformers", "64x64 (512 px), transformer checkpointing")):
    s, t = rows.get((case, ck, "svdiff")), rows.get((case, "none", "torch")) if ck == "none" else None
    if not s and not t:
        continue
    ratio = f"{float(t['median_s']) / float(s['median_s']):.2f}" if s and t else "-"
    print(f"| {label} | {cell(s)} | {cell(t)} | {ratio} | {mem(s)} | {mem(t)} |")
print()
for (case, ck, side), r in sorted(rows.items()):
    if side == "svdiff":
        how = (f"SVD of every layer {r['svd_s']} s (computed, cache saved)" if int(r["svd_computed"])
               else f"factors loaded from the SVD cache in {r['svd_s']} s")
        print(f"svdiff {case} ckpt={ck}: {how}; hash {r['hash_s']} s; set-up peak {r['setup_peak_mb']} MB; "
              f"factors {r['factors_mb']} MB, activations {r['acts_mb']} MB, scratch peak {r['scratch_peak_mb']} MB; "
              f"RSS before the step {r['rss_before_mb']} MB (anon {r['anon_before_mb']}, mapped file pages "
              f"{r['file_before_mb']}); loss {r['loss']}, grad norm {r['grad_norm']}")
    else:
        how = "random orthonormal factors" if r["random_factors"] == "1" else f"torch.linalg.svd of every layer {r['svd_s']} s"
        print(f"torch {case}: {how}; dense weights {'kept' if r['dense_kept'] == '1' else 'dropped'}; set-up peak "
              f"{r['setup_peak_mb']} MB, whole-life peak {r['life_peak_mb']} MB; factors {r['factors_mb']} MB; "
              f"loss {r['loss']}, grad norm {r['grad_norm']}")
print(f"RESULT lines: {path}")
EOF
