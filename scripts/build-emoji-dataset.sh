#!/usr/bin/env bash
# Builds the emoji data set of the embedded default model (issue 7) into data/emoji/: fetches
# emoji-datasource@16.0.0 with `npm pack` (cached in data/cache/, sha512-checked), extracts only
# emoji.json and the Google and Twitter 32 px sheets, and runs scripts/emoji_dataset.py.
# Usage: scripts/build-emoji-dataset.sh [--install] [--cache DIR] [--out DIR] [--no-demo]
#   --install   apt-get the missing Debian packages (else print the command and stop)
#   --no-demo   do not refresh models/demo-subjects/cat/ (the committed demo images)
set -euo pipefail
cd "$(dirname "$0")/.."
install=0 cache=data/cache out=data/emoji demo=models/demo-subjects/cat
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --cache) cache="$2"; shift ;;
    --out) out="$2"; shift ;;
    --no-demo) demo="" ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "build-emoji-dataset: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
# The registry's dist.integrity of emoji-datasource-16.0.0.tgz, pinned so that a cached tarball
# can be checked offline; `npm view` must agree with it when the registry is reachable.
pinned='sha512-/qHKqK5Nr3+8zhgO6kHmF43Fm5C8HNn0AaFRIpgw8HF3+uF0Vfc8jgLI1ZQS5ba1vBzksS8NBCjHejwLb2D/Sg=='

pkg=emoji-datasource version=16.0.0
# Debian packages: npm (fetch), python3-pil (slicing), unicode-cldr-core (English names).
# npm counts as present when any npm is on PATH (e.g. from Node's own installer), and is only
# needed while the tarball is not cached.
missing=()
for p in python3-pil unicode-cldr-core; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v npm >/dev/null && [ ! -f "$cache/$pkg-$version.tgz" ]; then missing+=(npm); fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  if [ $install = 0 ]; then
    echo "build-emoji-dataset: missing packages: ${missing[*]}; run with --install, or:" >&2
    echo "  $sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cldr=()
for f in /usr/share/unicode/cldr/common/annotations/en.xml /usr/share/unicode/cldr/common/annotationsDerived/en.xml; do
  [ -f "$f" ] || f=$(dpkg -L unicode-cldr-core | grep "/${f#/usr/share/unicode/cldr/common/}\$" | head -n1)
  [ -n "$f" ] && [ -f "$f" ] || { echo "build-emoji-dataset: no CLDR annotations file for $f" >&2; exit 1; }
  cldr+=(--cldr "$f")
done

start=$(date +%s%N)
mkdir -p "$cache"
tarball="$cache/$pkg-$version.tgz"
if [ -f "$tarball" ]; then
  echo "reusing $tarball" >&2
else
  (npm pack "$pkg@$version" --pack-destination "$cache" --silent >/dev/null)
fi
integrity=$(timeout 60 npm view "$pkg@$version" dist.integrity 2>/dev/null || true)
if [ -z "$integrity" ]; then
  echo "build-emoji-dataset: registry unreachable; checking against the pinned sha512" >&2
  integrity=$pinned
elif [ "$integrity" != "$pinned" ]; then
  echo "build-emoji-dataset: registry integrity $integrity differs from the pinned $pinned" >&2
  exit 1
fi
# Only emoji.json and the Google/Twitter sheets leave the archive (explicit tar members): the
# Apple and Facebook images are never extracted or read.
extract="$cache/$pkg-$version"
rm -rf "$extract"
if ! /usr/bin/python3 scripts/emoji_dataset.py extract --tarball "$tarball" --integrity "$integrity" --dest "$extract"; then
  echo "build-emoji-dataset: delete $tarball to fetch it again" >&2
  exit 1
fi
/usr/bin/python3 scripts/emoji_dataset.py build --package "$extract/package" "${cldr[@]}" --out "$out" \
  ${demo:+--demo-dir "$demo"}
echo "built $out/ (captions: $out/captions.tsv) in $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
