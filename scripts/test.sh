#!/usr/bin/env bash
# Installs what is missing, builds the release and the sanitizer (ASan+UBSan) configurations,
# and runs the whole test suite under both, then every fuzz harness for a short budget
# (scripts/fuzz.sh; SVDIFF_FUZZ_SECONDS per harness, default 20, 0 skips fuzzing: each harness
# counts as one test, failed on any finding). Closes with "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
passed=0; failed=0; skipped=0
for kind in release asan; do
  dir=build; [ "$kind" = asan ] && dir=build-asan
  echo "== $kind build =="
  if ! scripts/build.sh "$kind"; then echo "build ($kind) failed"; failed=$((failed + 1)); continue; fi
  echo "== $kind tests =="
  out=$(cd "$dir" && ctest --output-on-failure -j1 2>&1); rc=$?
  printf '%s\n' "$out"
  total=$(printf '%s\n' "$out" | sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' | tail -1)
  nfail=$(printf '%s\n' "$out" | sed -n 's/.*, \([0-9]*\) tests failed out of.*/\1/p' | tail -1)
  nskip=$(printf '%s\n' "$out" | grep -c '(Skipped)' || true)
  total=${total:-0}; nfail=${nfail:-0}
  if [ "$rc" != 0 ] && [ "$nfail" = 0 ]; then nfail=1; fi
  [ "$total" = 0 ] && nfail=$((nfail + 1))
  passed=$((passed + total - nfail - nskip)); failed=$((failed + nfail)); skipped=$((skipped + nskip))
done
fuzz_secs="${SVDIFF_FUZZ_SECONDS:-20}"
if [ "$fuzz_secs" -gt 0 ]; then
  echo "== fuzzing ($fuzz_secs s per harness) =="
  out=$(scripts/fuzz.sh "$fuzz_secs" 2>&1)
  printf '%s\n' "$out"
  nok=$(printf '%s\n' "$out" | grep -c '^fuzz\.[a-z_]*: ok' || true)
  nbad=$(printf '%s\n' "$out" | grep -c '^fuzz\.[a-z_]*: FAILED' || true)
  [ "$nok" = 0 ] && [ "$nbad" = 0 ] && nbad=1   # the fuzz build failed
  passed=$((passed + nok)); failed=$((failed + nbad))
else
  nf=$(ls fuzz/fuzz_*.c | wc -l)
  echo "== fuzzing skipped (SVDIFF_FUZZ_SECONDS=0) =="
  skipped=$((skipped + nf))
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
