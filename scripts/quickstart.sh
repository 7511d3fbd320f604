#!/usr/bin/env bash
# First run on a fresh machine: installs what is missing, builds the command-line tool, and
# personalises the embedded default model (models/emoji-32) on four held-out cat emoji with
# spectral shifts, drawing new prompts with and without them (scripts/personalise-demo.sh).
#   scripts/quickstart.sh [OUT_DIR]        (default out/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "building build/svdiff..."
scripts/build.sh release svdiff >/dev/null
exec scripts/personalise-demo.sh "$@"
