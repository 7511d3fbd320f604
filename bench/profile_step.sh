#!/usr/bin/env bash
# Where the time of one SVDiff training step (or one UNet forward) goes: runs the step under
# `perf record`, sampling only the timed part (the bench program opens and closes the profiling
# window through perf's control FIFO, bench/lib/benchutil.c: the model open, the SVD-cache load,
# the warm-up and the GEMM rates measured afterwards are not sampled), then buckets the samples
# by symbol and prints a markdown table: GEMM compute, GEMM packing, attention, norms,
# activations, im2col / col2im / Winograd transforms, memory traffic, thread waits, other, each
# as a share of the sampled CPU time and in seconds, with the step's executed GFLOP/s against
# the sgemm and bf16 GEMM 2048^3 rates of the same process, and the top symbols no pattern
# matched (so that nothing hides in "other").
#
#   bench/profile_step.sh [--compute fp32|bf16 (default fp32)] [--case train64|fwd64|trainN|fwdN
#       (default train64: bench_train_step --hw N, 1 timed step after 1 untimed one; fwdN:
#       bench_unet, batch 2, 1 timed forward after a warm-up)] [--threads N] [--freq HZ (default
#       499)] [--top N (unmatched symbols listed, default 12)] [--no-warmup (no untimed step or
#       forward first: the profile then includes the first touch of activations and scratch)]
#       [--report DIR (only bucket the perf.data of an earlier run again)]
#
# Environment: as bench/run_train_step.sh (SVDIFF_BENCH_CACHE holds the random SD 1.5 model, its
# SVD cache and the run folders; SVDIFF_BUILD_DIR uses an existing release build). Needs
# /usr/bin/perf (Debian: linux-perf; scripts/install-deps.sh --reference installs it) and
# permission to profile (root, or kernel.perf_event_paranoid <= 1).
#
# The buckets are regular expressions on symbol names (BUCKETS below), so that kernels added
# later (other GEMM micro-kernels, Winograd, fused attention) fall into the right row when
# their names say what they are; the "unmatched" list shows what to add when they do not.
set -euo pipefail
cd "$(dirname "$0")/.."

compute=fp32 case=train64 threads=$(nproc) freq=499 top=12 warmup=1 report=""
while [ $# -gt 0 ]; do
  case "$1" in
    --compute) compute=$2; shift ;;
    --case) case=$2; shift ;;
    --threads) threads=$2; shift ;;
    --freq) freq=$2; shift ;;
    --top) top=$2; shift ;;
    --no-warmup) warmup=0 ;;
    --report) report=$2; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "profile_step.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$compute" in fp32|bf16) ;; *) echo "profile_step.sh: --compute fp32 or bf16, not $compute" >&2; exit 2 ;; esac
case "$case" in
  train[0-9]*|fwd[0-9]*) hw=${case#train}; hw=${hw#fwd} ;;
  *) echo "profile_step.sh: --case trainN or fwdN (e.g. train64, fwd64), not $case" >&2; exit 2 ;;
esac
PERF=${PERF:-perf}
command -v "$PERF" >/dev/null || { echo "profile_step.sh: perf not found (apt-get install linux-perf)" >&2; exit 2; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

if [ -z "$report" ]; then
  . bench/common.sh
  bench_prepare_sd15
  bench_openblas_coretype
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}   # as bench/run_all.sh: both sides alike
  dir="$cache/profile-$case-$compute-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$dir"
  # perf reads "enable" / "disable" from ctl and answers "ack" on ack; the shell holds both FIFOs
  # open read-write so that neither side blocks opening them, and the bench program opens them by
  # path (SVDIFF_PERF_CTL / SVDIFF_PERF_ACK).
  mkfifo "$dir/ctl" "$dir/ack"
  exec {ctl_fd}<>"$dir/ctl" {ack_fd}<>"$dir/ack"
  if [ "${case#train}" != "$case" ]; then
    cmd=("$build/bench_train_step" --model "$model" --hw "$hw" --reps 1 --warmup "$warmup" --threads "$threads"
         --svd-cache "$cache/svd-cache")
  else
    cmd=("$build/bench_unet" --model "$model" --case "$case" --reps 1 --reps64 1 --reps128 1 --threads "$threads"
         $([ "$warmup" = 1 ] || echo --no-warmup))
  fi
  echo "[$(date +%H:%M:%S) load $(load)] perf record (-F $freq, window = the timed part): SVDIFF_COMPUTE=$compute ${cmd[*]}" >&2
  printf 'load_start=%s\ncompute=%s\ncase=%s\nfreq=%s\nthreads=%s\n' "$(load | cut -d' ' -f1)" "$compute" "$case" \
    "$freq" "$threads" >"$dir/meta.txt"
  rc=0
  SVDIFF_PERF_CTL="$dir/ctl" SVDIFF_PERF_ACK="$dir/ack" SVDIFF_COMPUTE=$compute \
    "$PERF" record -F "$freq" -D -1 --control "fd:$ctl_fd,$ack_fd" -o "$dir/perf.data" -- "${cmd[@]}" \
    >"$dir/run.log" 2>"$dir/run.err" || rc=$?
  exec {ctl_fd}>&- {ack_fd}>&-
  rm -f "$dir/ctl" "$dir/ack"
  echo "load_end=$(load | cut -d' ' -f1)" >>"$dir/meta.txt"
  if [ "$rc" != 0 ] || ! grep -q '^RESULT' "$dir/run.log"; then
    echo "profile_step.sh: the profiled run failed (exit $rc); see $dir/run.log and $dir/run.err:" >&2
    tail -5 "$dir/run.err" >&2
    exit 1
  fi
  grep -E '^(before the step|opened)' "$dir/run.log" | sed 's/^/  /' >&2 || true
