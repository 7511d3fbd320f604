#!/usr/bin/env bash
# ctest script: svdiff as a library others build on. Installs the build into a fresh prefix
# (cmake --install), checks the tree, builds examples/hello.c three ways against the installed copy
# only (pkg-config --cflags --libs svdiff; the CMake package svdiff::svdiff; a static link through
# pkg-config --static), and checks that the programs give the same bytes as the CLI with the same
# settings on the default model: hello's PNG == `svdiff generate`, examples/train.c's shift file
# == `svdiff train`, and a run the cancel callback stopped (within one step, exit 3) resumes from
# its checkpoint to that same shift file.
#   tests/pkg_install.sh CASE BUILD_DIR SOURCE_DIR WORK_DIR CMAKE CC [CFLAGS...]
# CASE install: install and build (the ctest fixture of the others); generate; train; cancel (after
# train: it compares with train's CLI output).
set -euo pipefail
CASE=$1 BUILD=$2 SRC=$3 WORK=$4 CMAKE=$5 CC=$6
shift 6
CFLAGS=("$@")   # the sanitizer flags of an ASan build: the installed library needs their runtime
fail() { echo "pkg_install $CASE: $*" >&2; exit 1; }
P=$WORK/prefix
export PKG_CONFIG_PATH=$P/lib/pkgconfig LD_LIBRARY_PATH=$P/lib

if [ "$CASE" = install ]; then
rm -rf "$WORK"; mkdir -p "$WORK"
"$CMAKE" --install "$BUILD" --prefix "$P" >"$WORK/install.log" || fail "cmake --install $BUILD failed (see $WORK/install.log)"

# the tree
for f in lib/libsvdiff.so lib/libsvdiff.so.0 lib/libsvdiff.so.0.1.0 lib/libsvdiff.a include/svdiff.h bin/svdiff \
         lib/pkgconfig/svdiff.pc lib/cmake/svdiff/svdiffConfig.cmake lib/cmake/svdiff/svdiffConfigVersion.cmake \
         lib/cmake/svdiff/svdiffTargets.cmake; do
  [ -e "$P/$f" ] || fail "the install lacks $f"
done
[ "$(readlink "$P/lib/libsvdiff.so")" = libsvdiff.so.0 ] || fail "lib/libsvdiff.so does not link to libsvdiff.so.0"
[ "$(readlink "$P/lib/libsvdiff.so.0")" = libsvdiff.so.0.1.0 ] || fail "lib/libsvdiff.so.0 does not link to libsvdiff.so.0.1.0"
soname=$(readelf -d "$P/lib/libsvdiff.so.0.1.0" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libsvdiff.so.0 ] || fail "SONAME is '$soname', not libsvdiff.so.0"
# the public header stands alone: no engine header comes with it
grep -q '#include "' "$P/include/svdiff.h" && fail "the installed svdiff.h includes a local header"

# three builds against the installed copy, nothing from the source tree but the examples
[ "$(pkg-config --modversion svdiff)" = 0.1.0 ] || fail "pkg-config --modversion svdiff: $(pkg-config --modversion svdiff)"
# a program links the library alone: its dependencies stay private to it
libs=$(pkg-config --libs svdiff)
[[ $libs =~ ^-L[^\ ]+\ -lsvdiff\ *$ ]] || fail "pkg-config --libs svdiff gives '$libs', not -L... -lsvdiff alone"
grep -q INTERFACE_LINK_LIBRARIES "$P/lib/cmake/svdiff/svdiffTargets.cmake" && fail "svdiff::svdiff passes link libraries on to its users"
# the installed header compiles clean in strict C11
STRICT=(-std=c11 -Wall -Wextra -pedantic -Werror)
# shellcheck disable=SC2046
"$CC" "${STRICT[@]}" "${CFLAGS[@]}" -o "$WORK/hello" "$SRC/examples/hello.c" $(pkg-config --cflags --libs svdiff) || fail "building hello with pkg-config failed"
# shellcheck disable=SC2046
"$CC" "${STRICT[@]}" "${CFLAGS[@]}" -o "$WORK/train" "$SRC/examples/train.c" $(pkg-config --cflags --libs svdiff) || fail "building train with pkg-config failed"
# static: libsvdiff.a and the libraries of Libs.private
# shellcheck disable=SC2046
"$CC" "${CFLAGS[@]}" -o "$WORK/hello-static" "$SRC/examples/hello.c" $(pkg-config --cflags svdiff) \
  $(pkg-config --static --libs svdiff | sed 's/-lsvdiff\b/-l:libsvdiff.a/') || fail "linking hello statically with pkg-config --static failed"
if readelf -d "$WORK/hello-static" | grep -q 'libsvdiff\.so'; then fail "hello-static needs libsvdiff.so"; fi
"$CMAKE" -S "$SRC/tests/api_client" -B "$WORK/cmake-client" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_C_COMPILER="$CC" \
  "-DCMAKE_C_FLAGS=${CFLAGS[*]}" >"$WORK/cmake-client.log" 2>&1 || fail "configuring tests/api_client with find_package(svdiff) failed (see $WORK/cmake-client.log)"
