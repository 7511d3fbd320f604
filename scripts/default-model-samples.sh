#!/usr/bin/env bash
# Sample sheet of the default model (issue 7): 16 training captions and 8 novel ones (new
# combinations of names, colours and styles never seen as a caption), 2 seeds each, next to the
# training image where there is one.
#   scripts/default-model-samples.sh [OUT_DIR]      (default out/default-model-samples)
# Environment: MODEL (models/emoji-32), STEPS (25), CFG (1.5).
set -euo pipefail
cd "$(dirname "$0")/.."
SVDIFF=build/svdiff
MODEL=${MODEL:-models/emoji-32}
OUT=${1:-out/default-model-samples}
STEPS=${STEPS:-25}
CFG=${CFG:-1.5}
mkdir -p "$OUT"
TRAIN=(
  "red apple, food-fruit, google style" "blue heart, heart, twitter style" "crown, clothing, google style"
  "four leaf clover, plant-other, twitter style" "frog, animal-amphibian, google style" "ghost, face-costume, twitter style"
  "guitar, musical-instrument, google style" "hamburger, food-prepared, twitter style" "light bulb, light & video, google style"
  "loudly crying face, face-concerned, twitter style" "party popper, event, google style" "penguin, animal-bird, twitter style"
  "rainbow, sky & weather, google style" "smiling face with heart-eyes, face-affection, twitter style"
  "snowman, sky & weather, google style" "star, sky & weather, twitter style"
)
NOVEL=(
  "green apple heart" "frog with a crown" "ghost with heart-eyes" "blue star" "penguin with a guitar"
  "red umbrella with a rainbow" "smiling sun face" "loudly crying frog"
)
row=()
for i in "${!TRAIN[@]}"; do
  "$SVDIFF" generate --model "$MODEL" --prompt "an emoji of ${TRAIN[$i]}" --num-images 2 --batch-size 2 --steps "$STEPS" \
    --cfg "$CFG" --seed 1 -o "$OUT/train-$i.png" 2>/dev/null >/dev/null
  row+=("$OUT/train-$i-1.png" "$OUT/train-$i-2.png")
done
for i in "${!NOVEL[@]}"; do
  style=google; [ $((i % 2)) = 1 ] && style=twitter
  "$SVDIFF" generate --model "$MODEL" --prompt "an emoji of ${NOVEL[$i]}, $style style" --num-images 2 --batch-size 2 \
    --steps "$STEPS" --cfg "$CFG" --seed 1 -o "$OUT/novel-$i.png" 2>/dev/null >/dev/null
  row+=("$OUT/novel-$i-1.png" "$OUT/novel-$i-2.png")
done
"$SVDIFF" grid --cols 8 --scale 3 -o "$OUT/sheet.png" "${row[@]}"
echo "sheet: $OUT/sheet.png (4 captions a row, 2 seeds each; rows 1-4: training captions, rows 5-6: novel)"
for i in "${!TRAIN[@]}"; do echo "  train $((i + 1)): an emoji of ${TRAIN[$i]}"; done
for i in "${!NOVEL[@]}"; do s=google; [ $((i % 2)) = 1 ] && s=twitter; echo "  novel $((i + 1)): an emoji of ${NOVEL[$i]}, $s style"; done
