#!/usr/bin/env bash
# Rebuilds the embedded default model (models/emoji-32, issue 7) from nothing: the emoji data set,
# a BPE tokenizer learned from its captions, a random initialisation from
# configs/default-model.json, and full-weight pretraining with `svdiff pretrain` (resumable: run
# the script again after a kill and it continues from the last checkpoint). About 1 h 45 min on
# 2 idle cores (2600 steps at ~2.4 s/step); the log summary of the shipped run is in
# models/emoji-32/TRAINING.md.
#   scripts/pretrain-default-model.sh [WORK_DIR]     (default out/pretrain)
# Environment: STEPS (2600), THREADS (all cores). The result is copied to models/emoji-32 only
# with INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-out/pretrain}
STEPS=${STEPS:-2600}
SVDIFF=build/svdiff
scripts/install-deps.sh
scripts/build.sh release >/dev/null
[ -f data/emoji/pretrain.tsv ] || scripts/build-emoji-dataset.sh --install
mkdir -p "$WORK"
[ -f "$WORK/tok/vocab.json" ] || "$SVDIFF" tokenizer-train --captions data/emoji/captions.tsv --column 2 --vocab-size 4096 -o "$WORK/tok"
[ -f "$WORK/init/model_index.json" ] || "$SVDIFF" init --config configs/default-model.json --tokenizer "$WORK/tok" --seed 1 -o "$WORK/init"
resume=()
[ -f "$WORK/emoji/checkpoint.safetensors" ] && resume=(--resume)
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
"$SVDIFF" pretrain --model "$WORK/init" --data data/emoji/pretrain.tsv \
  --steps "$STEPS" --batch-size 32 --lr 5e-4 --warmup 100 --ema-decay 0.999 --caption-dropout 0.1 \
  --checkpoint-every 100 --sample-every 500 --sample-steps 25 --sample-cfg 3 --seed 1 --save-dtype fp16 \
  --sample-prompt "an emoji of grinning face, face-smiling, google style" \
  --sample-prompt "an emoji of red heart, heart, twitter style" \
  --sample-prompt "an emoji of dog face, animal-mammal, google style" \
  --sample-prompt "an emoji of rocket, transport-air, twitter style" \
  --sample-prompt "an emoji of pizza, food-prepared, google style" \
  --sample-prompt "an emoji of dog face, animal-mammal, twitter style" \
  "${threads[@]}" "${resume[@]}" -o "$WORK/emoji"
if [ "${INSTALL:-0}" = 1 ]; then
  rm -rf models/emoji-32.new
  mkdir -p models/emoji-32.new
  cp -r "$WORK/emoji"/{model_index.json,scheduler,text_encoder,tokenizer,unet} models/emoji-32.new/
  rm -rf models/emoji-32 && mv models/emoji-32.new models/emoji-32
  echo "installed models/emoji-32"
fi
