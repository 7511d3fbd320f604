#!/usr/bin/env bash
# Writes the outputs of a fixed set of svdiff runs on the embedded default model (and the tiny SD
# fixture) into OUT, so that two builds can be compared byte for byte: a refactoring that must not
# change results runs this with the old and the new binary and compares with scripts/golden-compare.sh.
#   scripts/golden-outputs.sh SVDIFF_BINARY OUT_DIR
# Covers generate (fp32, bf16, every sampler, shifts, LoRA, delta, latents), train in the three
# modes (shifts with the text encoder, fp32 and bf16; full; LoRA), a checkpoint resume, Cut-Mix-Unmix,
# edit, eval, attention-leakage, the shifts toolbox and selfcheck. About 2 minutes on 2 cores.
set -euo pipefail
SVDIFF=$(readlink -f "$1")
FINAL=$(readlink -f "$2")
cd "$(dirname "$0")/.."
# Outputs record their paths (PNG parameters, shift-file history): every run works in the same
# folder relative to the checkout (any worktree gives the same bytes), moved to OUT_DIR at the end.
OUT=out/golden-run
M=models/emoji-32
CAT=models/demo-subjects/cat/google
MONKEY=models/demo-subjects/monkey/google
rm -rf "$OUT"; mkdir -p "$OUT"
CACHE="$OUT/svd-cache"
T=(--threads 2 --quiet)
G=(--threads 2)   # generate had no --quiet before issue 18
log="$OUT/log.txt"
run() { echo "+ $*" >>"$log"; "$SVDIFF" "$@" >>"$log" 2>&1 || { echo "FAILED: $*" >&2; tail -5 "$log" >&2; exit 1; }; }
# runs and keeps its standard output (results printed as text) in file $1
runo() { local f=$1; shift; echo "+ $*" >>"$log"; "$SVDIFF" "$@" >"$OUT/$f" 2>>"$log" || { echo "FAILED: $*" >&2; tail -5 "$log" >&2; exit 1; }; }

# training: shifts (+ text encoder) in fp32 and bf16, with a checkpoint resume in the middle
for dt in fp32 bf16; do
  run train --model $M --instance-dir $CAT --instance-prompt "an emoji of sks cat" --resolution 32 \
    --batch-size 2 --steps 6 --lr 5e-3 --train-text-encoder --seed 3 --compute-dtype $dt \
    --svd-cache "$CACHE" --sample-every 6 --sample-prompt "sks cat" --sample-steps 4 "${T[@]}" -o "$OUT/train-$dt"
done
run train --model $M --instance-dir $CAT --instance-prompt "an emoji of sks cat" --resolution 32 \
  --steps 4 --checkpoint-every 2 --seed 5 --svd-cache "$CACHE" --flip "${T[@]}" -o "$OUT/resume"
rm "$OUT/resume/spectral_shifts.safetensors"
run train --model $M --instance-dir $CAT --instance-prompt "an emoji of sks cat" --resolution 32 \
  --steps 6 --checkpoint-every 2 --seed 5 --svd-cache "$CACHE" --flip --resume --force "${T[@]}" -o "$OUT/resume"
run train --model $M --instance-dir $CAT --instance-prompt "an emoji of sks cat" --resolution 32 \
  --steps 3 --mode full --save-delta --seed 4 "${T[@]}" -o "$OUT/full"
run train --model $M --instance-dir $CAT --instance-prompt "an emoji of sks cat" --resolution 32 \
  --steps 3 --mode lora --train-text-encoder --seed 4 "${T[@]}" -o "$OUT/lora"
run train --model $M --subject "sks cat=$CAT" --subject "hta monkey=$MONKEY" --resolution 32 \
  --steps 3 --batch-size 2 --unmix-weight 1 --seed 6 --svd-cache "$CACHE" --norm-shift scalar "${T[@]}" -o "$OUT/cutmix"
run train --model $M --instance-dir $CAT --instance-prompt "an emoji of sks cat" --resolution 32 \
  --class-prompt "an emoji of a cat" --class-dir "$OUT/class" --num-class-images 2 --class-steps 3 \
  --steps 2 --rank 4 --shift-layers attn2 --lr-schedule cosine --warmup 1 --seed 7 --svd-cache "$CACHE" "${T[@]}" -o "$OUT/prior"

