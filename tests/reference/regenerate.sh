#!/bin/sh
# Rewrites the golden fixtures (tests/fixtures/*.safetensors) from the PyTorch reference.
# Needs Debian's torch (python3-torch) under /usr/bin/python3; output is byte-for-byte
# deterministic (single-threaded torch, fixed seeds), so a rerun leaves git clean.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${SVDIFF_TORCH_PYTHON:-/usr/bin/python3}
mkdir -p "$root/tests/fixtures"
"$py" "$here/gen_ops_golden.py" --out "$root/tests/fixtures/ops_golden.safetensors"
"$py" "$here/gen_unicode_tables.py" "$root/src/models/utf8class_tables.c" && "$py" "$here/gen_tokenizer_golden.py" --out "$root/tests/fixtures/tokenizer"  # needs python3-regex
"$py" "$here/gen_clip_golden.py" --out "$root/tests/fixtures/clip"
"$py" "$here/gen_tiny_models.py" --out "$root/tests/fixtures/tiny-sd"
"$py" "$here/gen_vae_golden.py" --out "$root/tests/fixtures/vae"
"$py" "$here/gen_sampler_golden.py" --out "$root/tests/fixtures/sampler/golden.safetensors"
"$py" "$here/gen_unet_golden.py" --out "$root/tests/fixtures/unet"
"$py" "$here/gen_shift_fixtures.py" --out "$root/tests/fixtures/shifts"
"$py" "$here/gen_pipeline_golden.py" --out "$root/tests/fixtures/pipeline"  # after tiny-sd and unet (reads them)
"$py" "$here/gen_sdxl_golden.py" --model-out "$root/tests/fixtures/tiny-sdxl" --out "$root/tests/fixtures/sdxl"  # after tiny-sd (copies its tokenizer)
"$py" "$here/gen_edit_golden.py" --out "$root/tests/fixtures/edit"  # after pipeline (reads its pixel parts)
"$py" "$here/gen_train_golden.py" --model "$root/tests/fixtures/tiny-sd/diffusers" --out "$root/tests/fixtures/train"
"$py" "$here/gen_unmix_golden.py" --model "$root/tests/fixtures/tiny-sd/diffusers" --train-golden "$root/tests/fixtures/train/golden.safetensors" --out "$root/tests/fixtures/unmix"  # after train
"$py" "$here/gen_toolbox_golden.py" --model "$root/tests/fixtures/tiny-sd/diffusers" --out "$root/tests/fixtures/toolbox"
mkdir -p "$root/tests/fixtures/lora" && "$py" "$here/gen_lora_golden.py" --out "$root/tests/fixtures/lora/golden.safetensors"
"$py" "$here/gen_svdiff_pytorch_table.py" --model "$root/tests/fixtures/tiny-sd/diffusers" --out "$root/tests/fixtures/svdiff_pytorch"  # after tiny-sd (reads its configs); needs no torch
"$py" "$here/gen_ckpt_fixtures.py" --out "$root/tests/fixtures/ckpt" --corpus "$root/fuzz/corpus/pickle"  # after tiny-sd (converts sd1.safetensors to sd1.ckpt)
