#!/usr/bin/env bash
# SDXL personalisation, end to end, in minutes on a CPU (issue 22's demonstration). No SDXL weights
# can be downloaded here, so it makes a small SDXL-shaped model with random weights
# (configs/demo-sdxl.json: a first level without attention, transformer_layers_per_block [1, 2, 2],
# the text_time embedding, two text encoders, the second with its projection; v-prediction; no VAE,
# so samples are 32x32 pixels that compare with the photos directly) as a diffusers folder and as
# an sgm single file (scripts/sdxl_single_file.py), then, from the single file, as a user with a downloaded checkpoint:
#   1. `svdiff info` of both layouts, and one image from each (the same pixels);
#   2. samples of the base model: 3 "sks cat" prompts x 4 seeds;
#   3. `svdiff train` of spectral shifts (UNet and both text encoders) on the 4 google cat emoji of
#      models/demo-subjects/cat, with sample grids during training; the loss of the first and the last
#      10% of the steps;
#   4. `svdiff eval` on the 6 held-out cat faces (models/demo-subjects/cat-heldout), the base model and
#      with the shifts (the same noisy inputs);
#   5. the same samples with the shifts (also from the folder: the same pixels), a before/after sheet, and
#      how far each sample is from its nearest photo (per-pixel MSE, `svdiff compare`) of the training
#      cats, the held-out cats and, as a control, the monkeys (models/demo-subjects/monkey).
# Needs build/svdiff (scripts/build.sh release svdiff) and python3.
#   scripts/sdxl-demo.sh [-o OUT_DIR]        (default build/sdxl-demo; rerunning replaces its outputs)
# Environment: STEPS (300), LR (5e-3), CFG (1.5: guidance of the samples), THREADS (all cores).
set -euo pipefail
OUT=
while [ $# -gt 0 ]; do
  case $1 in
  -o|--output) [ $# -ge 2 ] || { echo "sdxl-demo: $1 needs a folder" >&2; exit 2; }; OUT=$2; shift 2 ;;
  -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
  *) echo "sdxl-demo: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] && OUT=$(realpath -m "$OUT")   # -o is relative to where the script was started
