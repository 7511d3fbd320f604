#!/usr/bin/env bash
# Every side-by-side benchmark of issue 6 in one command, ending in one markdown table: time,
# ratio to PyTorch, peak RSS and achieved GFLOP/s against the sgemm (and bf16 GEMM) rate measured
# in the same run, for fp32 and bf16 compute (svdiff --compute-dtype / SVDIFF_COMPUTE):
#   - the 2048^3 GEMM rates (bench_micro --gemm-only)
#   - UNet forward 32x32 and 64x64, batch 2 (bench/run_unet.sh: bench_unet vs unet_torch.py)
#   - SVDiff training step 32x32 and 64x64, batch 1 (bench/run_train_step.sh: bench_train_step vs
#     train_step_torch.py in the svdiff-pytorch formulation, random factors, and PyTorch's plain
#     full fine-tune forward + backward for scale)
#   - VAE decode 512 px (bench_vae --model vs bench/vae_torch.py)
#   - `svdiff generate` 512 px, 20 ddim steps, cfg 7.5 (bench/run_unet.sh --generate; no PyTorch side)
#   - svd: the one-time SVD of the UNet's 282 matrices, svdiff's serial spectral_init against
#     torch.linalg.svd on the same matrices (bench/run_svd.sh; once, not per compute dtype)
#   - train500: `svdiff train` at 512 px for a few steps, 500 steps extrapolated (bench/run_train_500.sh)
#   - with --sdxl (opt-in: about an hour on 2 cores, 22 GB of disk for the model and its SVD cache):
#     bench/run_sdxl.sh (SDXL UNet forwards at 512 / 1024 px against PyTorch, training steps, the
#     one-time SVD, generate 1024 px), whose own table is printed after this one
# One process per case, never two at once; the machine's noise is shared by running the sides
# one after the other. Takes about 35 minutes with the defaults on 2 cores. The GFLOP/s column
# counts the FLOPs a case executes where its program knows them (a training step: the products
# src/weights/ chooses, bench_unet --flops; forwards: the dense forward), and the next column
# divides it by the GEMM 2048^3 rate measured in the same process after its timed part (sgemm
# for fp32, svdiff's bf16 GEMM for bf16; "run" marks the separate bench_micro process's rate).
#
#   bench/run_all.sh [--reps N (timed repetitions per case, median; default 3)] [--threads N]
#                    [--only "gemm unet train vae generate svd train500"] [--compute "fp32 bf16"] [--no-torch]
#                    [--gen-steps N (default 20)] [--train500-steps N (default 5)]
#                    [--table RESULTS.txt (only print the table of an earlier run)]
#                    [--sdxl (also bench/run_sdxl.sh with its defaults)]
#
# Environment: as the other bench scripts (SVDIFF_BENCH_CACHE holds the random SD 1.5 model, the
# SVD cache and the logs; SVDIFF_BUILD_DIR uses an existing release build).
set -euo pipefail
cd "$(dirname "$0")/.."

reps=3 threads=$(nproc) only="gemm unet train vae generate svd train500" computes="fp32 bf16" torch=1 gen_steps=20 table="" sdxl=0
t500_steps=5
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift ;;
    --threads) threads=$2; shift ;;
    --only) only=$2; shift ;;
    --compute) computes=$2; shift ;;
    --no-torch) torch=0 ;;
    --gen-steps) gen_steps=$2; shift ;;
    --train500-steps) t500_steps=$2; shift ;;
    --table) table=$2; shift ;;
    --sdxl) sdxl=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

