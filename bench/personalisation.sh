#!/usr/bin/env bash
# Personalisation measures of issue 7 (and the comparison of issue 10): trains the demo subject
# (4 google cat emoji, "an emoji of sks cat, google style") on the default model with each method,
# then reports per method: training wall time and peak RSS, output size, the held-out denoising
# loss (6 other google cat faces, models/demo-subjects/cat-heldout, same fixed timesteps and noise
# for every model) and the loss on the training images, and drift: mean pixel MSE between base and
# personalised samples of the same seeds, on 10 captions of other emoji (should stay small) and on
# the 5 subject prompts of the quick start (where change is wanted).
#   bench/personalisation.sh [OUT_DIR]     (default bench/out/personalisation-DATE)
# Methods: shifts (spectral shifts, UNet + text encoder), unet (spectral shifts of the UNet only), kv
# (shifts of the UNet's cross-attention keys and values only, --shift-layers), prior (the same with prior preservation:
# the base model's own samples of 48 other captions, bench/prior-captions.txt, trained alongside
# with their captions so the rest of the model's repertoire is held in place), lora, full.
# Environment: MODEL (models/emoji-32), METHODS ("shifts prior full"), STEPS (300), LR_SHIFTS (5e-3),
# LR_FULL (5e-5), LORA_RANK (4), LR_LORA (1e-3), PRIOR_WEIGHT (1), LR_KV (LR_SHIFTS), SHIFT_LAYERS
# (attn2.to_k,attn2.to_v: the kv method's layers), CFG (1.5: guidance of the drift samples), THREADS (all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
SVDIFF=${SVDIFF:-build/svdiff}
MODEL=${MODEL:-models/emoji-32}
OUT=${1:-bench/out/personalisation-$(date +%Y%m%d-%H%M%S)}
METHODS=${METHODS:-shifts prior full}
STEPS=${STEPS:-300}
CFG=${CFG:-1.5}   # guidance scale of every sample
N=4
SEED=100
SUBJECT="an emoji of sks cat, google style"
TRAIN_DIR=models/demo-subjects/cat/google
HELD_DIR=models/demo-subjects/cat-heldout/google
OTHER=(
  "an emoji of birthday cake, food-sweet, google style" "an emoji of house, place-building, google style"
  "an emoji of tiger face, animal-mammal, google style" "an emoji of dog face, animal-mammal, google style"
  "an emoji of thumbs up, hand-fingers-closed, google style" "an emoji of fire, sky & weather, google style"
  "an emoji of grinning face, face-smiling, google style" "an emoji of rocket, transport-air, google style"
  "an emoji of bicycle, transport-ground, google style" "an emoji of sun, sky & weather, google style"
)
SUBJ=(
  "an emoji of sks cat, google style" "an emoji of sks cat with heart eyes, google style"
  "an emoji of sks cat crying, google style" "an emoji of sks cat, twitter style"
  "an emoji of sks cat with a party hat, google style"
)
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
mkdir -p "$OUT"
cache="$OUT/svd-cache"

# samples <tag> <adapter args...>: OUT/<tag>/{o,s}<i>-<k>.png for every other / subject prompt
samples() {
  local tag=$1; shift
  mkdir -p "$OUT/$tag"
  for i in "${!OTHER[@]}"; do
    "$SVDIFF" generate --model "$MODEL" "$@" --prompt "${OTHER[$i]}" --num-images $N --batch-size $N --steps 25 \
      --cfg "$CFG" --seed $SEED "${threads[@]}" -o "$OUT/$tag/o$i.png" >/dev/null 2>&1
  done
  for i in "${!SUBJ[@]}"; do
    "$SVDIFF" generate --model "$MODEL" "$@" --prompt "${SUBJ[$i]}" --num-images $N --batch-size $N --steps 25 \
      --cfg "$CFG" --seed $SEED "${threads[@]}" -o "$OUT/$tag/s$i.png" >/dev/null 2>&1
  done
}
# drift <tag> <o|s> <count>: mean MSE of base vs tag samples
drift() {
  local files=()
  for ((i = 0; i < $3; i++)); do for k in $(seq 1 $N); do files+=("$OUT/base/$2$i-$k.png" "$OUT/$1/$2$i-$k.png"); done; done
  "$SVDIFF" compare --json "${files[@]}" | sed 's/.*"mean_mse": \([^}]*\)}/\1/'
}
# loss <images dir> <model args...>: mean held-out denoising loss
loss() {
  local dir=$1; shift
  "$SVDIFF" eval "$@" --images "$dir" --prompt "$SUBJECT" --num-timesteps 10 --noise-draws 8 --seed 7 --json \
    --svd-cache "$cache" "${threads[@]}" | sed 's/{"loss": \([^,]*\),.*/\1/'
}
# timed <log> <cmd...>: runs cmd, appends wall seconds and peak RSS (MB) to OUT/<log>.time
timed() {
  local log=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/$log.time" "$@" > "$OUT/$log.log" 2>&1
}

