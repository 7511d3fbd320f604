#!/usr/bin/env bash
# Editing demo (issue 9): `svdiff edit` on the default model (models/emoji-32): a grinning face
# given heart eyes, a red heart turned blue, and the reconstruction check on 5 held-out emoji
# (PSNR of the source prompt sampled back from the DDIM inversion vs from seeded noise,
# --no-inversion). Needs data/emoji (scripts/build-emoji-dataset.sh) and build/svdiff.
#   scripts/demo-edit.sh [OUT_DIR]        (default out/edit)
# Environment: MODEL (models/emoji-32), STEPS (300 fine-tuning steps per image), LR (5e-3), CFG (1.5,
# guidance of the edits),
# SAMPLE_STEPS (50 DDIM steps of inversion and sampling), SLERP (0.3, the extra edit of each demo
# row), THREADS (all cores), SVDIFF (build/svdiff).
set -euo pipefail
cd "$(dirname "$0")/.."
SVDIFF=${SVDIFF:-build/svdiff}
MODEL=${MODEL:-models/emoji-32}
OUT=${1:-out/edit}
STEPS=${STEPS:-300}
LR=${LR:-5e-3}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
CFG=${CFG:-1.5}
SLERP=${SLERP:-0.3}
DATA=data/emoji
# Demo rows: "unified code|edit prompt|edit prompt"; the source prompt is the image's caption.
DEMOS=(
  "1F600|an emoji of grinning face with heart eyes, face-smiling, google style|an emoji of smiling face with heart-eyes, face-affection, google style"
  "2764-FE0F|an emoji of blue heart, heart, google style|an emoji of green heart, heart, google style"
)
# Reconstruction check: held-out google emoji (split 'holdout' of captions.tsv, never pretrained on).
HELDOUT=(1F412 1F3C4 1F408 1F63F 1F649)
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
if [ ! -f "$DATA/captions.tsv" ]; then
  echo "$DATA is missing: run scripts/build-emoji-dataset.sh first (it downloads and renders the emoji)" >&2
  exit 1
fi
mkdir -p "$OUT"
cache="$OUT/svd-cache"
start=$(date +%s)

# caption <unified>: the google caption of an emoji in captions.tsv
caption() {
  local c
  c=$(awk -F'\t' -v p="images/google/$1.png" '$1 == p { print $2; exit }' "$DATA/captions.tsv")
  [ -n "$c" ] || { echo "no caption for images/google/$1.png in $DATA/captions.tsv" >&2; exit 1; }
  echo "$c"
}
# report <file> <key>: a value of an `edit --report` output
report() { sed -n "s/^$2 \(.*\)$/\1/p" "$1"; }
# edit <out dir> <image> <source prompt> <flags and --edit ...>: one `svdiff edit --report` run, stdout kept
edit() {
  local dir=$1 img=$2 src=$3; shift 3
  "$SVDIFF" edit --model "$MODEL" --image "$img" --prompt "$src" "$@" --sample-steps "$SAMPLE_STEPS" --cfg "$CFG" --seed 1 \
    --svd-cache "$cache" --report --force --quiet "${threads[@]}" -o "$dir" > "$dir.report" 2> "$dir.log" \
    || { tail -20 "$dir.log" >&2; exit 1; }
}
train=(--steps "$STEPS" --lr "$LR" --lr-1d 1e-4)
sheet=()

echo "== 1/3 edits: ${#DEMOS[@]} images, $STEPS fine-tuning steps each"
demo_rows=()
for d in "${DEMOS[@]}"; do
  IFS='|' read -r u e1 e2 <<< "$d"
  img=$DATA/images/google/$u.png
  src=$(caption "$u")
  edit "$OUT/$u" "$img" "$src" "${train[@]}" --edit "$e1" --edit "$e2"
  # the first edit again with fresh noise mixed into the inverted latent (larger changes), same shifts
  edit "$OUT/$u-slerp" "$img" "$src" --shifts "$OUT/$u" --slerp "$SLERP" --edit "$e1"
  sheet+=("$img" "$OUT/$u/reconstruction.png" "$OUT/$u/edit-1.png" "$OUT/$u/edit-2.png" "$OUT/$u-slerp/edit-1.png")
  demo_rows+=("| $src | $(report "$OUT/$u.report" reconstruction_psnr_db) | $e1 | $(report "$OUT/$u.report" edit_1_psnr_db) | $(report "$OUT/$u-slerp.report" edit_1_psnr_db) |"
              "| | | $e2 | $(report "$OUT/$u.report" edit_2_psnr_db) | |")
  echo "   $src: reconstruction $(report "$OUT/$u.report" reconstruction_psnr_db) dB"
