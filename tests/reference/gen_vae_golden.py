#!/usr/bin/python3
"""Golden tensors for tests/test_vae.c: tiny random AutoencoderKL models (diffusers
autoencoder_kl.py / vae.py semantics) run in float64 with PyTorch, re-implemented below module
by module (no diffusers package needed).

Writes, under --out (tests/fixtures/vae/):
  vae/        config.json + diffusion_pytorch_model.safetensors (F32, exact diffusers keys):
              block_out_channels [8, 16], layers_per_block 1, norm_num_groups 4, latent 4,
              scaling_factor 0.18215, shift_factor null. quant_conv's bias puts logvar channel 1
              around 20 and channel 2 around -30, so both sides of the clamp are exercised.
  vae_f16/    the same weights stored as F16 (its reference uses the F16-rounded values).
  vae_plain/  block_out_channels [4, 8], layers_per_block 2, norm_num_groups 2, no quant_conv,
              no post_quant_conv, no mid-block attention, scaling_factor 0.5, shift_factor 0.1.
  golden.safetensors, keys "<case>.<tensor>" (all F32):
    img.u8         [2, 16, 24, 3] uint8 RGB images (as integer-valued floats), HWC
    img.tensor     [2, 3, 16, 24] VaeImageProcessor.preprocess of them, in float32 as numpy/torch
                   compute it (x / 255, then 2x - 1): the C side must match bit for bit
    enc.noise      [2, 4, 8, 12] standard normal noise for the posterior sample
    enc.mean / enc.logvar / enc.latents   encode(img.tensor): mean, clamped logvar, and
                   (mean + exp(logvar / 2) * noise - shift) * scaling_factor
    dec.latents    [2, 4, 8, 12] random latents;  dec.image [2, 3, 16, 24] decode(dec.latents)
    enc16.* / dec16.image   the same with the F16 weights
    plain.*        the same four for vae_plain (dec from plain.latents, the sampled ones)
    post.x         [3, 8, 8] decoder-like outputs, some outside [-1, 1] and some that land
                   exactly on k + 0.5 after * 255 (float32);  post.u8 [8, 8, 3] what
                   VaeImageProcessor.postprocess + numpy_to_pil make of them (numpy round:
                   half to even)
All inputs are float32-exact; the models' math is float64.
"""
import argparse
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

import st_io  # noqa: E402  (tests/reference/st_io.py)

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order: byte-identical output on every run

GEN = torch.Generator().manual_seed(4242)
EPS = 1e-6   # every GroupNorm of the diffusers VAE (vae.py passes resnet_eps=1e-6 everywhere)
B, H, W = 2, 16, 24

CONFIGS = {
    "vae": dict(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                scaling_factor=0.18215, shift_factor=None),
    "vae_plain": dict(block_out_channels=[4, 8], layers_per_block=2, norm_num_groups=2, latent_channels=4,
                      scaling_factor=0.5, shift_factor=0.1, use_quant_conv=False, use_post_quant_conv=False,
                      mid_block_add_attention=False),
}


def f32(x):
    return x.detach().to(torch.float32).to(torch.float64)


def f16(x):
    return x.detach().to(torch.float16).to(torch.float64)


def randn(*shape, std=1.0, mean=0.0):
    return f32(torch.randn(*shape, generator=GEN) * std + mean)


# ---- parameter names and shapes: diffusers' state_dict of AutoencoderKL ----