cd -P "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/build/sdxl-demo}
SVDIFF=${SVDIFF:-build/svdiff}
[ -x "$SVDIFF" ] || { echo "sdxl-demo: $SVDIFF not found: run scripts/build.sh release svdiff first" >&2; exit 2; }
case "$OUT/" in
"$(pwd)"/build/*) ;;
"$(pwd)"/*) echo "sdxl-demo: -o $OUT is inside the repository (use build/... or a folder outside)" >&2; exit 2 ;;
esac
STEPS=${STEPS:-300}
LR=${LR:-5e-3}
CFG=${CFG:-1.5}
SEED=100
N=4   # seeds per prompt
TOK=models/emoji-32/tokenizer
SUBJECT="an emoji of sks cat, google style"
TRAIN_DIR=models/demo-subjects/cat/google
HELD_DIR=models/demo-subjects/cat-heldout/google
OTHER_DIR=models/demo-subjects/monkey/google
PROMPTS=("$SUBJECT" "an emoji of sks cat with heart eyes, google style" "an emoji of sks cat, twitter style")
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
mkdir -p "$OUT"
rm -rf "${OUT:?}"/{model,before,after,after-folder,sks-cat,svd-cache,check} "$OUT"/model.safetensors "$OUT"/*.png "$OUT"/*.txt
MODEL=$OUT/model.safetensors
single=(--model "$MODEL" --tokenizer "$TOK" --prediction-type v_prediction)   # a single file carries no scheduler config
folder=(--model "$OUT/model")
cache=(--svd-cache "$OUT/svd-cache")
start=$(date +%s)
say() { echo "== $*"; }

say "1/5 an SDXL-shaped model (configs/demo-sdxl.json, random weights): folder and sgm single file"
"$SVDIFF" init --config configs/demo-sdxl.json --tokenizer "$TOK" --seed 1 -o "$OUT/model" | tail -1
python3 scripts/sdxl_single_file.py "$OUT/model" "$MODEL"
"$SVDIFF" info "${folder[@]}" --resolution 32 > "$OUT/info-folder.txt"
"$SVDIFF" info "${single[@]}" --resolution 32 > "$OUT/info-single-file.txt"
grep -E '^(layout|unet|text_encoder_2|total):' "$OUT/info-single-file.txt"
mkdir -p "$OUT/check"
gen1=(--prompt "$SUBJECT" --width 32 --height 32 --steps 25 --cfg "$CFG" --seed $SEED "${threads[@]}")
"$SVDIFF" generate "${folder[@]}" "${gen1[@]}" -o "$OUT/check/folder.png" 2>/dev/null
"$SVDIFF" generate "${single[@]}" "${gen1[@]}" -o "$OUT/check/single-file.png" 2>/dev/null
# pixel_diffs A B [A2 B2 ...]: how many pairs differ in any pixel (the PNG text differs anyway: it
# names the model)
pixel_diffs() {
  "$SVDIFF" compare --json "$@" | python3 -c '
import json, sys
print(sum(p["mse"] != 0 for p in json.load(sys.stdin)["pairs"]))'
}
if [ "$(pixel_diffs "$OUT/check/folder.png" "$OUT/check/single-file.png")" = 0 ]; then same_layouts="the same pixels"
else same_layouts="DIFFERENT pixels"; fi
echo "one image from the folder and from the single file: $same_layouts"

# samples <dir> <model args...>: <dir>/p<i>-<k>.png, prompt i, seed SEED + k - 1
samples() {
  local dir=$1; shift
  mkdir -p "$dir"
  for i in "${!PROMPTS[@]}"; do
    "$SVDIFF" generate "$@" --prompt "${PROMPTS[$i]}" --width 32 --height 32 --num-images $N --batch-size $N \
      --steps 25 --cfg "$CFG" --seed $SEED "${threads[@]}" -o "$dir/p$i.png" >/dev/null 2>&1
  done
}
say "2/5 base-model samples: ${#PROMPTS[@]} prompts x $N seeds"
samples "$OUT/before" "${single[@]}"

say "3/5 training spectral shifts on $TRAIN_DIR (4 images), $STEPS steps, UNet + both text encoders"
t0=$(date +%s)
"$SVDIFF" train "${single[@]}" --instance-dir "$TRAIN_DIR" --instance-prompt "$SUBJECT" --resolution 32 \
  --center-crop --batch-size 4 --steps "$STEPS" --lr "$LR" --lr-1d 1e-4 --train-text-encoder --seed 1 \
  --sample-every $((STEPS / 3)) --sample-prompt "$SUBJECT" --sample-cfg "$CFG" \
  "${cache[@]}" --force --quiet "${threads[@]}" -o "$OUT/sks-cat" > "$OUT/train.log" 2>&1 \
  || { tail -5 "$OUT/train.log" >&2; exit 1; }
train_s=$(( $(date +%s) - t0 ))
loss_ends=$(awk -F, -v n="$STEPS" 'NR > 1 { k = int(n / 10); if (k < 1) k = 1; if ($1 <= k) { a += $2; na++ } if ($1 > n - k) { b += $2; nb++ } }
  END { printf "%.4f %.4f", a / na, b / nb }' "$OUT/sks-cat/loss.csv")
read -r loss_first loss_last <<< "$loss_ends"
echo "training loss, mean of the first 10% of steps: $loss_first; of the last 10%: $loss_last ($train_s s)"

say "4/5 held-out loss (svdiff eval, same noisy inputs): base model and with the shifts"
# evalloss <dir> <model args...>: the mean denoising loss
evalloss() {
  local dir=$1; shift
  "$SVDIFF" eval "$@" --images "$dir" --prompt "$SUBJECT" --resolution 32 --num-timesteps 10 --noise-draws 8 \
    --seed 7 --json "${cache[@]}" "${threads[@]}" 2>/dev/null | sed 's/{"loss": \([^,]*\),.*/\1/'
}
held_base=$(evalloss "$HELD_DIR" "${single[@]}")
held_sks=$(evalloss "$HELD_DIR" "${single[@]}" --shifts "$OUT/sks-cat")
train_base=$(evalloss "$TRAIN_DIR" "${single[@]}")
train_sks=$(evalloss "$TRAIN_DIR" "${single[@]}" --shifts "$OUT/sks-cat")
other_base=$(evalloss "$OTHER_DIR" "${single[@]}")
other_sks=$(evalloss "$OTHER_DIR" "${single[@]}" --shifts "$OUT/sks-cat")
echo "held-out cats: $held_base -> $held_sks; training cats: $train_base -> $train_sks; monkeys: $other_base -> $other_sks"

