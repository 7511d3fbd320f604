#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/fuzz_*.c; scripts/build.sh fuzz -> build-fuzz/) and runs
# each for SECONDS (default 20) on one core, starting from its committed seed corpus
# fuzz/corpus/<name> and regression inputs fuzz/regressions/<name> (new inputs go to build-fuzz/corpus/<name>, never into the source tree) with
# its dictionary fuzz/dict/<name>.dict when there is one. Prints per harness the executions,
# coverage (libFuzzer's final "cov:" edges and "ft:" features), corpus size and findings; a
# finding's input is kept in build-fuzz/findings/<name>/ (turn it into fuzz/regressions/<name>/
# once fixed). Exits non-zero on any finding or failed build.
# Usage: scripts/fuzz.sh [SECONDS] [NAME...]   (names: safetensors, image, ...; default all)
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
shift || true
if ! out=$(scripts/build.sh fuzz 2>&1); then
  printf '%s\n' "$out" | tail -30
  echo "fuzz: build failed"
  exit 1
fi
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.c; do n=$(basename "$f" .c); names+=("${n#fuzz_}"); done
fi
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export SVDIFF_SOURCE_DIR="$PWD" OMP_NUM_THREADS=1
# the harnesses' temp files (inputs written for path-taking parsers): in memory, removed at the end
tmpbase=/dev/shm; [ -d "$tmpbase" ] || tmpbase="${TMPDIR:-/tmp}"
export SVDIFF_FUZZ_TMPDIR="$tmpbase/svdiff-fuzz-run-$$"
mkdir -p "$SVDIFF_FUZZ_TMPDIR"
trap 'rm -rf "$SVDIFF_FUZZ_TMPDIR"' EXIT
failed=0
for name in "${names[@]}"; do
  bin=build-fuzz/fuzz/fuzz_$name
  work=build-fuzz/corpus/$name
  found=build-fuzz/findings/$name
  log=build-fuzz/fuzz-$name.log
  rm -rf "$found"; mkdir -p "$work" "$found"
  dict=(); [ -f "fuzz/dict/$name.dict" ] && dict=(-dict="fuzz/dict/$name.dict")
  seeds=()   # the committed seeds and regression inputs (the latter must stay clean under libFuzzer's limits too)
  for d in "fuzz/corpus/$name" "fuzz/regressions/$name"; do [ -d "$d" ] && seeds+=("$d"); done
  start=$(date +%s)
  "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -close_fd_mask=3 \
    -artifact_prefix="$found/" "${dict[@]}" "$work" "${seeds[@]}" > "$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(printf '%s\n' "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p')
  nfind=$(find "$found" -type f | wc -l)
  if [ "$rc" != 0 ] || [ "$nfind" != 0 ]; then
    failed=$((failed + 1))
    echo "fuzz.$name: FAILED (exit $rc): ${execs:-?} execs in ${took} s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, findings $nfind in $found/ (log: $log)"
    grep -E 'ERROR: |SUMMARY: |runtime error' "$log" | head -5 | sed 's/^/    /'
  else
    echo "fuzz.$name: ok: ${execs:-?} execs in ${took} s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, findings 0"
  fi
done
echo "fuzz: $(( ${#names[@]} - failed )) harnesses clean, $failed with findings"
[ "$failed" = 0 ]