else
  dir=$report
  [ -f "$dir/perf.data" ] && [ -f "$dir/run.log" ] && [ -f "$dir/meta.txt" ] ||
    { echo "profile_step.sh: $dir has no perf.data / run.log / meta.txt" >&2; exit 2; }
  # the recorded run's settings, not this command line's
  compute=$(sed -n 's/^compute=//p' "$dir/meta.txt") case=$(sed -n 's/^case=//p' "$dir/meta.txt")
  freq=$(sed -n 's/^freq=//p' "$dir/meta.txt") threads=$(sed -n 's/^threads=//p' "$dir/meta.txt")
fi

# symbol table: overhead, samples, dso, symbol (one line per symbol, no call graphs)
"$PERF" report -i "$dir/perf.data" --stdio --no-children --sort dso,sym -n -g none --percent-limit 0 -t $'\t' \
  2>/dev/null | grep -v '^#' | grep -v '^$' >"$dir/symbols.tsv" || true
[ -s "$dir/symbols.tsv" ] || { echo "profile_step.sh: perf report gave no samples ($dir/perf.data)" >&2; exit 1; }

/usr/bin/python3 - "$dir" "$compute" "$case" "$freq" "$top" "$(nproc)" "$threads" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" \
  "$(grep -o -w -e amx_bf16 -e avx512_bf16 /proc/cpuinfo | sort -u | tr '\n' ' ')" <<'EOF'
import re, sys
d, compute, case, freq, top, ncpu, threads, cpu, flags = sys.argv[1:10]
freq, top = float(freq), int(top)

# Buckets, first match wins: (name, regex on "dso<TAB>symbol"). Symbol names of OpenBLAS
# (sgemm_kernel, sgemm_incopy / itcopy / oncopy / otcopy, sgemm_beta), of svdiff's bf16 GEMM
# (avx512_block / amx_block micro-kernels; pack_a_tile*, pack_b_tile*, gemm_bf16_x86 driver), the
# product kernel of the bf16 attention (pair_gemm: its products count as GEMM, as they do in fp32),
# and generic words for kernels other code may add (micro-kernel, winograd, flash, softmax).
BUCKETS = [
    ("GEMM compute", r"\t([a-z]*gemm_kernel|[a-z]*gemm_small_kernel|sgemm_small|.*micro_?kernel|avx512_block|amx_block"
                     r"|pair_gemm.*|.*_block_(bf16|f32|fp32)|.*bf16_(kernel|block|tile_mul)|.*dpbf16|.*gemm_.*kernel)"),
    ("GEMM packing", r"\t([a-z]*gemm_(i|o)[nt]copy|[a-z]*gemm_beta|.*pack_|.*to_bf16|.*bf16_from|.*f32_to_bf16|.*gemm_bf16"
                     r"|sd_gemm|fgemm|[a-z]*gemm_(nn|nt|tn|tt)$|.*_copy_b|.*_copy_a)"),
    ("attention", r"\t.*(attention|softmax|flash|attn|expf|exp_approx|lse)"),
    ("norms", r"\t.*(norm|moments)"),
    ("activations", r"\t.*(silu|geglu|gelu|erf|sigmoid|activation)"),
    ("im2col / col2im / Winograd", r"\t.*(im2col|col2im|winograd|wino_|_transform)"),
    ("weight conversion (fp16 / bf16 -> fp32, finite checks)", r"\t.*(to_f32|f16_to_f32|bf16_to_f32|nonfinite|finite)"),
    ("memory traffic (page faults, clearing, memset / memcpy)",
     r"(kernel.*\t.*(page|fault|filemap|pte|pmd|folio|vma|mas_|mm_)|\t.*(clear_page|page_fault|do_anonymous_page|handle_mm_fault|handle_pte_fault|__handle_mm|folio|alloc_pages"
     r"|get_page_from_freelist|rmqueue|__pte|zap_|release_pages|free_pages|free_unref|lru_|memcg|mem_cgroup|__mod_"
     r"|memset|memmove|memcpy|__memcpy|copy_page|copy_user|unmap|mmap|munmap|madvise|_erms|rep_stos|rep_movs"
     r"|sync_regs|error_entry|irqentry_exit|exc_page_fault|asm_exc_page_fault))"),
    ("thread waits and scheduling (libgomp, OpenBLAS threads, kernel)",
     r"(libgomp|\t(blas_thread_server|exec_blas|inner_thread|.*gomp_|.*futex|.*schedule|.*sched_|.*_raw_spin"
     r"|.*finish_task_switch|.*do_syscall|.*entry_SYSCALL|.*syscall_exit|sched_yield|__sched_yield|.*yield))"),
]
rx = [(n, re.compile(p)) for n, p in BUCKETS]

