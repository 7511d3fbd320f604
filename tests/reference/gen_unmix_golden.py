#!/usr/bin/python3
"""Golden values for tests/test_cutmix.c: the Unmix regulariser of Cut-Mix-Unmix (src/models/unmix.h)
and the denoising loss on the tiny Stable Diffusion UNet (tests/fixtures/tiny-sd/diffusers) in its
spectral training form, with the gradient of every UNet shift, in float64 with PyTorch autograd.

Reuses the torch UNet of gen_unet_golden.py and the training form of gen_train_golden.py (imported),
with the float32 SVD factors the train fixture already holds (tests/fixtures/train/golden.safetensors,
svd/unet/<module path>.U / .S / .Vt), so this fixture carries only inputs and results.

Two instance rows, both composites: row 0 left / right halves, row 1 top / bottom. The context is a
fixed random [2, 77, 16] tensor (a frozen text encoder's output; the C test passes it directly).
tokw [2, 2, 77] marks each subject's identifier tokens, region [2, 2, 8, 8] each subject's half.
At every cross-attention (attn2) with probabilities P [B, heads, S, 77] at an h x w layer:
  Mo[b, s] = avg_pool(region[b, 1 - s], 8 / h);  G[b, p, j] = sum_s Mo[b, s, p] tokw[b, s, j]
  loss_site = sum G P^2 / (sum_{b,s} heads |Mo[b,s]|_1 |tokw[b,s]|_1)
  L_unmix = W * mean over sites;  L = MSE(pred, eps) + L_unmix
Writes tests/fixtures/unmix/golden.safetensors (F32 unless noted):
  x0, eps [2, 4, 8, 8]; timesteps [2] (I64); ctx [2, 77, 16]; tokw [2, 2, 77]; region [2, 2, 8, 8]
  site_loss [n_sites] (forward order); losses [2] = (MSE, L_unmix)
  unet/<path>.grad_mse   d MSE / d shift;   unet/<path>.grad_unmix   d L_unmix / d shift
  the --unmix-loss share form (unmix_sites_share): site_loss_share [n_sites], loss_share [1] (weight
  unmix_weight_share), unet/<path>.grad_share
metadata: unmix_weight, n_sites, seed.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_clip_golden as clipref  # noqa: E402
import gen_train_golden as trainref  # noqa: E402
import gen_unet_golden as unetref  # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

SEED = 8088
WEIGHT = 2000.0      # P is about 1/77 on a random model: a large weight makes the Unmix gradient
                     # of the order of the denoising one
WEIGHT_SHARE = 20.0  # the share is about 1/2 (not 1/77^2): a weight of tens gives the same scale
TIMESTEPS = [120, 640]
TOKENS = [([2, 3], [6, 7, 8]), ([1], [4, 5])]   # per row: subject 0's and subject 1's token positions

PROBS = []           # (P, is cross) recorded by the patched attention


def attn_forward(self, x, ctx=None):
    cross = ctx is not None
    ctx = x if ctx is None else ctx
    B, Tq, _ = x.shape
    Tk = ctx.shape[1]

    def split(t, T):
        return t.reshape(B, T, self.heads, -1).transpose(1, 2)

    q, k, v = split(self.to_q(x), Tq), split(self.to_k(ctx), Tk), split(self.to_v(ctx), Tk)
    p = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
    if cross:
        PROBS.append(p)
    o = (p @ v).transpose(1, 2).reshape(B, Tq, -1)
    return self.to_out[0](o)


def unmix_sites_share(tokw, region):
    """--unmix-loss share: per (row, head, subject) the squared share of the phrase's attention mass
    in the other subject's region, averaged over the terms whose region and phrase are not empty."""
    losses = []
    H = region.shape[-1]
    for p in PROBS:
        B, heads, S, T = p.shape
        f = H // int(round(S ** 0.5))
        mo = F.avg_pool2d(region.flip(1), f).reshape(B, 2, S)
        m = torch.einsum("bhpj,bsj->bhsp", p, tokw)               # phrase mass per position
        a = (m * mo[:, None]).sum(-1)                               # [B, heads, 2] in the other region
        z = m.sum(-1)
        valid = ((mo.sum(-1) > 0) & (tokw.sum(-1) > 0)).to(p.dtype)[:, None, :].expand(B, heads, 2)
        losses.append((valid * (a / z) ** 2).sum() / valid.sum())
    return losses


