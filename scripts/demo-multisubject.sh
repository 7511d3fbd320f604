#!/usr/bin/env bash
# Multi-subject demo (issue 8): trains two subjects at once on the default model (models/emoji-32),
# "sks cat" (models/demo-subjects/cat/google) and "hta monkey" (models/demo-subjects/monkey/google),
# four ways: Cut-Mix-Unmix with the method's MSE Unmix loss, Cut-Mix-Unmix with the share form
# (--unmix-loss share), Cut-Mix without Unmix, and plain multi-subject (no composites); draws the
# same composite prompts with the same seeds from the base model and each variant into one sheet,
# and measures attention leakage before and after training two ways: on known layouts (composites
# of held-out cat images and the monkeys, noised and denoised once: where the subjects really are)
# and while sampling composite prompts (where the model chose to put them).
#   scripts/demo-multisubject.sh [OUT_DIR]        (default out/multisubject)
# Environment: MODEL (models/emoji-32), STEPS (300 per variant), LR (5e-3), CFG (1.5, guidance of the samples), CUTMIX_PROB (0.6),
# UNMIX_WEIGHT (1, the MSE form), SHARE_WEIGHT (10, the share form), SEEDS (leakage seeds, 4), NEG (negative prompt of the samples, default none;
# e.g. "seam, split image"), SAMPLE_STEPS (25 DDIM steps per sample and leakage image), THREADS (all cores), SVDIFF (build/svdiff).
set -euo pipefail
cd "$(dirname "$0")/.."
SVDIFF=${SVDIFF:-build/svdiff}
MODEL=${MODEL:-models/emoji-32}
OUT=${1:-out/multisubject}
STEPS=${STEPS:-300}
LR=${LR:-5e-3}
CUTMIX_PROB=${CUTMIX_PROB:-0.6}
UNMIX_WEIGHT=${UNMIX_WEIGHT:-1}
SHARE_WEIGHT=${SHARE_WEIGHT:-10}
SEEDS=${SEEDS:-4}
NEG=${NEG:-}
SAMPLE_STEPS=${SAMPLE_STEPS:-25}
CFG=${CFG:-1.5}
SEED=100
N=4   # images per prompt and model
A="sks cat"
B="hta monkey"
A_DIR=models/demo-subjects/cat/google
B_DIR=models/demo-subjects/monkey/google
A_HELD=models/demo-subjects/cat-heldout/google   # no monkey is left over: the 4 training monkeys
TEMPLATE="an emoji of {}, google style"
# The first two are the forms Cut-Mix trains on; the rest are held out.
PROMPTS=(
  "an emoji of $A on the left and $B on the right, google style"
  "an emoji of $A and $B, google style"
  "an emoji of $A next to $B, google style"
  "an emoji of $B on the left and $A on the right, google style"
  "an emoji of $A, google style"
  "an emoji of $B, google style"
)
# Leakage prompts: "label|prompt|phrase owning the left half|phrase owning the right half".
LEAK=(
  "cat left, monkey right (trained form)|an emoji of $A on the left and $B on the right, google style|$A|$B"
  "cat next to monkey (held out)|an emoji of $A next to $B, google style|$A|$B"
  "monkey left, cat right (held out)|an emoji of $B on the left and $A on the right, google style|$B|$A"
)
# Known-layout leakage: "label|prompt|left images|phrase there|right images|phrase there".
LEAK_TF=(
  "cat left, monkey right (trained form)|an emoji of $A on the left and $B on the right, google style|$A_HELD|$A|$B_DIR|$B"
  "cat next to monkey (held out)|an emoji of $A next to $B, google style|$A_HELD|$A|$B_DIR|$B"
  "monkey left, cat right (held out)|an emoji of $B on the left and $A on the right, google style|$B_DIR|$B|$A_HELD|$A"
)
VARIANTS=(cmu share cutmix plain)
declare -A TITLE=([base]="base model (before training)" [cmu]="Cut-Mix-Unmix (MSE)" [share]="Cut-Mix-Unmix (share)"
                  [cutmix]="Cut-Mix, no Unmix" [plain]="plain multi-subject (no composites)")