# sampling
for dt in fp32 bf16; do
  run generate --model $M --prompt "an emoji of a cat" --num-images 2 --batch-size 2 --steps 5 --seed 1 \
    --compute-dtype $dt --save-latents "$OUT/gen-$dt.latents" "${G[@]}" -o "$OUT/gen-$dt.png"
done
for s in ddim euler euler_a dpmpp_2m; do
  run generate --model $M --prompt "an emoji of a dog" --steps 4 --seed 2 --sampler $s "${G[@]}" -o "$OUT/sampler-$s.png"
done
run generate --model $M --prompt "an emoji of sks cat" --steps 5 --seed 1 --shifts "$OUT/train-fp32" \
  --svd-cache "$CACHE" "${G[@]}" -o "$OUT/gen-shifts.png"
run generate --model $M --prompt "an emoji of sks cat" --steps 5 --seed 1 --shifts "$OUT/train-fp32:0.5" \
  --svd-cache "$CACHE" --compute-dtype bf16 "${G[@]}" -o "$OUT/gen-shifts-half-bf16.png"
run generate --model $M --prompt "an emoji of sks cat" --steps 5 --seed 1 --lora "$OUT/lora" "${G[@]}" -o "$OUT/gen-lora.png"
run generate --model $M --prompt "an emoji of sks cat" --steps 5 --seed 1 --delta "$OUT/full" "${G[@]}" -o "$OUT/gen-delta.png"
run generate --model tests/fixtures/tiny-sd/diffusers --prompt "a cat" --steps 3 --seed 1 --cfg 3 \
  --negative-prompt "blurry" "${G[@]}" -o "$OUT/gen-tiny.png"

# edit, eval, leakage
run edit --model $M --image $CAT/$(ls $CAT | grep -m1 png) --prompt "an emoji of a cat" \
  --edit "an emoji of a dog" --steps 3 --inversion-steps 4 --seed 8 --svd-cache "$CACHE" "${T[@]}" -o "$OUT/edit"
runo eval.txt eval --model $M --images $CAT --prompt "an emoji of sks cat" --shifts "$OUT/train-fp32" \
  --svd-cache "$CACHE" --threads 2 
runo leakage.json attention-leakage --model $M --shifts "$OUT/cutmix" --svd-cache "$CACHE" \
  --prompt "a photo of sks cat and hta monkey" --token-a "sks cat" --token-b "hta monkey" --steps 3 --seeds 1 --seed 1 --threads 2 --json

# shift toolbox
run shifts scale "$OUT/train-fp32" 0.5 -o "$OUT/tb-scale"
run shifts combine "$OUT/train-fp32" "$OUT/train-bf16" --weights 1,0.5 -o "$OUT/tb-combine"
run shifts limit-rank "$OUT/train-fp32" 3 -o "$OUT/tb-rank"
run shifts mix --from "$OUT/train-fp32" --layers geometry --rest "$OUT/train-bf16" -o "$OUT/tb-mix"
run shifts convert "$OUT/train-fp32/spectral_shifts.safetensors" --format svdiff-pytorch --dtype fp32 --model $M --force -o "$OUT/tb-pt.safetensors"
run shifts to-lora "$OUT/train-fp32" --model $M --svd-cache "$CACHE" --rank 4 -o "$OUT/tb-lora"
runo shifts-info.json shifts info "$OUT/train-fp32" --json
runo info.txt info --model $M
"$SVDIFF" selfcheck >/dev/null

# Timings vary between runs: loss.csv loses its seconds column, a checkpoint its elapsed time (the
# header's other metadata and the tensor bytes are kept), the lock files go.
find "$OUT" -name .svdiff.lock -delete
find "$OUT" -name loss.csv | while read -r f; do cut -d, -f1-6 "$f" >"${f%.csv}-results.csv"; rm "$f"; done
find "$OUT" -name checkpoint.safetensors | while read -r f; do
  python3 - "$f" <<'PY'
import json, struct, sys
path = sys.argv[1]
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
header["__metadata__"].pop("elapsed", None)
with open(path + ".header.json", "w") as f:
    json.dump(header, f, sort_keys=True, indent=1)
with open(path + ".data", "wb") as f:
    f.write(data)
PY
  rm "$f"
done
sed -i -E "/^(open time|peak RSS):/d" "$OUT/info.txt"
sed -i "s#$PWD/##" "$OUT/edit/edit-train.tsv"   # edit records absolute image paths
rm -rf "$FINAL"; mv "$OUT" "$FINAL"
echo "golden outputs in $FINAL ($(find "$FINAL" -type f | wc -l) files)"