def param_shapes(cfg):
    """(name, shape) in state_dict order (vae.py Encoder / Decoder, unet_2d_blocks.py
    DownEncoderBlock2D / UpDecoderBlock2D / UNetMidBlock2D, resnet.py ResnetBlock2D,
    Downsample2D / Upsample2D, attention_processor.py Attention)."""
    ch, lpb, lat = cfg["block_out_channels"], cfg["layers_per_block"], cfg["latent_channels"]
    n, out = len(ch), []

    def conv(name, o, i, k):
        out.append((name + ".weight", (o, i, k, k)))
        out.append((name + ".bias", (o,)))

    def norm(name, c):
        out.append((name + ".weight", (c,)))
        out.append((name + ".bias", (c,)))

    def resnet(name, i, o):
        norm(name + ".norm1", i)
        conv(name + ".conv1", o, i, 3)
        norm(name + ".norm2", o)
        conv(name + ".conv2", o, o, 3)
        if i != o:
            conv(name + ".conv_shortcut", o, i, 1)

    def mid(side, c):
        resnet(f"{side}.mid_block.resnets.0", c, c)
        if cfg.get("mid_block_add_attention", True):
            a = f"{side}.mid_block.attentions.0"
            norm(a + ".group_norm", c)
            for lin in ("to_q", "to_k", "to_v", "to_out.0"):
                out.append((f"{a}.{lin}.weight", (c, c)))
                out.append((f"{a}.{lin}.bias", (c,)))
        resnet(f"{side}.mid_block.resnets.1", c, c)

    conv("encoder.conv_in", ch[0], cfg["in_channels"], 3)
    c = ch[0]
    for i in range(n):
        for j in range(lpb):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", c if j == 0 else ch[i], ch[i])
        c = ch[i]
        if i < n - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c, 3)
    mid("encoder", ch[-1])
    norm("encoder.conv_norm_out", ch[-1])
    conv("encoder.conv_out", 2 * lat, ch[-1], 3)
    conv("decoder.conv_in", ch[-1], lat, 3)
    mid("decoder", ch[-1])
    rev, c = list(reversed(ch)), ch[-1]
    for i in range(n):
        for j in range(lpb + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", c if j == 0 else rev[i], rev[i])
        c = rev[i]
        if i < n - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", c, c, 3)
    norm("decoder.conv_norm_out", ch[0])
    conv("decoder.conv_out", cfg["out_channels"], ch[0], 3)
    if cfg.get("use_quant_conv", True):
        conv("quant_conv", 2 * lat, 2 * lat, 1)
    if cfg.get("use_post_quant_conv", True):
        conv("post_quant_conv", lat, lat, 1)
    return out


def make_params(cfg):
    """Random weights that keep activations O(1): kernels N(0, 1/fan_in), biases N(0, 0.1^2),
    norm gains 1 + N(0, 0.1^2), offsets N(0, 0.1^2)."""
    p = {}
    for name, shape in param_shapes(cfg):
        if len(shape) > 1:
            fan_in = math.prod(shape[1:])
            p[name] = randn(*shape, std=1.0 / math.sqrt(fan_in))
        elif ".norm" in name or "group_norm" in name:
            p[name] = randn(*shape, std=0.1, mean=1.0 if name.endswith(".weight") else 0.0)
        else:
            p[name] = randn(*shape, std=0.1)
    return p


# ---- the modules ----

def group_norm(x, p, name, G):
    """torch.nn.GroupNorm(G, C, eps=1e-6, affine=True)."""
    return F.group_norm(x, G, p[name + ".weight"], p[name + ".bias"], eps=EPS)


def conv(x, p, name, stride=1, padding=1):
    return F.conv2d(x, p[name + ".weight"], p[name + ".bias"], stride=stride, padding=padding)


def resnet(x, p, name, G):
    """resnet.py ResnetBlock2D.forward, temb None, output_scale_factor 1: GN, SiLU, conv1, GN,
    SiLU, (dropout 0), conv2; plus the input, through conv_shortcut (1x1) when channels change."""
    h = conv(F.silu(group_norm(x, p, name + ".norm1", G)), p, name + ".conv1")
    h = conv(F.silu(group_norm(h, p, name + ".norm2", G)), p, name + ".conv2")
    if name + ".conv_shortcut.weight" in p:
        x = conv(x, p, name + ".conv_shortcut", padding=0)
    return x + h


def attention(x, p, name, G):
    """attention_processor.py Attention as UNetMidBlock2D builds it (heads = C // C = 1,
    dim_head C, bias True, residual_connection True, rescale_output_factor 1), with
    AttnProcessor2_0: group_norm over [B, C, HW], tokens = pixels, softmax(q k^T / sqrt(C)) v,
    to_out.0, back to [B, C, H, W], plus the input."""
    b, c, h, w = x.shape
    t = group_norm(x.view(b, c, h * w), p, name + ".group_norm", G).transpose(1, 2)
    q = F.linear(t, p[name + ".to_q.weight"], p[name + ".to_q.bias"])
    k = F.linear(t, p[name + ".to_k.weight"], p[name + ".to_k.bias"])
    v = F.linear(t, p[name + ".to_v.weight"], p[name + ".to_v.bias"])
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1) @ v
    o = F.linear(a, p[name + ".to_out.0.weight"], p[name + ".to_out.0.bias"])
    return o.transpose(1, 2).reshape(b, c, h, w) + x