echo "base model: $MODEL; $STEPS steps per method; samples at CFG $CFG; output in $OUT" >&2
samples base
declare -A row
row[base]="| base model | - | - | - | $(loss $HELD_DIR --model "$MODEL") | $(loss $TRAIN_DIR --model "$MODEL") | 0 | 0 |"
for m in $METHODS; do
  echo "training: $m" >&2
  case $m in
  shifts)
    timed $m "$SVDIFF" train --model "$MODEL" --instance-dir $TRAIN_DIR --instance-prompt "$SUBJECT" --resolution 32 \
      --center-crop --batch-size 4 --steps "$STEPS" --lr "${LR_SHIFTS:-5e-3}" --lr-1d 1e-4 --train-text-encoder --seed 1 \
      --svd-cache "$cache" --force --quiet "${threads[@]}" -o "$OUT/train-$m"
    args=(--shifts "$OUT/train-$m" --svd-cache "$cache")
    size=$(du -cb "$OUT/train-$m"/spectral_shifts*.safetensors | tail -1 | cut -f1)
    ;;
  unet)   # spectral shifts of the UNet only: the text encoder (and so every prompt's encoding) untouched
    timed $m "$SVDIFF" train --model "$MODEL" --instance-dir $TRAIN_DIR --instance-prompt "$SUBJECT" --resolution 32 \
      --center-crop --batch-size 4 --steps "$STEPS" --lr "${LR_SHIFTS:-5e-3}" --lr-1d 1e-4 --seed 1 \
      --svd-cache "$cache" --force --quiet "${threads[@]}" -o "$OUT/train-$m"
    args=(--shifts "$OUT/train-$m" --svd-cache "$cache")
    size=$(du -cb "$OUT/train-$m"/spectral_shifts*.safetensors | tail -1 | cut -f1)
    ;;
  kv)     # spectral shifts of the UNet's cross-attention keys and values only (--shift-layers, as
          # Custom Diffusion): another prompt's tokens meet the changed projections, nothing else does
    timed $m "$SVDIFF" train --model "$MODEL" --instance-dir $TRAIN_DIR --instance-prompt "$SUBJECT" --resolution 32 \
      --center-crop --batch-size 4 --steps "$STEPS" --lr "${LR_KV:-${LR_SHIFTS:-5e-3}}" --lr-1d 1e-4 --seed 1 \
      --shift-layers "${SHIFT_LAYERS:-attn2.to_k,attn2.to_v}" --svd-cache "$cache" --force --quiet "${threads[@]}" -o "$OUT/train-$m"
    args=(--shifts "$OUT/train-$m" --svd-cache "$cache")
    size=$(du -cb "$OUT/train-$m"/spectral_shifts*.safetensors | tail -1 | cut -f1)
    ;;
  prior)
    # the prior set: one base-model sample per caption, the caption beside it (name.txt)
    mkdir -p "$OUT/prior-class"
    k=0
    while IFS= read -r cap; do
      case "$cap" in ''|'#'*) continue ;; esac
      k=$((k + 1))
      f=$(printf '%s/prior-class/p%03d' "$OUT" "$k")
      [ -f "$f.png" ] || "$SVDIFF" generate --model "$MODEL" --prompt "$cap" --steps 25 --cfg "$CFG" --seed $((1000 + k)) \
        "${threads[@]}" -o "$f.png" >/dev/null 2>&1
      printf '%s\n' "$cap" > "$f.txt"
    done < bench/prior-captions.txt
    timed $m "$SVDIFF" train --model "$MODEL" --instance-dir $TRAIN_DIR --instance-prompt "$SUBJECT" --resolution 32 \
      --center-crop --batch-size 4 --steps "$STEPS" --lr "${LR_SHIFTS:-5e-3}" --lr-1d 1e-4 --train-text-encoder --seed 1 \
      --class-dir "$OUT/prior-class" --class-prompt "an emoji, google style" --num-class-images 0 \
      --prior-loss-weight "${PRIOR_WEIGHT:-1}" --svd-cache "$cache" --force --quiet "${threads[@]}" -o "$OUT/train-$m"
    args=(--shifts "$OUT/train-$m" --svd-cache "$cache")
    size=$(du -cb "$OUT/train-$m"/spectral_shifts*.safetensors | tail -1 | cut -f1)
    ;;
  full)
    timed $m "$SVDIFF" train --mode full --model "$MODEL" --instance-dir $TRAIN_DIR --instance-prompt "$SUBJECT" \
      --resolution 32 --center-crop --batch-size 4 --steps "$STEPS" --lr "${LR_FULL:-5e-5}" --train-text-encoder \
      --seed 1 --save-dtype fp16 --force --quiet "${threads[@]}" -o "$OUT/train-$m"
    args=()
    size=$(du -cb "$OUT/train-$m"/unet/*.safetensors "$OUT/train-$m"/text_encoder/*.safetensors | tail -1 | cut -f1)
    ;;
  lora)
    timed $m "$SVDIFF" train --mode lora --lora-rank "${LORA_RANK:-4}" --model "$MODEL" --instance-dir $TRAIN_DIR \
      --instance-prompt "$SUBJECT" --resolution 32 --center-crop --batch-size 4 --steps "$STEPS" --lr "${LR_LORA:-1e-3}" \
      --train-text-encoder --seed 1 --svd-cache "$cache" --force --quiet "${threads[@]}" -o "$OUT/train-$m"
    args=(--lora "$OUT/train-$m/pytorch_lora_weights.safetensors")
    size=$(stat -c %s "$OUT/train-$m/pytorch_lora_weights.safetensors")
    ;;
  *) echo "unknown method $m" >&2; exit 2 ;;
  esac
  read -r secs rss < "$OUT/$m.time"
  model_args=(--model "$MODEL" "${args[@]}")
  [ "$m" = full ] && model_args=(--model "$OUT/train-$m")
  if [ "$m" = full ]; then samples_model="$MODEL"; MODEL="$OUT/train-$m"; samples $m; MODEL="$samples_model"
  else samples $m "${args[@]}"; fi
  row[$m]="| $m | $size | $secs | $((rss / 1024)) | $(loss $HELD_DIR "${model_args[@]}") | $(loss $TRAIN_DIR "${model_args[@]}") | $(drift $m o ${#OTHER[@]}) | $(drift $m s ${#SUBJ[@]}) |"
done
# scales for the drift column: how far apart the base model's own samples are with another seed
# (same prompt: seed k vs k+1) and with another prompt (same seed: other caption i vs i+1)
ref_pairs() {
  local files=()
  if [ "$1" = seed ]; then
    for ((i = 0; i < ${#OTHER[@]}; i++)); do for ((k = 1; k < N; k++)); do files+=("$OUT/base/o$i-$k.png" "$OUT/base/o$i-$((k + 1)).png"); done; done
  else
    for ((i = 0; i + 1 < ${#OTHER[@]}; i++)); do for k in $(seq 1 $N); do files+=("$OUT/base/o$i-$k.png" "$OUT/base/o$((i + 1))-$k.png"); done; done
  fi
  "$SVDIFF" compare --json "${files[@]}" | sed 's/.*"mean_mse": \([^}]*\)}/\1/'
}
{
  echo "| method | output bytes | train s | peak RSS MB | held-out cat loss | training-image loss | drift, other emoji (MSE) | change, sks prompts (MSE) |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "${row[base]}"
  for m in $METHODS; do echo "${row[$m]}"; done
  echo
  echo "Scale of the drift column, base model alone: another seed, same caption: MSE $(ref_pairs seed);"
  echo "another caption, same seed: MSE $(ref_pairs prompt)."
} | tee "$OUT/table.md"
