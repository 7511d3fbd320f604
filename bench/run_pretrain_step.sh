#!/usr/bin/env bash
# One full-weight pretraining step of the default model (issue 7's `svdiff pretrain`: every weight,
# AdamW, EMA) side by side with PyTorch on the CPU (bench/pretrain_step_torch.py, the same
# architecture from the repository's reference modules), batch 32 at 32x32, the context of the
# config. svdiff runs the real command on the emoji data set (fp32, then bf16) for REPS+1 steps;
# its per-step times are the differences of loss.csv's seconds column, the first step (set-up,
# first touch) left out. One process at a time. Prints a markdown table (medians, peak RSS).
#
#   bench/run_pretrain_step.sh [--reps N (5)] [--threads N (all cores)] [--batch N (32)]
#       [--config FILE (configs/default-model.json)] [--compute "fp32 bf16"] [--no-torch]
#
# Needs data/emoji/pretrain.tsv (scripts/build-emoji-dataset.sh builds it) and /usr/bin/python3
# with torch for the reference side. Work files go to $SVDIFF_BENCH_CACHE/pretrain-step
# (default bench/out, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

reps=5 threads=$(nproc) batch=32 config=configs/default-model.json compute="fp32 bf16" torch=1
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift ;;
    --threads) threads=$2; shift ;;
    --batch) batch=$2; shift ;;
    --config) config=$2; shift ;;
    --compute) compute=$2; shift ;;
    --no-torch) torch=0 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "run_pretrain_step.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -f data/emoji/pretrain.tsv ] || { echo "run_pretrain_step.sh: data/emoji/pretrain.tsv is missing: run scripts/build-emoji-dataset.sh" >&2; exit 1; }
WORK=${SVDIFF_BENCH_CACHE:-bench/out}/pretrain-step
mkdir -p "$WORK"
scripts/build.sh release svdiff >/dev/null
SVDIFF=build/svdiff
rm -rf "$WORK/init"
"$SVDIFF" init --config "$config" --tokenizer models/emoji-32/tokenizer --seed 1 -o "$WORK/init" >/dev/null

rows=()
for c in $compute; do
  rm -rf "$WORK/run"
  /usr/bin/time -f "%M" -o "$WORK/rss" "$SVDIFF" pretrain --model "$WORK/init" --data data/emoji/pretrain.tsv \
    --steps $((reps + 1)) --batch-size "$batch" --lr 1e-4 --ema-decay 0.999 --caption-dropout 0.1 \
    --compute-dtype "$c" --threads "$threads" --seed 1 --quiet -o "$WORK/run" >/dev/null
  s=$(awk -F, 'NR > 1 { if (prev != "") print $NF - prev; prev = $NF }' "$WORK/run/loss.csv" | sort -g |
      awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  mb=$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/rss")
  echo "RESULT side=svdiff case=pretrain_step compute=$c batch=$batch threads=$threads median_s=$s peak_rss_mb=$mb"
  rows+=("$c $s $mb")
done

ts="-" tmb="-"
if [ "$torch" = 1 ]; then
  line=$(/usr/bin/python3 bench/pretrain_step_torch.py --config "$config" --batch "$batch" --reps "$reps" \
           --threads "$threads" | tee /dev/stderr | grep '^RESULT')
  ts=$(sed 's/.*median_s=\([^ ]*\).*/\1/' <<<"$line")
  tmb=$(sed 's/.*peak_rss_mb=\([^ ]*\).*/\1/' <<<"$line")
fi

echo
echo "| compute | svdiff s/step | PyTorch s/step (fp32) | svdiff / PyTorch | svdiff peak RSS MB | PyTorch peak RSS MB |"
echo "|---|---|---|---|---|---|"
for r in "${rows[@]}"; do
  read -r c s mb <<<"$r"
  ratio=$( [ "$ts" = "-" ] && echo "-" || awk -v a="$s" -v b="$ts" 'BEGIN { printf "%.3fx", a / b }')
  echo "| $c | $s | $ts | $ratio | $mb | $tmb |"
done