def mid_block(x, p, side, cfg):
    """unet_2d_blocks.py UNetMidBlock2D: resnet, (attention, resnet) x 1."""
    G = cfg["norm_num_groups"]
    x = resnet(x, p, f"{side}.mid_block.resnets.0", G)
    if cfg.get("mid_block_add_attention", True):
        x = attention(x, p, f"{side}.mid_block.attentions.0", G)
    return resnet(x, p, f"{side}.mid_block.resnets.1", G)


def encoder(x, p, cfg):
    """vae.py Encoder.forward; DownEncoderBlock2D = resnets then Downsample2D(padding=0):
    F.pad(x, (0, 1, 0, 1)) and a 3x3 conv with stride 2 (all blocks but the last)."""
    G, n, lpb = cfg["norm_num_groups"], len(cfg["block_out_channels"]), cfg["layers_per_block"]
    x = conv(x, p, "encoder.conv_in")
    for i in range(n):
        for j in range(lpb):
            x = resnet(x, p, f"encoder.down_blocks.{i}.resnets.{j}", G)
        if i < n - 1:
            x = conv(F.pad(x, (0, 1, 0, 1)), p, f"encoder.down_blocks.{i}.downsamplers.0.conv", stride=2, padding=0)
    x = mid_block(x, p, "encoder", cfg)
    x = F.silu(group_norm(x, p, "encoder.conv_norm_out", G))
    return conv(x, p, "encoder.conv_out")


def decoder(z, p, cfg):
    """vae.py Decoder.forward; UpDecoderBlock2D = layers_per_block + 1 resnets then
    Upsample2D: nearest 2x, 3x3 conv (all blocks but the last)."""
    G, n, lpb = cfg["norm_num_groups"], len(cfg["block_out_channels"]), cfg["layers_per_block"]
    x = conv(z, p, "decoder.conv_in")
    x = mid_block(x, p, "decoder", cfg)
    for i in range(n):
        for j in range(lpb + 1):
            x = resnet(x, p, f"decoder.up_blocks.{i}.resnets.{j}", G)
        if i < n - 1:
            x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), p, f"decoder.up_blocks.{i}.upsamplers.0.conv")
    x = F.silu(group_norm(x, p, "decoder.conv_norm_out", G))
    return conv(x, p, "decoder.conv_out")


def encode(img, p, cfg):
    """autoencoder_kl.py AutoencoderKL._encode (+ quant_conv) and vae.py
    DiagonalGaussianDistribution: mean, logvar = chunk(2, dim=1), logvar clamped to [-30, 20]."""
    h = encoder(img, p, cfg)
    if cfg.get("use_quant_conv", True):
        h = conv(h, p, "quant_conv", padding=0)
    mean, logvar = torch.chunk(h, 2, dim=1)
    return mean, torch.clamp(logvar, -30.0, 20.0)


