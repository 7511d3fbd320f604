#!/usr/bin/env bash
# Rebuilds the embedded default model (models/emoji-32, issue 7) from nothing: the emoji data set,
# a BPE tokenizer learned from its captions, a random initialisation from
# configs/default-model.json, and full-weight pretraining with `svdiff pretrain` in two phases, as
# the shipped model was made (models/emoji-32/TRAINING.md):
#   1. 2000 steps predicting the noise (epsilon): fast to learn, but with the capped cosine schedule
#      the first sampling step divides the noise error by sqrt(alphas_cumprod) (34x at t=981,
#      2e4x at t=999), so samples came out as clipped colour blotches;
#   2. 500 steps continuing from phase 1 with v-prediction (x0 = sqrt(a) x_t - sqrt(1-a) v has no
#      such division), at a lower learning rate.
# Each phase resumes from its last checkpoint when the script is run again after a kill. About
# 1 h 50 min on 2 idle cores.
#   scripts/pretrain-default-model.sh [WORK_DIR]     (default out/pretrain)
# Environment: STEPS (2600), THREADS (all cores). The result is copied to models/emoji-32 only
# with INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-out/pretrain}
STEPS=${STEPS:-2000}      # phase 1
STEPS_V=${STEPS_V:-500}   # phase 2
SVDIFF=build/svdiff
scripts/install-deps.sh
scripts/build.sh release >/dev/null
[ -f data/emoji/pretrain.tsv ] || scripts/build-emoji-dataset.sh --install
mkdir -p "$WORK"
[ -f "$WORK/tok/vocab.json" ] || "$SVDIFF" tokenizer-train --captions data/emoji/captions.tsv --column 2 --vocab-size 4096 -o "$WORK/tok"
if [ ! -f "$WORK/init/model_index.json" ]; then
  "$SVDIFF" init --config configs/default-model.json --tokenizer "$WORK/tok" --seed 1 -o "$WORK/init"
  sed -i 's/"v_prediction"/"epsilon"/' "$WORK/init/scheduler/scheduler_config.json"   # phase 1 predicts the noise
fi
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
# phase <init dir> <out dir> <steps> <lr> <warmup> <sample every>
phase() {
  local resume=()
  [ -f "$2/model_index.json" ] && return 0   # done
  [ -f "$2/checkpoint.safetensors" ] && resume=(--resume)
  "$SVDIFF" pretrain --model "$1" --data data/emoji/pretrain.tsv \
  --steps "$3" --batch-size 32 --lr "$4" --warmup "$5" --ema-decay 0.999 --caption-dropout 0.1 \
  --checkpoint-every 100 --sample-every "$6" --sample-steps 25 --sample-cfg 3 --seed 1 --save-dtype fp16 \
  --sample-prompt "an emoji of grinning face, face-smiling, google style" \
  --sample-prompt "an emoji of red heart, heart, twitter style" \
  --sample-prompt "an emoji of dog face, animal-mammal, google style" \
  --sample-prompt "an emoji of rocket, transport-air, twitter style" \
  --sample-prompt "an emoji of pizza, food-prepared, google style" \
  --sample-prompt "an emoji of dog face, animal-mammal, twitter style" \
  "${threads[@]}" "${resume[@]}" -o "$2"
}
phase "$WORK/init" "$WORK/emoji-eps" "$STEPS" 5e-4 100 500
if [ ! -f "$WORK/init-v/model_index.json" ]; then
  rm -rf "$WORK/init-v" && mkdir -p "$WORK/init-v"
  cp -r "$WORK/emoji-eps"/{model_index.json,scheduler,text_encoder,tokenizer,unet} "$WORK/init-v/"
  sed -i 's/"epsilon"/"v_prediction"/' "$WORK/init-v/scheduler/scheduler_config.json"
fi
phase "$WORK/init-v" "$WORK/emoji" "$STEPS_V" 2e-4 20 250
if [ "${INSTALL:-0}" = 1 ]; then
  rm -rf models/emoji-32.new
  mkdir -p models/emoji-32.new
  cp -r "$WORK/emoji"/{model_index.json,scheduler,text_encoder,tokenizer,unet} models/emoji-32.new/
  rm -rf models/emoji-32 && mv models/emoji-32.new models/emoji-32
  echo "installed models/emoji-32"
fi
