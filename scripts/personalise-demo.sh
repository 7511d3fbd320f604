#!/usr/bin/env bash
# The quick start's demo (issue 7): personalises the embedded default model (models/emoji-32) on
# four held-out cat emoji with spectral shifts, then draws new prompts with the base model and
# with the shifts, same seeds, into one sheet. Needs build/svdiff (scripts/build.sh release).
#   scripts/personalise-demo.sh [OUT_DIR]        (default out/quickstart)
# Environment: MODEL (default models/emoji-32), STEPS (300), LR (see below), CFG (1.5: guidance scale
# of the samples), THREADS (all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
SVDIFF=build/svdiff
MODEL=${MODEL:-models/emoji-32}
OUT=${1:-out/quickstart}
STEPS=${STEPS:-300}
LR=${LR:-5e-3}
CFG=${CFG:-1.5}
SEED=100
N=4   # images per prompt and model
PROMPTS=(
  "an emoji of sks cat, google style"
  "an emoji of sks cat with heart eyes, google style"
  "an emoji of sks cat crying, google style"
  "an emoji of sks cat, twitter style"
  "an emoji of sks cat with a party hat, google style"
)
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
mkdir -p "$OUT"
start=$(date +%s)

echo "== 1/3 personalising $MODEL on models/demo-subjects/cat/google (4 images), $STEPS steps"
"$SVDIFF" train --model "$MODEL" --instance-dir models/demo-subjects/cat/google \
  --instance-prompt "an emoji of sks cat, google style" --resolution 32 --center-crop \
  --batch-size 4 --steps "$STEPS" --lr "$LR" --lr-1d 1e-4 --train-text-encoder --seed 1 \
  --svd-cache "$OUT/svd-cache" --force "${threads[@]}" -o "$OUT/sks-cat"

echo "== 2/3 sampling ${#PROMPTS[@]} prompts x $N seeds, base model and with the shifts"
sheet=()
for i in "${!PROMPTS[@]}"; do
  for which in base sks; do
    extra=()
    [ "$which" = sks ] && extra=(--shifts "$OUT/sks-cat" --svd-cache "$OUT/svd-cache")
    "$SVDIFF" generate --model "$MODEL" --prompt "${PROMPTS[$i]}" --num-images $N --batch-size $N \
      --steps 25 --cfg "$CFG" --seed $SEED "${extra[@]}" "${threads[@]}" -o "$OUT/$which-$i.png" 2>/dev/null
    for k in $(seq 1 $N); do sheet+=("$OUT/$which-$i-$k.png"); done
  done
done

echo "== 3/3 sheets"
"$SVDIFF" grid --cols $((2 * N)) --scale 4 -o "$OUT/comparison.png" "${sheet[@]}"
"$SVDIFF" grid --cols 4 --scale 4 -o "$OUT/training-images.png" models/demo-subjects/cat/google/*.png
size() { stat -c %s "$1"; }
unet_bytes=$(size "$OUT/sks-cat/spectral_shifts.safetensors")
te_bytes=$(size "$OUT/sks-cat/spectral_shifts_te.safetensors")
echo
echo "done in $(( $(date +%s) - start )) s"
echo "shifts:   $OUT/sks-cat/spectral_shifts.safetensors ($unet_bytes bytes) + spectral_shifts_te.safetensors ($te_bytes bytes)"
echo "training: $OUT/training-images.png"
echo "sheet:    $OUT/comparison.png  (one row per prompt: $N base-model samples | $N with the shifts, same seeds)"
for i in "${!PROMPTS[@]}"; do echo "  row $((i + 1)): ${PROMPTS[$i]}"; done