def latents_of(mean, logvar, noise, cfg):
    """posterior.sample() = mean + exp(logvar / 2) * noise, then (x - shift) * scaling_factor
    (the training scripts' latents; shift 0 when the config has none)."""
    shift = cfg.get("shift_factor") or 0.0
    return (mean + torch.exp(0.5 * logvar) * noise - fscalar(shift)) * fscalar(cfg["scaling_factor"])


def decode(latents, p, cfg):
    """The pipelines' latents / scaling_factor (+ shift), then AutoencoderKL._decode:
    post_quant_conv and the decoder."""
    shift = cfg.get("shift_factor") or 0.0
    z = latents / fscalar(cfg["scaling_factor"]) + fscalar(shift)
    if cfg.get("use_post_quant_conv", True):
        z = conv(z, p, "post_quant_conv", padding=0)
    return decoder(z, p, cfg)


def fscalar(v):
    """A Python float rounded to float32 (the C side holds config floats as float)."""
    return float(np.float32(v))


# ---- image <-> tensor: image_processor.py VaeImageProcessor ----

def preprocess(u8):
    """pil_to_numpy: np.array(image).astype(np.float32) / 255.0; numpy_to_pt; normalize: 2x - 1
    (float32 throughout). u8: [B, H, W, C] uint8 -> [B, C, H, W] float32."""
    a = u8.astype(np.float32) / 255.0
    t = torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
    return 2.0 * t - 1.0


def postprocess(x):
    """denormalize: (x / 2 + 0.5).clamp(0, 1) (float32 torch); pt_to_numpy; numpy_to_pil:
    (images * 255).round().astype("uint8"). x: [C, H, W] float32 -> [H, W, C] uint8."""
    y = (x / 2 + 0.5).clamp(0, 1)
    a = y.permute(1, 2, 0).numpy()
    return (a * 255).round().astype("uint8")


def half_cases():
    """float32 inputs x whose float32 (x / 2 + 0.5) * 255 is exactly k + 0.5 (ties, where numpy
    rounds to even)."""
    found = []
    for k in range(0, 255):
        y0 = np.float32((k + 0.5) / 255.0)
        for y in (np.nextafter(y0, np.float32(0)), y0, np.nextafter(y0, np.float32(1))):
            y = np.float32(y)
            if np.float32(y * np.float32(255)) != np.float32(k + 0.5):
                continue
            x = np.float32((np.float64(y) - 0.5) * 2.0)
            if np.float32(np.float32(x / np.float32(2)) + np.float32(0.5)) == y:
                found.append(float(x))
                break
        if len(found) >= 12:
            break
    assert len(found) >= 4, "no float32 ties found"
    return found


# ---- files ----