done

echo "== 2/3 reconstruction of ${#HELDOUT[@]} held-out emoji, with and without inversion"
recon_rows=()
for u in "${HELDOUT[@]}"; do
  img=$DATA/images/google/$u.png
  src=$(caption "$u")
  tw=${src%, google style}", twitter style"
  edit "$OUT/$u" "$img" "$src" "${train[@]}" --edit "$tw"
  edit "$OUT/$u-noinv" "$img" "$src" --shifts "$OUT/$u" --no-inversion --edit "$tw"
  sheet+=("$img" "$OUT/$u/reconstruction.png" "$OUT/$u-noinv/reconstruction.png" "$OUT/$u/edit-1.png" "$OUT/$u-noinv/edit-1.png")
  with=$(report "$OUT/$u.report" reconstruction_psnr_db)
  without=$(report "$OUT/$u-noinv.report" reconstruction_psnr_db)
  recon_rows+=("| $u | $src | $with | $without | $(report "$OUT/$u.report" noise_reconstruction_psnr_db) | $(report "$OUT/$u.report" edit_1_psnr_db) |")
  echo "   $u ($src): $with dB with inversion, $without dB without"
done

echo "== 3/3 sheet and table"
"$SVDIFF" grid --cols 5 --scale 4 -o "$OUT/edits.png" "${sheet[@]}"
{
  echo "Model $MODEL; shifts fine-tuned on each image for $STEPS steps (lr $LR, text encoder on), $SAMPLE_STEPS DDIM"
  echo "steps of inversion (guidance 1, conditioned on each edit prompt) and sampling (cfg $CFG, eta 0.1); PSNR in dB"
  echo "against the input at 32 px; reconstruction = the source prompt sampled back with eta 0 and guidance 1."
  echo
  echo "| source prompt | reconstruction PSNR | edit prompt | edit PSNR | edit PSNR, slerp $SLERP |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${demo_rows[@]}"
  echo
  echo "Held-out emoji (split 'holdout'): reconstruction with the DDIM inversion vs from seeded noise"
  echo "(--no-inversion; the same shifts). \"From noise, --report\" is the figure --report of the inversion"
  echo "run prints for the same thing and should equal the --no-inversion column."
  echo
  echo "| emoji | source prompt | PSNR with inversion | PSNR without (--no-inversion) | from noise, --report | twitter-style edit PSNR |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${recon_rows[@]}"
  printf '%s\n' "${recon_rows[@]}" | awk -F' [|] ' '{ for (c = 3; c <= 6; c++) s[c] += $c } END {
    printf "| mean | | %.4f | %.4f | %.4f | %.4f |\n", s[3] / NR, s[4] / NR, s[5] / NR, s[6] / NR }'
} > "$OUT/table.md"
echo
cat "$OUT/table.md"
echo
echo "done in $(( $(date +%s) - start )) s"
echo "sheet: $OUT/edits.png"
for d in "${DEMOS[@]}"; do
  IFS='|' read -r u e1 e2 <<< "$d"
  echo "  $u: input | reconstruction | \"$e1\" | \"$e2\" | \"$e1\" with --slerp $SLERP"
done
for u in "${HELDOUT[@]}"; do
  echo "  $u: input | reconstruction with inversion | without (--no-inversion) | twitter-style edit with inversion | without"
done
echo "table: $OUT/table.md   (per image: OUT/<code>/ with edit-K.png, reconstruction.png, grid.png, shifts; <code>.report)"