def unmix_sites(tokw, region):
    losses = []
    H = region.shape[-1]
    for p in PROBS:
        B, heads, S, T = p.shape
        h = int(round(S ** 0.5))
        f = H // h
        mo = F.avg_pool2d(region.flip(1), f).reshape(B, 2, S)      # the OTHER subject's region
        G = torch.einsum("bsp,bsj->bpj", mo, tokw)
        norm = heads * (mo.sum(-1) * tokw.sum(-1)).sum()
        losses.append((G[:, None] * p * p).sum() / norm)
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="tests/fixtures/tiny-sd/diffusers")
    ap.add_argument("--train-golden", required=True, help="tests/fixtures/train/golden.safetensors (SVD factors)")
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/unmix)")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(SEED)
    unet_cfg, unet_w, _, _, _, sched = trainref.load_model_folder(args.model)
    factors = trainref.read_safetensors(args.train_golden)

    unetref.SpectralMixin.effective_weight = trainref.effective_weight_nobase
    unetref.Attention.forward = attn_forward
    unet = unetref.UNet2DConditionModel(unet_cfg)
    unet.load_state_dict(unet_w, strict=True)
    for p in unet.parameters():
        p.requires_grad_(False)
    deltas = []
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.Linear, unetref.Conv2d)):
            key = "svd/unet/" + path
            U, S, Vh = factors[key + ".U"], factors[key + ".S"], factors[key + ".Vt"]
            d = torch.zeros(S.numel(), requires_grad=True)
            mod.sp = (U, S, Vh, d, 1.0)
            deltas.append(("unet/" + path, d))
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.GroupNorm, unetref.LayerNorm)):
            d = torch.zeros(mod.weight.numel(), requires_grad=True)
            mod.shift = (d, 1.0, "element")
            deltas.append(("unet/" + path, d))
    # away from zero shifts (the C test installs the same values)
    for _, d in deltas:
        with torch.no_grad():
            d.copy_(trainref.f32(0.05 * torch.randn(d.shape, generator=gen)))

    rows, C, H = 2, unet_cfg["in_channels"], 8
    x0 = trainref.f32(0.8 * torch.randn(rows, C, H, H, generator=gen))
    eps = trainref.f32(torch.randn(rows, C, H, H, generator=gen))
    ctx = trainref.f32(torch.randn(rows, 77, unet_cfg["cross_attention_dim"], generator=gen))
    ts = torch.tensor(TIMESTEPS, dtype=torch.int64)
    tokw = torch.zeros(rows, 2, 77)
    for b, (a, c) in enumerate(TOKENS):
        tokw[b, 0, a] = 1
        tokw[b, 1, c] = 1
    region = torch.zeros(rows, 2, H, H)
    region[0, 0, :, :H // 2] = 1
    region[0, 1, :, H // 2:] = 1
    region[1, 0, :H // 2, :] = 1
    region[1, 1, H // 2:, :] = 1
    ac = trainref.alphas_cumprod(sched).to(torch.float64)[ts]
    xt = ac.sqrt()[:, None, None, None] * x0 + (1 - ac).sqrt()[:, None, None, None] * eps

    PROBS.clear()
    pred = unet(xt, ts.to(torch.float64), ctx)
    mse = F.mse_loss(pred, eps)
    sites = unmix_sites(tokw, region)
    lu = WEIGHT * torch.stack(sites).mean()
    sites_share = unmix_sites_share(tokw, region)
    lu_share = WEIGHT_SHARE * torch.stack(sites_share).mean()
    params = [d for _, d in deltas]
    g_mse = torch.autograd.grad(mse, params, retain_graph=True)
    g_unmix = torch.autograd.grad(lu, params, allow_unused=True, retain_graph=True)   # layers after the last attn2: none
    g_unmix = [torch.zeros_like(d) if g is None else g for d, g in zip(params, g_unmix)]
    g_share = torch.autograd.grad(lu_share, params, allow_unused=True)
    g_share = [torch.zeros_like(d) if g is None else g for d, g in zip(params, g_share)]
    golden = {"x0": ("F32", x0), "eps": ("F32", eps), "timesteps": ("I64", ts), "ctx": ("F32", ctx),
              "tokw": ("F32", tokw), "region": ("F32", region),
              "site_loss": ("F32", torch.stack(sites).detach()),
              "losses": ("F32", torch.tensor([mse.item(), lu.item()])),
              "site_loss_share": ("F32", torch.stack(sites_share).detach()),
              "loss_share": ("F32", torch.tensor([lu_share.item()]))}
    for (name, d), gm, gu, gs in zip(deltas, g_mse, g_unmix, g_share):
        golden[name + ".value"] = ("F32", d.detach())
        golden[name + ".grad_mse"] = ("F32", gm)
        golden[name + ".grad_unmix"] = ("F32", gu)
        golden[name + ".grad_share"] = ("F32", gs)
    os.makedirs(args.out, exist_ok=True)
    meta = {"generator": "tests/reference/gen_unmix_golden.py", "unmix_weight": repr(WEIGHT),
            "unmix_weight_share": repr(WEIGHT_SHARE),
            "n_sites": str(len(sites)), "seed": str(SEED)}
    size = clipref.write_safetensors(os.path.join(args.out, "golden.safetensors"), golden, meta)
    gn_m = torch.sqrt(sum((g * g).sum() for g in g_mse)).item()
    gn_u = torch.sqrt(sum((g * g).sum() for g in g_unmix)).item()
    print(f"wrote {args.out}/golden.safetensors: {size} bytes, {len(deltas)} shift arrays, {len(sites)} sites, "
          f"mse {mse.item():.6f}, unmix {lu.item():.6g}, |grad mse| {gn_m:.4g}, |grad unmix| {gn_u:.4g}")


if __name__ == "__main__":
    main()