def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (dtype, tensor) with dtype F32 / F16 / I64 (st_io.write_raw; metadata
    last, left out when empty)."""
    fmt = {"F32": ("<%df", torch.float32), "F16": ("<%de", torch.float16), "I64": ("<%dq", torch.int64)}
    entries = []
    for name, (dt, t) in tensors.items():
        code, tdt = fmt[dt]
        a = t.detach().to(tdt).contiguous().reshape(-1)
        entries.append((name, dt, list(t.shape), struct.pack(code % a.numel(), *a.tolist())))
    return st_io.write_raw(path, entries, metadata)


def write_vae_folder(folder, cfg, params, dtype):
    """A diffusers vae/ folder: config.json (AutoencoderKL keys) + diffusion_pytorch_model.safetensors."""
    os.makedirs(folder, exist_ok=True)
    n = len(cfg["block_out_channels"])
    conf = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.21.0", "act_fn": "silu",
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "force_upcast": True, "in_channels": 3, "out_channels": 3, "sample_size": 32}
    conf.update(cfg)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)
        f.write("\n")
    return write_safetensors(os.path.join(folder, "diffusion_pytorch_model.safetensors"),
                             {k: (dtype, v) for k, v in params.items()}, {"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="tests/fixtures/vae")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    gold = {}

    def put(key, t):
        assert key not in gold, key
        gold[key] = ("F32", t.detach().clone())

    cfg = dict(CONFIGS["vae"], in_channels=3, out_channels=3)
    p = make_params(cfg)
    lat = cfg["latent_channels"]

    g = torch.Generator().manual_seed(99)
    u8 = torch.randint(0, 256, (B, H, W, 3), generator=g, dtype=torch.int64).numpy().astype(np.uint8)
    img = preprocess(u8)
    put("img.u8", torch.from_numpy(u8.astype(np.float64)))
    put("img.tensor", img)
    img = img.to(torch.float64)

    # quant_conv's bias moves the median of logvar channels 1 and 2 onto the clamp bounds 20
    # and -30, so that about half of each channel is clamped
    _, lv = encode(img, p, cfg)
    qb = p["quant_conv.bias"].clone()
    for c, bound in ((1, 20.0), (2, -30.0)):
        qb[lat + c] += bound - lv[:, c].median()
    p["quant_conv.bias"] = f32(qb)
    sizes = [write_vae_folder(os.path.join(out, "vae"), CONFIGS["vae"], p, "F32")]
    p16 = {k: f16(v) for k, v in p.items()}
    sizes.append(write_vae_folder(os.path.join(out, "vae_f16"), CONFIGS["vae"], p16, "F16"))

    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    noise = randn(B, lat, H // f, W // f)
    put("enc.noise", noise)
    dec_latents = randn(B, lat, H // f, W // f)
    put("dec.latents", dec_latents)
    for case, params in (("enc", p), ("enc16", p16)):
        mean, logvar = encode(img, params, cfg)
        frac = ((logvar[:, 1] == 20.0).double().mean().item(), (logvar[:, 2] == -30.0).double().mean().item())
        assert 0.2 < frac[0] < 0.8 and 0.2 < frac[1] < 0.8, f"clamp not exercised: {frac}"
        put(case + ".mean", mean)
        put(case + ".logvar", logvar)
        put(case + ".latents", latents_of(mean, logvar, noise, cfg))
    put("dec.image", decode(dec_latents, p, cfg))
    put("dec16.image", decode(dec_latents, p16, cfg))

    cfgp = dict(CONFIGS["vae_plain"], in_channels=3, out_channels=3)
    pp = make_params(cfgp)
    sizes.append(write_vae_folder(os.path.join(out, "vae_plain"), CONFIGS["vae_plain"], pp, "F32"))
    fp = 2 ** (len(cfgp["block_out_channels"]) - 1)
    noise_p = randn(B, lat, H // fp, W // fp)
    mean, logvar = encode(img, pp, cfgp)
    latents = f32(latents_of(mean, logvar, noise_p, cfgp))
    put("plain.noise", noise_p)
    put("plain.mean", mean)
    put("plain.logvar", logvar)
    put("plain.latents", latents)
    put("plain.image", decode(latents, pp, cfgp))

    # postprocess: decoder-like values, out-of-range ones, exact ties
    x = (torch.rand(3, 8, 8, generator=g, dtype=torch.float64) * 2.6 - 1.3).to(torch.float32)
    flat = x.view(-1)
    ties = half_cases()
    flat[: len(ties)] = torch.tensor(ties, dtype=torch.float32)
    flat[len(ties)], flat[len(ties) + 1], flat[len(ties) + 2] = -1.0, 1.0, 0.0
    put("post.x", x.to(torch.float64))
    put("post.u8", torch.from_numpy(postprocess(x).astype(np.float64)))

    sizes.append(write_safetensors(os.path.join(out, "golden.safetensors"), gold))
    print(f"wrote {out}: {sum(sizes)} bytes ({', '.join(str(s) for s in sizes)}); "
          f"{sum(v.numel() for v in p.values())} params (vae), {sum(v.numel() for v in pp.values())} (plain); "
          f"{len(ties)} ties")


if __name__ == "__main__":
    main()
