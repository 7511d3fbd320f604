#!/usr/bin/python3
"""Golden outputs for tests/test_toolbox.c: the tiny UNet (tests/fixtures/tiny-sd/diffusers) with a
combined and with a rank-limited shift set applied, computed by the PyTorch re-implementation of
gen_unet_golden.py (float64, exact form W + U diag(relu(S + delta) - S) Vh with the SVD of the
stored weight).

Writes to --out (tests/fixtures/toolbox):
  a.safetensors, b.safetensors  shift files (F32, "<module path>.delta") for every UNet conv /
                                linear ([rank], about 0.15 sigma, far from the ReLU kink) and norm
                                (per element [C], 0.1 N(0,1)); base_model_hash "toolbox-fixture"
  golden.safetensors            sample [1, 4, 8, 8], timesteps [1], ctx [1, 5, 16] (F32) and
                                out_combined = UNet with 0.7 A + 0.5 B,
                                out_rank2    = UNet with A limited to rank 2 (shifts of the two
                                               largest singular values of every matrix, norms kept)
The C side combines / limits with the toolbox, applies with shiftset_apply_unet (its own float32
SVD) and compares with tolerance 1e-4.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_clip_golden as clipref  # noqa: E402
import gen_train_golden as trainref  # noqa: E402
import gen_unet_golden as unetref  # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
SEED = 1010
WEIGHTS = (0.7, 0.5)
RANK = 2


def f32(x):
    return x.detach().to(torch.float32).to(torch.float64)


def random_shifts(unet, gen):
    """{module path: delta} for every matrix (scaled by its singular values) and norm."""
    out = {}
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.Linear, unetref.Conv2d)):
            S = torch.linalg.svdvals(mod.weight.reshape(mod.weight.shape[0], -1))
            out[path] = f32(0.15 * S * torch.randn(S.numel(), generator=gen))
        elif isinstance(mod, (unetref.GroupNorm, unetref.LayerNorm)):
            out[path] = f32(0.1 * torch.randn(mod.weight.numel(), generator=gen))
    return out


def run(unet, shifts, sample, t, ctx):
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.Linear, unetref.Conv2d)):
            U, S, Vh = torch.linalg.svd(mod.weight.reshape(mod.weight.shape[0], -1), full_matrices=False)
            mod.sp = (U, S, Vh, shifts[path], 1.0)
        elif isinstance(mod, (unetref.GroupNorm, unetref.LayerNorm)):
            mod.shift = (shifts[path], 1.0, "element")
    with torch.no_grad():
        return unet(sample, t, ctx)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="tests/fixtures/tiny-sd/diffusers")
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/toolbox)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    unet_cfg, unet_w, _, _, _, _ = trainref.load_model_folder(args.model)
    unet = unetref.UNet2DConditionModel(unet_cfg)
    unet.load_state_dict(unet_w, strict=True)
    for p in unet.parameters():
        p.requires_grad_(False)

    a, b = random_shifts(unet, gen), random_shifts(unet, gen)
    meta = {"base_model_hash": "toolbox-fixture", "generator": "tests/reference/gen_toolbox_golden.py"}
    for name, s in (("a", a), ("b", b)):
        clipref.write_safetensors(os.path.join(args.out, name + ".safetensors"),
                                  {p + ".delta": ("F32", d) for p, d in sorted(s.items())}, meta)

    sample = f32(torch.randn(1, unet_cfg["in_channels"], 8, 8, generator=gen))
    t = torch.tensor([437.0])
    ctx = f32(torch.randn(1, 5, unet_cfg["cross_attention_dim"], generator=gen))
    # the combination in float32 as the C side computes it (w_a * a, then + w_b * b)
    comb = {p: f32((torch.tensor(WEIGHTS[0], dtype=torch.float32) * a[p].float())
                   + (torch.tensor(WEIGHTS[1], dtype=torch.float32) * b[p].float())) for p in a}
    norms = {p for p, mod in unet.named_modules() if isinstance(mod, (unetref.GroupNorm, unetref.LayerNorm))}
    rank = {p: (d if p in norms else torch.cat([d[:RANK], torch.zeros(max(d.numel() - RANK, 0))])) for p, d in a.items()}
    out_comb = run(unet, comb, sample, t, ctx)
    out_rank = run(unet, rank, sample, t, ctx)
    out_base = run(unet, {p: torch.zeros_like(d) for p, d in a.items()}, sample, t, ctx)
    print("max |out| %.4g; change from the base: combined %.4g, rank 2 %.4g" % (
        out_base.abs().max(), (out_comb - out_base).abs().max(), (out_rank - out_base).abs().max()))
    golden = {"sample": ("F32", sample), "timesteps": ("F32", t), "ctx": ("F32", ctx),
              "out_combined": ("F32", out_comb), "out_rank2": ("F32", out_rank), "out_base": ("F32", out_base)}
    size = clipref.write_safetensors(os.path.join(args.out, "golden.safetensors"), golden,
                                     {"generator": "tests/reference/gen_toolbox_golden.py",
                                      "weights": "%g,%g" % WEIGHTS, "rank": str(RANK)})
    print(f"wrote {args.out}: golden.safetensors {size} bytes, {len(a)} shifts per set")


if __name__ == "__main__":
    main()