render() {   # render RESULTS.txt: the markdown table
  /usr/bin/python3 - "$1" <<'EOF'
import statistics, sys
path = sys.argv[1]
rows = {}
for line in open(path):
    if not line.startswith("RESULT"):
        continue
    kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    side = kv["side"]
    compute = kv.get("compute", "fp32") if side == "svdiff" else "fp32"
    if kv.get("ckpt", "none") != "none":
        continue
    rows.setdefault((kv["case"], side, compute), []).append(kv)

def med(rs, key="median_s"):
    ts = [float(t) for r in rs for t in r.get("times", r.get(key, "")).split(",") if t]
    return statistics.median(ts) if ts else None

def get(case, side, compute="fp32"):
    rs = rows.get((case, side, compute))
    if not rs:
        return None
    r = dict(rs[-1])
    r["med"] = med(rs) if case != "generate512" else float(rs[-1]["est20_s"])
    r["rss"] = max(float(x.get("peak_rss_mb", 0)) for x in rs) or None
    # the GEMM 2048^3 rates of the processes themselves (medians over the case's processes)
    for k in ("sgemm_gflops", "bf16_gflops", "train_gflop"):
        v = [float(x[k]) for x in rs if float(x.get(k, 0) or 0) > 0]
        r["p_" + k] = statistics.median(v) if v else None
    return r

g = get("gemm2048", "svdiff")
sgemm = float(g["sgemm_gflops"]) if g else None
bf16 = float(g["bf16_gflops"]) if g and float(g["bf16_gflops"]) > 0 else None
# Dense-equivalent FLOPs (bench_unet's count: 180.1 GFLOP per sample at 32x32, 803.3 at 64x64):
# a forward F; an SVDiff step 2F (forward + the input gradients; frozen weights need no dW);
# a full fine-tune forward + backward 3F; generate 20 steps x 2 (CFG) forwards + the VAE decode.
unet = {32: 180.1, 64: 803.3}
vae_t = get("vae512", "torch")
vae_gflop = float(vae_t["gflop"]) if vae_t else None
cases = [("fwd32", "fwd32", "UNet forward 32x32, batch 2", 2 * unet[32]),
         ("fwd64", "fwd64", "UNet forward 64x64, batch 2", 2 * unet[64]),
         ("train32", "train32", "SVDiff training step 32x32, batch 1 (torch: svdiff-pytorch formulation)", 2 * unet[32]),
         ("train64", "train64", "SVDiff training step 64x64, batch 1", 2 * unet[64]),
         ("train32", "full32", "  vs PyTorch plain full fine-tune fwd+bwd 32x32", 2 * unet[32]),
         ("train64", "full64", "  vs PyTorch plain full fine-tune fwd+bwd 64x64", 2 * unet[64]),
         ("vae512", "vae512", "VAE decode 512 px", vae_gflop),
         ("generate512", None, "svdiff generate 512 px, 20 ddim steps, cfg 7.5", (40 * unet[64] + (vae_gflop or 0))),
         ("svd", "svd", "one-time SVD of the UNet convs and linears (torch: torch.linalg.svd, same matrices)", None)]
print("| workload | compute | svdiff s | PyTorch s | svdiff / PyTorch | svdiff peak RSS MB | PyTorch peak RSS MB "
      "| svdiff GFLOP/s | achieved GFLOP/s / GEMM rate of the same process |")
print("|---|---|---|---|---|---|---|---|---|")
def cell(v, fmt):
    return fmt.format(v) if v is not None else "-"

for scase, tcase, label, gflop in cases:
    t = get(tcase, "torch") if tcase else None
    for compute in ("fp32", "bf16"):
        s = get(scase, "svdiff", compute)
        if not s and not (t and compute == "fp32"):
            continue
        # executed FLOPs where the program counts them (training step), else the dense-equivalent count
        executed = s and s.get("p_train_gflop")
        rate = (executed or gflop) / s["med"] if s and (executed or gflop) else None
        own = s and s.get("p_bf16_gflops" if compute == "bf16" else "p_sgemm_gflops")
        run_rate = bf16 if compute == "bf16" else sgemm
        ceil = f"{100 * rate / own:.0f}%" if rate and own else f"{100 * rate / run_rate:.0f}% (run)" if rate and run_rate else "-"
        print(f"| {label} | {compute} | {cell(s and s['med'], '{:.2f}')} | {cell(t and t['med'], '{:.2f}')} "
              f"| {cell(s and t and s['med'] / t['med'], '{:.3f}x')} | {cell(s and s['rss'], '{:.0f}')} "
              f"| {cell(t and t['rss'], '{:.0f}')} | {cell(rate, '{:.0f}')}{' (executed)' if executed else ''} | {ceil} |")
print()
if g:
    print(f"GEMM 2048^3 in this run: sgemm {sgemm:.0f} GFLOP/s (OpenBLAS), bf16 {g['bf16_gflops']} GFLOP/s "
          f"(svdiff's {g['bf16_kernel']} kernel, fp32 accumulation).")
print("GFLOP/s: '(executed)' = the products the training step runs (bench_unet --flops: 606.5 GFLOP at 32x32, "
      "2740.0 at 64x64, batch 1), else dense-equivalent model FLOPs / time: UNet forward 180.1 GFLOP per sample at "
      "32x32, 803.3 at 64x64; a step without its own count 2 forwards; the plain full fine-tune row uses the svdiff "
      "step's time against PyTorch's fwd+bwd; generate = 40 UNet forwards at 64x64 + the VAE decode "
      f"({vae_gflop if vae_gflop else '?'} GFLOP). generate's time is the 20-step estimate from its per-step time. "
      "The last column divides by the 2048^3 GEMM rate (sgemm for fp32, svdiff's bf16 GEMM for bf16) measured in the "
      "same process after its timed part; '(run)': by the rate of this run's bench_micro process instead.")
gen = get("generate512", "svdiff")
for compute in ("fp32", "bf16"):
    r = get("generate512", "svdiff", compute)
    if r:
        print(f"generate ({compute}): {r['per_step_s']} s per step, {r['before_s']} s before sampling, "
              f"{r['decode_s']} s VAE decode + PNG, total {r['total_s']} s for {r['steps']} steps, peak RSS {r['peak_rss_mb']} MB.")
for compute in ("fp32", "bf16"):
    r = get("train500", "svdiff", compute)
    if r:
        print(f"500 training steps at {r['res']} px ({compute}, `svdiff train`, batch 1, 1 instance image): {r['est_min']} "
              f"min = set-up {r['setup_s']} s (SVD cache {r['svd_load_s']} s) + first step {r['first_step_s']} s (with "
              f"the image's VAE encode) + 499 x {r['median_step_s']} s (median of steps 2-{r['steps']}) + "
              f"{r['post_s']} s after the last step; peak RSS {r['peak_rss_mb']} MB.")
loads = sorted(float(kv.get("load", 0)) for v in rows.values() for kv in v if kv.get("load"))
if loads:
    print(f"Load average (1 min) at the end of the cases: {loads[0]:.1f} to {loads[-1]:.1f}.")
print(f"RESULT lines: {path}")
EOF
}

