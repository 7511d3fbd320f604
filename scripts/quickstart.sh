#!/usr/bin/env bash
# First run on a fresh machine: install what is missing, build, and run svdiff's main job.
# Until the embedded default model exists, that job is `svdiff selfcheck`: it trains the
# spectral shifts of a tiny random network end to end and prints every step it verifies.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release >/dev/null
exec build/svdiff selfcheck "$@"
