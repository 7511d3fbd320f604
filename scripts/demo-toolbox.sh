#!/usr/bin/env bash
# Shift toolbox demo (issue 10) on the default model (models/emoji-32): the cat ("sks cat") and
# monkey ("hta monkey") shifts combined into one file, a scale sweep, a rank sweep (limit-rank), a
# style mix by latent resolution, and the table of spectral shifts vs LoRA vs full fine-tuning
# (bench/personalisation.sh, which also trains the cat shifts this demo then reuses).
#   scripts/demo-toolbox.sh [OUT_DIR]        (default out/toolbox)
# Environment: MODEL (models/emoji-32), STEPS (300), LR (5e-3), CFG (1.5, guidance of every sample), CAT_SHIFTS / MONKEY_SHIFTS (reuse
# these shift folders or files instead of training), COMPARE (1; 0 skips the comparison table),
# COMPARE_DIR (reuse the output folder of an earlier bench/personalisation.sh run instead),
# COMPARE_METHODS ("shifts lora full"), MIX_LAYERS (the selector of `shifts mix`, default the
# model's lowest latent resolution, res:8x8 on the default model), SAMPLE_STEPS (25 DDIM steps per
# sample), EVAL_TIMESTEPS / EVAL_DRAWS (10 / 8, the held-out loss as the bench computes it; smaller
# only for quick plumbing tests), THREADS (all cores), SVDIFF (build/svdiff).
set -euo pipefail
cd "$(dirname "$0")/.."
SVDIFF=${SVDIFF:-build/svdiff}
MODEL=${MODEL:-models/emoji-32}
OUT=${1:-out/toolbox}
STEPS=${STEPS:-300}
LR=${LR:-5e-3}
COMPARE=${COMPARE:-1}
COMPARE_METHODS=${COMPARE_METHODS:-shifts lora full}
SAMPLE_STEPS=${SAMPLE_STEPS:-25}
CFG=${CFG:-1.5}
EVAL_TIMESTEPS=${EVAL_TIMESTEPS:-10}
EVAL_DRAWS=${EVAL_DRAWS:-8}
SEED=100
N=4   # images per prompt and model
CAT="an emoji of sks cat, google style"
MONKEY="an emoji of hta monkey, google style"
CAT_DIR=models/demo-subjects/cat/google
MONKEY_DIR=models/demo-subjects/monkey/google
HELD_DIR=models/demo-subjects/cat-heldout/google
SCALES=(0 0.5 1 1.5)
RANKS=(1 4 16)   # and the full shifts
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
mkdir -p "$OUT"
OUT_ABS=$(cd "$OUT" && pwd)
cache="$OUT/svd-cache"
start=$(date +%s)

# gen <out.png> <prompt> <shift flags...>: N samples, seeds SEED.., as the quick start draws them
gen() {
  local out=$1 prompt=$2; shift 2
  "$SVDIFF" generate --model "$MODEL" "$@" --prompt "$prompt" --num-images $N --batch-size $N --steps "$SAMPLE_STEPS" --cfg "$CFG" \
    --seed $SEED --svd-cache "$cache" "${threads[@]}" -o "$out" 2>/dev/null
}
# files <out.png>: the N sample files of a gen call
files() { for k in $(seq 1 $N); do echo "${1%.png}-$k.png"; done; }
# mse <a.png> <b.png>: mean pixel MSE between the samples of two gen calls
mse() {
  local pairs=()
  for k in $(seq 1 $N); do pairs+=("${1%.png}-$k.png" "${2%.png}-$k.png"); done
  "$SVDIFF" compare --json "${pairs[@]}" | sed 's/.*"mean_mse": \([^}]*\)}/\1/'
}
# heldout_loss <shift flags...>: denoising loss of the 6 held-out cat faces, as bench/personalisation.sh
heldout_loss() {
  "$SVDIFF" eval --model "$MODEL" "$@" --images "$HELD_DIR" --prompt "$CAT" --num-timesteps "$EVAL_TIMESTEPS" \
    --noise-draws "$EVAL_DRAWS" --seed 7 --json --svd-cache "$cache" "${threads[@]}" 2>> "$OUT/eval.log" | sed 's/{"loss": \([^,]*\),.*/\1/'
}
# train_subject <dir> <prompt> <out>: spectral shifts as scripts/personalise-demo.sh trains them
train_subject() {
  "$SVDIFF" train --model "$MODEL" --instance-dir "$1" --instance-prompt "$2" --resolution 32 --center-crop \
    --batch-size 4 --steps "$STEPS" --lr "$LR" --lr-1d 1e-4 --train-text-encoder --seed 1 --svd-cache "$cache" \
    --force --quiet "${threads[@]}" -o "$3" > "$3.log" 2>&1 || { tail -20 "$3.log" >&2; exit 1; }
}
# bytes <shift folder or file>: total size of its shift files
bytes() {
  if [ -d "$1" ]; then du -cb "$1"/spectral_shifts*.safetensors | tail -1 | cut -f1; else stat -c %s "$1"; fi
}