if [ -n "$table" ]; then render "$table"; exit 0; fi

. bench/common.sh
bench_prepare_sd15
export SVDIFF_BUILD_DIR="$build"   # the sub-scripts reuse this build
bench_openblas_coretype
# svdiff programs choose passive OpenMP waiting themselves (src/base/runtime.h) but only when they
# re-execute, which the OPENBLAS_CORETYPE set above skips: set it for both sides alike.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if [ "$torch" = 1 ] && ! bench_torch_available; then torch=0; fi
run="$cache/all-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run"
export SVDIFF_BENCH_RESULTS="$run/results.txt"
: >"$SVDIFF_BENCH_RESULTS"
notorch=$([ "$torch" = 1 ] || echo --no-torch)
has() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
say() { echo "[$(date +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)] $*" >&2; }
say "run_all: $only; compute $computes; reps $reps; threads $threads; logs in $run"

if has gemm; then
  say "GEMM 2048^3 rates"
  "$build/bench_micro" --gemm-only --reps "$reps" --threads "$threads" | grep '^RESULT' >>"$SVDIFF_BENCH_RESULTS"
fi
# Workload by workload, each in every compute dtype (the PyTorch side runs once, with the first).
first() { [ "$compute" = "${computes%% *}" ]; }
if has svd; then
  say "one-time SVD of the UNet (bench/run_svd.sh)"
  bench/run_svd.sh --threads "$threads" $notorch >"$run/svd.txt" 2>"$run/svd.log" || say "  SVD failed: see $run/svd.log"