rows = []   # (pct, samples, dso, sym)
for line in open(f"{d}/symbols.tsv"):
    f = line.rstrip("\n").split("\t")
    if len(f) < 4:
        continue
    try:
        pct, n = float(f[0].strip().rstrip("%")), int(f[1])
    except ValueError:
        continue
    sym = re.sub(r"^\[[.kgu]\]\s+", "", f[3].strip())
    rows.append((pct, n, f[2].strip(), sym))
total_n = sum(r[1] for r in rows)

res = {}
for line in open(f"{d}/run.log"):
    if line.startswith("RESULT"):
        res = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
loads = dict(l.strip().split("=", 1) for l in open(f"{d}/meta.txt") if "=" in l)
wall = float(res.get("median_s", "nan"))
train = case.startswith("train")
gflop = float(res.get("train_gflop" if train else "gflop", "nan"))
sg, bf = float(res.get("sgemm_gflops", "nan")), float(res.get("bf16_gflops", "0"))
rate = gflop / wall

buckets = {n: [0, []] for n, _ in BUCKETS}
buckets["other"] = [0, []]
unmatched = []
for pct, n, dso, sym in rows:
    key = f"{dso}\t{sym}"
    name = next((b for b, r in rx if r.search(key)), "other")
    buckets[name][0] += n
    buckets[name][1].append((n, sym, dso))
    if name == "other":
        unmatched.append((n, sym, dso))

what = (f"SVDiff training step {case[5:]}x{case[5:]} latents, batch 1 (forward {res.get('fwd_s')} s + backward "
        f"{res.get('bwd_s')} s + AdamW {res.get('opt_s')} s)" if train
        else f"UNet forward {case[3:]}x{case[3:]} latents, batch {res.get('B')}")
print(f"Profile of one {what}, compute {compute}, {threads} threads: {wall:.2f} s; {cpu} ({ncpu} cores, {flags.strip() or 'no bf16 flags'}); "
      f"load average (1 min) {loads.get('load_start', '?')} at start, {loads.get('load_end', '?')} at end.")
ceil = bf if compute == "bf16" and bf > 0 else sg
print(f"Executed {gflop:.1f} GFLOP{' (products of the step as src/weights/ chooses them; dense-equivalent forward ' + res['dense_fwd_gflop'] + ' GFLOP)' if train else ' (dense forward)'}"
      f" -> {rate:.0f} GFLOP/s = {100 * rate / sg:.0f}% of sgemm 2048^3 ({sg:.0f} GFLOP/s)"
      + (f", {100 * rate / bf:.0f}% of the bf16 GEMM 2048^3 ({bf:.0f} GFLOP/s)" if bf > 0 else "")
      + " measured in the same process after the step.")
print(f"{total_n} samples at {freq:.0f} Hz = {total_n / freq:.1f} CPU-s sampled over the {wall:.2f} s step "
      f"({total_n / freq / wall:.2f} CPUs busy on average).\n")
print("| bucket | share | CPU s | s of the step | top symbols |")
print("|---|---|---|---|---|")
for name in [n for n, _ in BUCKETS] + ["other"]:
    n, syms = buckets[name]
    syms.sort(reverse=True)
    tops = ", ".join(f"{s} {100 * k / total_n:.1f}%" for k, s, _ in syms[:3] if 100 * k / total_n >= 0.1)
    print(f"| {name} | {100 * n / total_n:.1f}% | {n / freq:.2f} | {wall * n / total_n:.2f} | {tops} |")
gemm = [x for b in ("GEMM compute", "GEMM packing") for x in buckets[b][1]]
ob = sum(k for k, _, dso in gemm if "openblas" in dso)
print(f"\nGEMM (compute + packing) by library: OpenBLAS sgemm {100 * ob / total_n:.1f}%, svdiff's own GEMM "
      f"{100 * (sum(k for k, _, _ in gemm) - ob) / total_n:.1f}% (a symbol's share covers all its callers: in bf16 mode "
      f"the sgemm left is what stays fp32, e.g. attention's products and baking W_eff).")
print(f"\nUnmatched symbols (in \"other\"), top {top}:")
unmatched.sort(reverse=True)
for n, sym, dso in unmatched[:top]:
    print(f"  {100 * n / total_n:5.2f}%  {sym}  [{dso}]")
print(f"\nperf data and logs: {d} (bench/profile_step.sh --report {d} buckets it again)")
EOF