"$CMAKE" --build "$WORK/cmake-client" >>"$WORK/cmake-client.log" 2>&1 || fail "building tests/api_client failed (see $WORK/cmake-client.log)"
# the dynamic programs run on the installed library, not on the build's
for exe in "$WORK/hello" "$WORK/train" "$WORK/cmake-client/hello"; do
  lib=$(ldd "$exe" | sed -n 's/.*libsvdiff\.so\.0 => \([^ ]*\).*/\1/p')
  [ "$lib" -ef "$P/lib/libsvdiff.so.0" ] || fail "$exe loads libsvdiff.so.0 from '$lib', not from the install"
  needed=$(readelf -d "$exe" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | grep -Ev '^(libsvdiff\.so\.0|libc\.so\.6|libasan\.so.*|libubsan\.so.*)$' || true)
  [ -z "$needed" ] || fail "$exe needs more than libsvdiff.so.0 and libc: $needed"
done
# the README shows the program these tests build
awk '/^<!-- examples\/hello.c/ {on = 1; next} on && /^```c$/ {next} on && /^```$/ {exit} on' "$SRC/README.md" \
  | cmp -s - "$SRC/examples/hello.c" || fail "README.md's listing of examples/hello.c differs from the file"
echo "installed into $P; hello, train (pkg-config), hello-static (pkg-config --static), cmake-client/hello (svdiff::svdiff) built"
exit 0
fi
[ -x "$WORK/cmake-client/hello" ] || fail "no installed copy in $WORK (the pkg.install test makes it)"

# Same bytes as the CLI. Every run works in the source folder with the same relative paths (PNG text
# and shift-file history record them), 2 threads, its own SVD cache. SVDIFF_NO_REEXEC: the CLI
# runs in the environment the library's programs get (it would otherwise re-exec itself with
# OPENBLAS_CORETYPE on a CPU OpenBLAS does not know); passive OpenMP waiting, as the CLI sets it
# (spinning threads on a loaded machine made a 20-step generate take 138 s instead of ~15).
cd "$SRC"
export OMP_NUM_THREADS=2 SVDIFF_CACHE_DIR=$WORK/svd-cache SVDIFF_NO_REEXEC=1 OMP_WAIT_POLICY=passive
SV=$P/bin/svdiff
M=models/emoji-32 IMAGES=models/demo-subjects/cat/google PROMPT="an emoji of sks cat"
shifts=spectral_shifts.safetensors
case $CASE in
generate)
"$SV" generate --model $M --prompt "an emoji of a cat" --steps 4 --threads 2 -o "$WORK/cli.png" >"$WORK/cli-generate.log" 2>&1 \
  || fail "svdiff generate failed: $(tail -1 "$WORK/cli-generate.log")"
for exe in hello hello-static cmake-client/hello; do
  "$WORK/$exe" $M "an emoji of a cat" "$WORK/$exe.png" 4 || fail "$exe failed"
  cmp "$WORK/cli.png" "$WORK/$exe.png" || fail "$exe's PNG differs from svdiff generate's"
  echo "same PNG bytes: $exe == svdiff generate"
done ;;
train)
rm -rf "$WORK/cli-train" "$WORK/api-train"
"$SV" train --model $M --instance-dir $IMAGES --instance-prompt "$PROMPT" --steps 3 --checkpoint-every 1 --threads 2 \
  --quiet -o "$WORK/cli-train" >"$WORK/cli-train.log" 2>&1 || fail "svdiff train failed: $(tail -1 "$WORK/cli-train.log")"
"$WORK/train" $M $IMAGES "$PROMPT" "$WORK/api-train" 3 0 1 >"$WORK/api-train.log" || fail "train failed: $(tail -1 "$WORK/api-train.log")"
cmp "$WORK/cli-train/$shifts" "$WORK/api-train/$shifts" || fail "train's shift file differs from svdiff train's"
echo "same shift-file bytes: train == svdiff train" ;;
cancel)
[ -e "$WORK/cli-train/$shifts" ] || fail "no svdiff train output in $WORK/cli-train (the pkg.train test makes it)"
rm -rf "$WORK/cancel"

# cancel: the callback asks to stop once 2 steps are done; the run returns SVDIFF_ERR_CANCELLED (exit
# 3) without starting step 3, leaves no shift file but a checkpoint, and --resume finishes the run
rc=0; "$WORK/train" $M $IMAGES "$PROMPT" "$WORK/cancel" 3 2 1 >"$WORK/cancel.log" || rc=$?
[ $rc = 3 ] || fail "the cancelled run exited $rc, not 3 (SVDIFF_ERR_CANCELLED): $(tail -1 "$WORK/cancel.log")"
grep -q "^cancelled after step 2$" "$WORK/cancel.log" || fail "the cancelled run did not stop after step 2: $(tail -2 "$WORK/cancel.log")"
grep -q "^step 3/" "$WORK/cancel.log" && fail "the cancelled run finished step 3"
[ -e "$WORK/cancel/$shifts" ] && fail "the cancelled run wrote the final $shifts"
"$WORK/train" $M $IMAGES "$PROMPT" "$WORK/cancel" 3 0 1 --resume >"$WORK/resume.log" || fail "resuming the cancelled run failed: $(tail -1 "$WORK/resume.log")"
grep -q "^step 3/3" "$WORK/resume.log" || fail "the resumed run did not start at step 3"
grep -q "^step 1/3" "$WORK/resume.log" && fail "the resumed run started again at step 1"
cmp "$WORK/cli-train/$shifts" "$WORK/cancel/$shifts" || fail "cancelled + resumed shift file differs from svdiff train's"
echo "cancelled after step 2, resumed: same shift-file bytes as svdiff train" ;;
*) fail "unknown case (install, generate, train or cancel)" ;;
esac
