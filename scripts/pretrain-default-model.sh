#!/usr/bin/env bash
# Rebuilds the embedded default model (models/emoji-32, issue 7) from nothing: the emoji data set,
# a BPE tokenizer learned from its captions, a random initialisation from
# configs/default-model.json, and full-weight pretraining with `svdiff pretrain`, as the shipped
# model was made (models/emoji-32/TRAINING.md): v-prediction from the first step (an
# epsilon-prediction model's first sampling step divides its noise error by sqrt(alphas_cumprod),
# 34x at t=981 with the capped cosine schedule, and its samples came out as clipped blotches),
# bf16 matrix products with fp32 accumulation and fp32 master weights (1.4 s/step against 1.7 s
# for fp32 on 2 idle cores; 1.9-2.1 s/step were seen on this shared machine), EMA of the weights
# saved as the model. 3,000 steps of batch 32 (96,000 images, 12.8 epochs).
# Resumes from its last checkpoint when run again after a kill. 70-105 min on 2 cores.
#   scripts/pretrain-default-model.sh [WORK_DIR]     (default out/pretrain)
# Environment: STEPS (3000), LR (5e-4), DTYPE (bf16), THREADS (all cores). The result is copied to
# models/emoji-32 only with INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-out/pretrain}
STEPS=${STEPS:-3000}
LR=${LR:-5e-4}
DTYPE=${DTYPE:-bf16}
SVDIFF=build/svdiff
scripts/install-deps.sh
scripts/build.sh release svdiff >/dev/null
[ -f data/emoji/pretrain.tsv ] || scripts/build-emoji-dataset.sh --install
mkdir -p "$WORK"
[ -f "$WORK/tok/vocab.json" ] || "$SVDIFF" tokenizer-train --captions data/emoji/captions.tsv --column 2 --vocab-size 4096 -o "$WORK/tok"
[ -f "$WORK/init/model_index.json" ] || "$SVDIFF" init --config configs/default-model.json --tokenizer "$WORK/tok" --seed 1 -o "$WORK/init"
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
resume=()
if [ ! -f "$WORK/emoji/model_index.json" ]; then
  [ -f "$WORK/emoji/checkpoint.safetensors" ] && resume=(--resume)
  "$SVDIFF" pretrain --model "$WORK/init" --data data/emoji/pretrain.tsv \
    --steps "$STEPS" --batch-size 32 --lr "$LR" --warmup 100 --ema-decay 0.999 --caption-dropout 0.1 \
    --compute-dtype "$DTYPE" --checkpoint-every 100 --sample-every 500 --sample-steps 25 --sample-cfg 3 \
    --seed 1 --save-dtype fp16 \
    --sample-prompt "an emoji of grinning face, face-smiling, google style" \
    --sample-prompt "an emoji of red heart, heart, twitter style" \
    --sample-prompt "an emoji of dog face, animal-mammal, google style" \
    --sample-prompt "an emoji of rocket, transport-air, twitter style" \
    --sample-prompt "an emoji of pizza, food-prepared, google style" \
    --sample-prompt "an emoji of dog face, animal-mammal, twitter style" \
    "${threads[@]}" "${resume[@]}" -o "$WORK/emoji"
fi
if [ "${INSTALL:-0}" = 1 ]; then
  rm -rf models/emoji-32.new
  mkdir -p models/emoji-32.new
  cp -r "$WORK/emoji"/{model_index.json,scheduler,text_encoder,tokenizer,unet} models/emoji-32.new/
  rm -rf models/emoji-32 && mv models/emoji-32.new models/emoji-32
  echo "installed models/emoji-32"
fi
