#!/usr/bin/python3
"""Writes a full-size Stable Diffusion 1.5 model with random fp16 weights: the real configs, key
names and shapes (UNet 859,520,964 parameters, VAE 83,653,863, CLIP-L text 123,060,480), in the
diffusers layout, and optionally the same weights as a CompVis/LDM single file. For measuring
model loading (`svdiff info`) and memory without downloading 2 GB; never committed.

    /usr/bin/python3 bench/make_random_sd15.py --out /tmp/sd15-random [--ldm /tmp/sd15-random.safetensors]
    build/svdiff info --model /tmp/sd15-random

Name and shape tables come from tests/reference/gen_tiny_models.py (the tiny test models are the
same architecture). Tensors are written one at a time (the header first), so memory stays small.
Takes about a minute (Debian's torch on 2 cores).
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import gen_tiny_models as g  # noqa: E402

UNET = dict(g.UNET_CONFIG, attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], layers_per_block=2, norm_num_groups=32,
            sample_size=64, up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
VAE = dict(g.VAE_CONFIG, block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
           layers_per_block=2, norm_num_groups=32, sample_size=512, up_block_types=["UpDecoderBlock2D"] * 4)
TEXT = dict(g.TEXT_CONFIG, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            projection_dim=768, vocab_size=49408, torch_dtype="float16")
EXPECTED = {"unet": 859520964, "vae": 83653863, "text_encoder": 123060480}


def header_bytes(entries, metadata=None):
    """entries: [(name, shape)] all F16, laid out in order."""
    header, off = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, shape in entries:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return hb + b" " * ((8 - len(hb) % 8) % 8)


def stream_safetensors(path, entries, gen, metadata=None):
    """entries: [(file name, shape, kind)]; random fp16 values drawn in order, one tensor at a time."""
    hb = header_bytes([(n, s) for n, s, _ in entries], metadata)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, shape, kind in entries:
            f.write(g.value(shape, kind, gen).half().numpy().tobytes())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="diffusers folder to write")
    ap.add_argument("--ldm", help="also write the same weights as an SD 1.x single file here")
    ap.add_argument("--tokenizer", default="/work/shared/data/clip-vit-l-14-tokenizer",
                    help="folder with CLIP-L vocab.json + merges.txt to copy (skipped if missing)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.time()
    tables = {"unet": g.unet_tensors(UNET), "vae": g.vae_tensors(VAE), "text_encoder": g.clip_tensors(TEXT)}
    for k, t in tables.items():
        n = 0
        for _, shape, _ in t:
            p = 1
            for d in shape:
                p *= d
            n += p
        assert n == EXPECTED[k], (k, n)
        print(f"{k}: {len(t)} tensors, {n:,} parameters")

    out = args.out
    os.makedirs(out, exist_ok=True)
    weights = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
               "text_encoder": "model.safetensors"}
    configs = {"unet": UNET, "vae": VAE, "text_encoder": TEXT}
    for k in tables:
        os.makedirs(os.path.join(out, k), exist_ok=True)
        g.write_json(os.path.join(out, k, "config.json"), configs[k])
        stream_safetensors(os.path.join(out, k, weights[k]), tables[k], torch.Generator().manual_seed(args.seed),
                           {"format": "pt"})
        print(f"wrote {k} ({time.time() - t0:.0f} s)")
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    g.write_json(os.path.join(out, "scheduler", "scheduler_config.json"), g.SCHEDULER_CONFIG)
    index = dict(g.MODEL_INDEX)
    if all(os.path.isfile(os.path.join(args.tokenizer, f)) for f in ("vocab.json", "merges.txt")):
        os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
        for f in ("vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(args.tokenizer, f), os.path.join(out, "tokenizer", f))
    else:
        index.pop("tokenizer")
    g.write_json(os.path.join(out, "model_index.json"), index)

    if args.ldm:   # same seeds per component, so the same values as the folder
        entries = []
        for k, t in tables.items():
            for name, shape, kind in t:
                if k == "unet":
                    entries.append((g.unet_ldm_name(name, UNET), shape, kind))
                elif k == "vae":
                    if ".mid_block.attentions.0.to_" in name and name.endswith(".weight"):
                        shape = shape + [1, 1]
                    entries.append((g.vae_ldm_name(name, VAE), shape, kind))
                else:
                    entries.append(("cond_stage_model.transformer." + name, shape, kind))
        # one generator per component, restarted like the folder's
        hb = header_bytes([(n, s) for n, s, _ in entries])
        tmp = args.ldm + ".tmp"
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            i = 0
            for k, t in tables.items():
                gen = torch.Generator().manual_seed(args.seed)
                for _ in t:
                    _, shape, kind = entries[i]
                    f.write(g.value(shape, kind, gen).half().numpy().tobytes())
                    i += 1
        os.replace(tmp, args.ldm)
        print(f"wrote {args.ldm}")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