fi
for work in unet train vae generate train500; do
  has "$work" || continue
  for compute in $computes; do
    t=$(first && echo "$notorch" || echo --no-torch)
    case $work in
      unet)
        say "UNet forwards ($compute)"
        bench/run_unet.sh --reps "$reps" --reps64 "$reps" --threads "$threads" --compute-dtype "$compute" $t \
          >"$run/unet-$compute.txt" || say "  UNet ($compute) failed: see $run/unet-$compute.txt" ;;
      train)
        say "training steps ($compute)"
        full=$([ "$t" = --no-torch ] || echo --torch-full)
        bench/run_train_step.sh --reps "$reps" --reps64 "$reps" --threads "$threads" --compute-dtype "$compute" \
          --ckpt64 none --torch-random-factors $full $t >"$run/train-$compute.txt" ||
          say "  training ($compute) failed: see $run/train-$compute.txt" ;;
      vae)
        say "VAE decode 512 px ($compute)"
        SVDIFF_COMPUTE=$compute "$build/bench_vae" --model "$model" --latent 64 --reps "$reps" --threads "$threads" \
          >"$run/vae-$compute.log" 2>&1 && grep '^RESULT' "$run/vae-$compute.log" >>"$SVDIFF_BENCH_RESULTS" ||
          { echo "  failed (see $run/vae-$compute.log)" >&2; tail -3 "$run/vae-$compute.log" >&2; }
        if [ "$t" != --no-torch ]; then
          say "VAE decode 512 px (torch)"
          /usr/bin/python3 bench/vae_torch.py --model "$model" --latent 64 --reps "$reps" --threads "$threads" \
            >"$run/vae-torch.log" 2>&1 && grep '^RESULT' "$run/vae-torch.log" >>"$SVDIFF_BENCH_RESULTS" ||
            { echo "  failed (see $run/vae-torch.log)" >&2; tail -3 "$run/vae-torch.log" >&2; }
        fi ;;
      train500)
        say "svdiff train 512 px, $t500_steps steps, 500 extrapolated ($compute)"
        bench/run_train_500.sh --steps "$t500_steps" --compute "$compute" --threads "$threads" \
          >"$run/train500-$compute.txt" 2>"$run/train500-$compute.log" ||
          say "  train500 ($compute) failed: see $run/train500-$compute.log" ;;
      generate)
        say "svdiff generate 512 px, $gen_steps steps ($compute)"
        bench/run_unet.sh --cases none --no-torch --generate --gen-steps "$gen_steps" --threads "$threads" \
          --compute-dtype "$compute" >"$run/generate-$compute.txt" ||
          say "  generate ($compute) failed: see $run/generate-$compute.txt" ;;
    esac
  done
done
if [ "$sdxl" = 1 ]; then   # its own RESULT file and table: its case names (fwd64, ...) are SD 1.5's here
  say "SDXL (bench/run_sdxl.sh)"
  env -u SVDIFF_BENCH_RESULTS bench/run_sdxl.sh --threads "$threads" --compute "$computes" $notorch \
    >"$run/sdxl.txt" 2>"$run/sdxl.log" || say "  SDXL failed: see $run/sdxl.log"
fi
say "done"
echo
echo "Benchmarks of $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes'), $threads threads, median of $reps:"
render "$SVDIFF_BENCH_RESULTS"
if [ "$sdxl" = 1 ]; then echo; cat "$run/sdxl.txt"; fi