echo "== 1/6 shifts vs LoRA vs full fine-tuning (bench/personalisation.sh, $STEPS steps each)"
if [ "$COMPARE" = 1 ] && [ -n "${COMPARE_DIR:-}" ]; then
  # an earlier bench/personalisation.sh output (METHODS="shifts lora full"): its table and cat shifts
  mkdir -p "$OUT/compare"
  cp "$COMPARE_DIR/table.md" "$OUT/compare/table.md"
  [ -z "${CAT_SHIFTS:-}" ] && [ -f "$COMPARE_DIR/train-shifts/spectral_shifts.safetensors" ] && CAT_SHIFTS=$COMPARE_DIR/train-shifts
  cat "$OUT/compare/table.md"
elif [ "$COMPARE" = 1 ]; then
  SVDIFF=$SVDIFF MODEL=$MODEL STEPS=$STEPS LR_SHIFTS=$LR METHODS=$COMPARE_METHODS bench/personalisation.sh \
    "$OUT_ABS/compare" > "$OUT/compare.log" 2>&1 || { tail -20 "$OUT/compare.log" >&2; exit 1; }
  # the bench trains the cat exactly as train_subject does: reuse it
  [ -z "${CAT_SHIFTS:-}" ] && [ -f "$OUT/compare/train-shifts/spectral_shifts.safetensors" ] && CAT_SHIFTS=$OUT/compare/train-shifts
  cat "$OUT/compare/table.md"
else
  echo "   skipped (COMPARE=0)"
fi

echo "== 2/6 subject shifts"
if [ -z "${CAT_SHIFTS:-}" ]; then
  train_subject "$CAT_DIR" "$CAT" "$OUT/sks-cat"
  CAT_SHIFTS=$OUT/sks-cat
fi
if [ -z "${MONKEY_SHIFTS:-}" ]; then
  train_subject "$MONKEY_DIR" "$MONKEY" "$OUT/hta-monkey"
  MONKEY_SHIFTS=$OUT/hta-monkey
fi
echo "   cat: $CAT_SHIFTS; monkey: $MONKEY_SHIFTS"