say "5/5 samples with the shifts, same seeds; distances to the photos"
samples "$OUT/after" "${single[@]}" --shifts "$OUT/sks-cat" "${cache[@]}"
samples "$OUT/after-folder" "${folder[@]}" --shifts "$OUT/sks-cat" "${cache[@]}"
pairs=()
for f in "$OUT"/after/p*-*.png; do pairs+=("$f" "$OUT/after-folder/$(basename "$f")"); done
diff_files="$(pixel_diffs "${pairs[@]}") of $((${#pairs[@]} / 2))"
echo "samples with the shifts, single file vs folder: $diff_files differ in their pixels"
sheet=()
for i in "${!PROMPTS[@]}"; do
  for k in $(seq 1 $N); do sheet+=("$OUT/before/p$i-$k.png"); done
  for k in $(seq 1 $N); do sheet+=("$OUT/after/p$i-$k.png"); done
done
"$SVDIFF" grid --cols $((2 * N)) --scale 3 -o "$OUT/before-after.png" "${sheet[@]}" >/dev/null
"$SVDIFF" grid --cols 4 --scale 3 -o "$OUT/training-images.png" "$TRAIN_DIR"/*.png >/dev/null
# nearest <photos dir> <images...>: the mean over the images of the MSE to the nearest photo
nearest() {
  local dir=$1 pairs=() s p
  shift
  for s in "$@"; do for p in "$dir"/*.png; do pairs+=("$s" "$p"); done; done
  "$SVDIFF" compare --json "${pairs[@]}" | python3 -c '
import json, sys
mse = [p["mse"] for p in json.load(sys.stdin)["pairs"]]
k = int(sys.argv[1])
best = [min(mse[i:i + k]) for i in range(0, len(mse), k)]
print("%.4f" % (sum(best) / len(best)))' "$(ls "$dir"/*.png | wc -l)"
}
{
  echo "SDXL-shaped demo model (configs/demo-sdxl.json, random weights, seed 1), $STEPS steps, lr $LR, CFG $CFG"
  echo "layouts: one image from the folder and from the sgm single file: $same_layouts;"
  echo "  samples with the shifts, single file vs folder: $diff_files differ in their pixels"
  echo "training loss (loss.csv): first 10% of steps $loss_first, last 10% $loss_last; training took $train_s s"
  echo "svdiff eval (10 timesteps x 8 noise draws, seed 7), base -> shifts:"
  echo "  held-out cats $held_base -> $held_sks; training cats $train_base -> $train_sks; monkeys $other_base -> $other_sks"
  echo "mean MSE from each of the $((${#PROMPTS[@]} * N)) samples to its nearest photo, base -> shifts:"
  for set in "training cats:$TRAIN_DIR" "held-out cats:$HELD_DIR" "monkeys (control):$OTHER_DIR"; do
    echo "  ${set%%:*}: $(nearest "${set#*:}" "$OUT"/before/p*-*.png) -> $(nearest "${set#*:}" "$OUT"/after/p*-*.png)"
  done
  echo "  scale: each held-out cat to its nearest training cat $(nearest "$TRAIN_DIR" "$HELD_DIR"/*.png);"
  echo "  each monkey to its nearest training cat $(nearest "$TRAIN_DIR" "$OTHER_DIR"/*.png)"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
echo
echo "done in $(( $(date +%s) - start )) s"
echo "sheet:    $OUT/before-after.png  (one row per prompt: $N base-model samples | $N with the shifts, same seeds)"
for i in "${!PROMPTS[@]}"; do echo "  row $((i + 1)): ${PROMPTS[$i]}"; done
echo "training: $OUT/training-images.png; samples during training: $OUT/sks-cat/samples/"
echo "shifts:   $OUT/sks-cat/spectral_shifts{,_te,_te2}.safetensors"