declare -A ARGS=([cmu]="--cutmix-prob $CUTMIX_PROB --unmix-weight $UNMIX_WEIGHT"
                 [share]="--cutmix-prob $CUTMIX_PROB --unmix-loss share --unmix-weight $SHARE_WEIGHT"
                 [cutmix]="--cutmix-prob $CUTMIX_PROB --unmix-weight 0"
                 [plain]="--cutmix-prob 0 --unmix-weight 0")
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
for d in "$A_DIR" "$B_DIR"; do
  [ -d "$d" ] || { echo "missing $d (subject images)" >&2; exit 1; }
done
mkdir -p "$OUT"
cache="$OUT/svd-cache"
start=$(date +%s)

# set_margs <variant>: margs = the shift flags of a variant (base: none)
set_margs() {
  margs=()
  [ "$1" = base ] || margs=(--shifts "$OUT/$1" --svd-cache "$cache")
}
# json_field <name>: the value of a numeric field of the one-line JSON on stdin
json_field() { sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p"; }

echo "== 1/5 training $A + $B on $MODEL, $STEPS steps per variant: ${VARIANTS[*]}"
declare -A SECS
for v in "${VARIANTS[@]}"; do
  t0=$(date +%s)
  # shellcheck disable=SC2086  # ARGS holds several flags
  "$SVDIFF" train --model "$MODEL" --subject "$A=$A_DIR" --subject "$B=$B_DIR" --prompt-template "$TEMPLATE" \
    ${ARGS[$v]} --resolution 32 --center-crop --batch-size 4 --steps "$STEPS" --lr "$LR" --lr-1d 1e-4 \
    --train-text-encoder --seed 1 --svd-cache "$cache" --force --quiet "${threads[@]}" -o "$OUT/$v" > "$OUT/train-$v.log" 2>&1 \
    || { tail -20 "$OUT/train-$v.log" >&2; exit 1; }
  SECS[$v]=$(( $(date +%s) - t0 ))
  echo "   ${TITLE[$v]}: ${SECS[$v]} s, final loss $(sed -n 's/.*final loss *\([^ ]*\).*/\1/p' "$OUT/train-$v.log")"
done

echo "== 2/5 attention leakage on known layouts, ${#LEAK_TF[@]} composite prompts x held-out cats x monkeys x 5 timesteps"
tf_rows=()
for v in base "${VARIANTS[@]}"; do
  for l in "${LEAK_TF[@]}"; do
    IFS='|' read -r label prompt left_dir left right_dir right <<< "$l"
    set_margs "$v"
    j=$("$SVDIFF" attention-leakage --model "$MODEL" "${margs[@]}" --prompt "$prompt" --token-a "$left" --token-b "$right" \
      --images-a "$left_dir" --images-b "$right_dir" --seed $SEED "${threads[@]}" --json 2>/dev/null)
    tf_rows+=("| ${TITLE[$v]} | $label | $left: $(json_field leakage_a <<< "$j") | $right: $(json_field leakage_b <<< "$j") | $(json_field leakage_mean <<< "$j") | $(json_field token_mass_a <<< "$j") / $(json_field token_mass_b <<< "$j") |")
  done
done

echo "== 3/5 attention leakage while sampling, ${#LEAK[@]} composite prompts x $SEEDS seeds, base model and each variant"
rows=()
for v in base "${VARIANTS[@]}"; do
  for l in "${LEAK[@]}"; do
    IFS='|' read -r label prompt left right <<< "$l"
    set_margs "$v"
    j=$("$SVDIFF" attention-leakage --model "$MODEL" "${margs[@]}" --prompt "$prompt" --token-a "$left" \
      --token-b "$right" --seeds "$SEEDS" --seed $SEED --steps "$SAMPLE_STEPS" --cfg "$CFG" "${threads[@]}" --json 2>/dev/null)
    rows+=("| ${TITLE[$v]} | $label | $left: $(json_field leakage_a <<< "$j") | $right: $(json_field leakage_b <<< "$j") | $(json_field leakage_mean <<< "$j") | $(json_field token_mass_a <<< "$j") / $(json_field token_mass_b <<< "$j") |")
  done
done

echo "== 4/5 sampling ${#PROMPTS[@]} prompts x $N seeds, base model and each variant"
neg=()
[ -n "$NEG" ] && neg=(--negative-prompt "$NEG")
sheet=()
for i in "${!PROMPTS[@]}"; do
  for v in base "${VARIANTS[@]}"; do
    set_margs "$v"
    "$SVDIFF" generate --model "$MODEL" "${margs[@]}" --prompt "${PROMPTS[$i]}" "${neg[@]}" --num-images $N \
      --batch-size $N --steps "$SAMPLE_STEPS" --cfg "$CFG" --seed $SEED "${threads[@]}" -o "$OUT/$v-$i.png" 2>/dev/null
    for k in $(seq 1 $N); do sheet+=("$OUT/$v-$i-$k.png"); done
  done
done

echo "== 5/5 sheets and table"
"$SVDIFF" grid --cols $(((${#VARIANTS[@]} + 1) * N)) --scale 4 -o "$OUT/compositions.png" "${sheet[@]}"
"$SVDIFF" grid --cols 4 --scale 4 -o "$OUT/training-images.png" "$A_DIR"/*.png "$B_DIR"/*.png
{
  echo "Attention leakage: share of each phrase's cross-attention mass in the OTHER subject's half (0.5 = no"
  echo "spatial preference, lower = less leakage), all cross-attention layers; token mass = mean attention"
  echo "probability per position and head on each phrase (left / right)."
  echo "$STEPS steps per variant, lr $LR, batch 4, cutmix prob $CUTMIX_PROB, unmix weight $UNMIX_WEIGHT (MSE) / $SHARE_WEIGHT (share); model $MODEL."
  echo
  echo "On known layouts (\`svdiff attention-leakage --images-a/--images-b\`): every pair of the 6 held-out google"
  echo "cats ($A_HELD) and the 4 monkeys composed as Cut-Mix does, noised to t = 100, 300, 500, 700, 900 with"
  echo "fixed noise and denoised once with the prompt:"
  echo
  echo "| model | prompt | leakage, left phrase | leakage, right phrase | mean | token mass left / right |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${tf_rows[@]}"
  echo
  echo "While sampling ($SEEDS seeds x $SAMPLE_STEPS DDIM steps, cfg $CFG; the halves are where the prompt puts the subjects):"
  echo
  for l in "${LEAK[@]}"; do IFS='|' read -r label prompt _ <<< "$l"; echo "- $label: \"$prompt\""; done
  echo
  echo "| model | prompt | leakage, left phrase | leakage, right phrase | mean | token mass left / right |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "| variant | train flags | train s |"
  echo "|---|---|---|"
  for v in "${VARIANTS[@]}"; do echo "| ${TITLE[$v]} | \`${ARGS[$v]}\` | ${SECS[$v]} |"; done
} > "$OUT/table.md"
echo
cat "$OUT/table.md"
echo
echo "done in $(( $(date +%s) - start )) s"
for v in "${VARIANTS[@]}"; do echo "shifts ($v): $OUT/$v/ ($(du -cb "$OUT/$v"/spectral_shifts*.safetensors | tail -1 | cut -f1) bytes)"; done
echo "training: $OUT/training-images.png (row 1: $A, row 2: $B)"
echo "sheet:    $OUT/compositions.png  (one row per prompt; $N samples each of: base | ${VARIANTS[*]}; same seeds)"
for i in "${!PROMPTS[@]}"; do echo "  row $((i + 1)): ${PROMPTS[$i]}"; done
echo "table:    $OUT/table.md"