echo "== 3/6 combine: both subjects in one file"
"$SVDIFF" shifts combine "$CAT_SHIFTS" "$MONKEY_SHIFTS" -o "$OUT/cat+monkey" > "$OUT/combine.log"
sheet_combine=()
for p in cat monkey; do
  prompt=$CAT; [ $p = monkey ] && prompt=$MONKEY
  gen "$OUT/c-base-$p.png" "$prompt"
  gen "$OUT/c-cat-$p.png" "$prompt" --shifts "$CAT_SHIFTS"
  gen "$OUT/c-monkey-$p.png" "$prompt" --shifts "$MONKEY_SHIFTS"
  gen "$OUT/c-both-$p.png" "$prompt" --shifts "$OUT/cat+monkey"
  for m in base cat monkey both; do mapfile -t -O ${#sheet_combine[@]} sheet_combine < <(files "$OUT/c-$m-$p.png"); done
done
"$SVDIFF" grid --cols $((4 * N)) --scale 4 -o "$OUT/combine.png" "${sheet_combine[@]}"
combine_rows=(
  "| sks cat | $(bytes "$CAT_SHIFTS") | $(mse "$OUT/c-base-cat.png" "$OUT/c-cat-cat.png") | $(mse "$OUT/c-cat-cat.png" "$OUT/c-both-cat.png") |"
  "| hta monkey | $(bytes "$MONKEY_SHIFTS") | $(mse "$OUT/c-base-monkey.png" "$OUT/c-monkey-monkey.png") | $(mse "$OUT/c-monkey-monkey.png" "$OUT/c-both-monkey.png") |"
)

echo "== 4/6 scale sweep ${SCALES[*]} (cat)"
sheet_scale=()
scale_rows=()
for s in "${SCALES[@]}"; do
  gen "$OUT/scale-$s.png" "$CAT" --shifts "$CAT_SHIFTS:$s"
  mapfile -t -O ${#sheet_scale[@]} sheet_scale < <(files "$OUT/scale-$s.png")
  loss=$(heldout_loss --shifts "$CAT_SHIFTS:$s")
  [ "$s" = 1 ] && loss_full=$loss
  scale_rows+=("| $s | $(mse "$OUT/c-base-cat.png" "$OUT/scale-$s.png") | $loss |")
done
"$SVDIFF" grid --cols $N --scale 4 -o "$OUT/scale.png" "${sheet_scale[@]}"
# `shifts scale` writes the same shifts as a scale at generate time
"$SVDIFF" shifts scale "$CAT_SHIFTS" 0.5 -o "$OUT/cat-x0.5" > /dev/null
gen "$OUT/scale-file-0.5.png" "$CAT" --shifts "$OUT/cat-x0.5"
scale_check=$(mse "$OUT/scale-0.5.png" "$OUT/scale-file-0.5.png")

echo "== 5/6 rank sweep ${RANKS[*]} full (cat)"
info_json() { "$SVDIFF" shifts info "$1" --json; }
# json_sum <field>: sum of a numeric field over the files of a `shifts info --json` output on stdin
json_sum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9]*\).*/\1/p" | awk '{ s += $1 } END { print s }'; }
full_values=$(info_json "$CAT_SHIFTS" | json_sum shifts)
sheet_rank=()
declare -A KEPT DISK DATA LOSS RDIR
for r in "${RANKS[@]}" full; do
  if [ "$r" = full ]; then
    RDIR[$r]=$CAT_SHIFTS; KEPT[$r]=$full_values; DATA[$r]=$((4 * full_values))
  else
    RDIR[$r]=$OUT/cat-rank$r
    "$SVDIFF" shifts limit-rank "$CAT_SHIFTS" "$r" -o "${RDIR[$r]}" > "${RDIR[$r]}.log"
    KEPT[$r]=$(sed -n 's/.*: \([0-9]*\) of [0-9]* shift values kept.*/\1/p' "${RDIR[$r]}.log" | awk '{ s += $1 } END { print s }')
    DATA[$r]=$(sed -n 's/.*stores \([0-9]*\) bytes of data.*/\1/p' "${RDIR[$r]}.log" | awk '{ s += $1 } END { print s }')
  fi
  DISK[$r]=$(info_json "${RDIR[$r]}" | json_sum size_bytes)
  if [ "$r" = full ]; then
    # the full shifts were drawn and evaluated in the scale sweep (scale 1)
    LOSS[$r]=$loss_full
    for k in $(seq 1 $N); do cp "$OUT/scale-1-$k.png" "$OUT/rank-full-$k.png"; done
  else
    LOSS[$r]=$(heldout_loss --shifts "${RDIR[$r]}")
    gen "$OUT/rank-$r.png" "$CAT" --shifts "${RDIR[$r]}"
  fi
  mapfile -t -O ${#sheet_rank[@]} sheet_rank < <(files "$OUT/rank-$r.png")
done
rank_rows=()
for r in "${RANKS[@]}" full; do
  rank_rows+=("| $r | ${KEPT[$r]} | ${DISK[$r]} | ${DATA[$r]} | ${LOSS[$r]} | $(mse "$OUT/rank-full.png" "$OUT/rank-$r.png") |")
done
"$SVDIFF" grid --cols $N --scale 4 -o "$OUT/rank.png" "${sheet_rank[@]}"

echo "== 6/6 style mix"
if [ -z "${MIX_LAYERS:-}" ]; then
  # the lowest latent resolution (the geometry layers of a small UNet): down_blocks.last + mid + up_blocks.0
  cfg=$MODEL/unet/config.json
  levels=$(tr -d ' \n\t' < "$cfg" | sed -n 's/.*"block_out_channels":\[\([^]]*\)\].*/\1/p' | awk -F, '{ print NF }')
  side=$(tr -d ' \n\t' < "$cfg" | sed -n 's/.*"sample_size":\([0-9]*\).*/\1/p')
  low=$((side >> (levels - 1)))
  MIX_LAYERS="res:${low}x${low}"
  mix_flags=(--levels "$levels" --latent "$side")
else
  mix_flags=()
fi
sheet_mix=()
mix_rows=()
for pair in "cat monkey" "monkey cat"; do
  read -r from rest <<< "$pair"
  a=$CAT_SHIFTS; b=$MONKEY_SHIFTS
  [ "$from" = monkey ] && a=$MONKEY_SHIFTS && b=$CAT_SHIFTS
  dir=$OUT/mix-$from-on-$rest
  # shellcheck disable=SC2086  # MIX_LAYERS may hold several selectors
  "$SVDIFF" shifts mix --from "$a" --layers $MIX_LAYERS "${mix_flags[@]}" --rest "$b" -o "$dir" > "$dir.log"
  for p in cat monkey; do
    prompt=$CAT; [ $p = monkey ] && prompt=$MONKEY
    gen "$dir-$p.png" "$prompt" --shifts "$dir"
    mapfile -t -O ${#sheet_mix[@]} sheet_mix < <(files "$dir-$p.png")
  done
  mix_rows+=("| $MIX_LAYERS of $from, rest of $rest | $(tr '\n' ';' < "$dir.log" | sed 's/wrote [^;]*;//g; s/;$//') |")
done
"$SVDIFF" grid --cols $((2 * N)) --scale 4 -o "$OUT/mix.png" "${sheet_mix[@]}"

{
  echo "Model $MODEL; subject shifts: $STEPS steps, lr $LR, batch 4, text encoder on; samples: $N seeds from $SEED,"
  echo "$SAMPLE_STEPS DDIM steps, cfg $CFG; MSE = mean pixel MSE (RGB in [0, 1]) between samples of the same seeds; held-out"
  echo "loss = denoising loss of the 6 held-out cat faces ($HELD_DIR) under \"$CAT\"."
  echo
  echo "### Combine (\`shifts combine cat monkey\`, the sum)"
  echo
  echo "| subject | its shift files (bytes) | change vs base (MSE) | combined vs its own shifts (MSE) |"
  echo "|---|---|---|---|"
  printf '%s\n' "${combine_rows[@]}"
  echo "combined file: $(bytes "$OUT/cat+monkey") bytes"
  echo
  echo "### Scale sweep (\`generate --shifts cat:S\`)"
  echo
  echo "| scale | change vs base (MSE) | held-out loss |"
  echo "|---|---|---|"
  printf '%s\n' "${scale_rows[@]}"
  echo "\`shifts scale cat 0.5\` file vs \`--shifts cat:0.5\`: MSE $scale_check (0 = the same images)"
  echo
  echo "### Rank sweep (\`shifts limit-rank cat R\`)"
  echo
  echo "kept = shift values left non-zero (norm-gain shifts are kept whole); on disk = \`shifts info\` size (the"
  echo "file keeps its layout, so it loads as before); truncated = data bytes of a layout storing R values per matrix."
  echo
  echo "| rank | values kept | bytes on disk | bytes truncated | held-out loss | vs full rank (MSE) |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rank_rows[@]}"
  echo
  echo "### Style mix (\`shifts mix --from A --layers $MIX_LAYERS ${mix_flags[*]} --rest B\`)"
  echo
  echo "| mix | shifts taken from A |"
  echo "|---|---|"
  printf '%s\n' "${mix_rows[@]}"
  if [ "$COMPARE" = 1 ]; then
    echo
    echo "### Spectral shifts vs LoRA vs full fine-tuning (bench/personalisation.sh, sks cat, ${COMPARE_DIR:-$STEPS steps})"
    echo
    cat "$OUT/compare/table.md"
  fi
} > "$OUT/table.md"
echo
cat "$OUT/table.md"
echo
echo "done in $(( $(date +%s) - start )) s"
echo "sheets (scaled x4, $N seeds per group, same seeds everywhere):"
echo "  $OUT/combine.png  rows: \"$CAT\", \"$MONKEY\"; groups: base | cat shifts | monkey shifts | combined file"
echo "  $OUT/scale.png    rows: cat shifts at scale ${SCALES[*]}"
echo "  $OUT/rank.png     rows: cat shifts limited to rank ${RANKS[*]}, full"
echo "  $OUT/mix.png      rows: $MIX_LAYERS of cat + rest of monkey, then of monkey + rest of cat; groups: cat prompt | monkey prompt"
echo "table: $OUT/table.md"
