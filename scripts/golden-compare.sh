#!/usr/bin/env bash
# Compares two folders written by scripts/golden-outputs.sh file by file with cmp (the SVD cache
# and the log of timings excepted). Prints one line per file and exits 1 on any difference.
#   scripts/golden-compare.sh OLD_DIR NEW_DIR
set -uo pipefail
old=$1 new=$2 bad=0 n=0
while IFS= read -r f; do
  case "$f" in svd-cache/*|log.txt) continue ;; esac
  n=$((n + 1))
  if [ ! -f "$new/$f" ]; then echo "MISSING $f"; bad=1
  elif cmp -s "$old/$f" "$new/$f"; then echo "same    $f"
  else echo "DIFFERS $f"; bad=1; fi
done < <(cd "$old" && find . -type f | sed 's#^\./##' | sort)
extra=$(cd "$new" && find . -type f | sed 's#^\./##' | grep -v -e '^svd-cache/' -e '^log.txt$' | while read -r f; do [ -f "$old/$f" ] || echo "$f"; done)
[ -n "$extra" ] && { echo "NEW FILES: $extra"; bad=1; }
echo "$n files compared: $([ $bad = 0 ] && echo all identical || echo DIFFERENCES)"
exit $bad
