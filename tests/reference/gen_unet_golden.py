#!/usr/bin/python3
"""Golden tensors for tests/test_unet.c: a readable PyTorch re-implementation of diffusers'
UNet2DConditionModel for tiny random configs, forward and backward in float64.

Run with Debian's torch (/usr/bin/python3); tests/reference/regenerate.sh is the one command.
Each module below follows one diffusers file (cited in its docstring; no diffusers package is
needed or used). Three configs (see CONFIGS):
  sd1    SD1-like: conv proj_in/out, attention_head_dim = heads (int), F32 weights
  sd2    SD2-like: linear projection, attention_head_dim a per-block list (heads), 3 levels,
         2 transformer blocks in the mid block, F16 weights
  pixel  pixel space (in/out 3), layers_per_block 2, flip_sin_to_cos false, freq_shift 1,
         center_input_sample, mid_block_scale_factor 2, BF16 weights
For each: tests/fixtures/unet/<name>/unet/{config.json, diffusion_pytorch_model.safetensors}
(diffusers key names and layout, weights stored in the config's dtype, so the folder loads like
a real checkpoint) and tests/fixtures/unet/<name>/golden.safetensors with
  sample, timesteps, ctx, dout, out            inputs, upstream gradient, output
  dsample, dctx                                gradients of loss = sum(out * dout)
  <path>.U/.S/.Vh/.delta, <path>.ddelta        spectral layers (metadata "spectral": paths)
  <path>.shift, <path>.dshift                  norm-gain shifts (metadata "norm_shifts")
  scale                                        the shift scale s
Spectral layers use W_eff = W + U diag(relu(S + s delta) - S) Vh with the stored float32-rounded
thin SVD factors of the stored W (the C test loads them with spectral_init_factors); some
entries of delta clip the ReLU, none lie near its kink. Norm shifts: element mode
gain = gamma + s shift, or scalar mode gain = gamma relu(|gamma| + s shift) / |gamma|.
All values the C side reads are exactly representable in float32 (weights in their dtype).
The sinusoidal timestep features are formed in float32 exactly as diffusers does (exponent,
exp and t * freq are float32 tensors there); only sin / cos are taken in float64.
"""
import argparse
import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

import st_io  # noqa: E402  (tests/reference/st_io.py)

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # reductions in a fixed order: same bytes on every run


def f32(x):
    return x.detach().to(torch.float32).to(torch.float64)


def round_to(x, dtype):
    """Round to the storage dtype and back to float64 (the exact values the C side reads)."""
    return x.detach().to(dtype).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# Layers with optional spectral shifts (torch.nn.Linear / Conv2d / GroupNorm / LayerNorm
# semantics; parameter names as torch's, so state_dict keys are diffusers keys).


class SpectralMixin:
    """W_eff = W + U diag(relu(S + s delta) - S) Vh on the [out, in*k*k] view of the weight."""

    sp = None

    def effective_weight(self):
        W = self.weight
        if self.sp is None:
            return W
        U, S, Vh, delta, s = self.sp
        W2 = W.reshape(W.shape[0], -1) + (U * (F.relu(S + s * delta) - S)) @ Vh
        return W2.reshape(W.shape)


class Linear(nn.Module, SpectralMixin):
    def __init__(self, i, o, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(o, i))
        self.bias = nn.Parameter(torch.zeros(o)) if bias else None

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias)


class Conv2d(nn.Module, SpectralMixin):
    def __init__(self, i, o, k, stride=1, padding=0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(o, i, k, k))
        self.bias = nn.Parameter(torch.zeros(o))
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.effective_weight(), self.bias, stride=self.stride, padding=self.padding)


class NormShiftMixin:
    shift = None  # (delta, s, mode)

    def gain(self):
        if self.shift is None:
            return self.weight
        delta, s, mode = self.shift
        if mode == "element":
            return self.weight + s * delta
        sigma = torch.linalg.norm(self.weight)  # gamma read as a 1 x C matrix
        return self.weight * F.relu(sigma + s * delta) / sigma


class GroupNorm(nn.Module, NormShiftMixin):
    def __init__(self, groups, C, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C))
        self.groups, self.eps = groups, eps

    def forward(self, x):
        return F.group_norm(x, self.groups, self.gain(), self.bias, self.eps)


class LayerNorm(nn.Module, NormShiftMixin):
    def __init__(self, C, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.gain(), self.bias, self.eps)


# ---------------------------------------------------------------------------------------------
# diffusers modules


def timestep_features(t, dim, flip_sin_to_cos, freq_shift, max_period=10000.0):
    """embeddings.py get_timestep_embedding (scale 1): float32 frequencies and arguments."""
    half = dim // 2
    exponent = torch.tensor(-math.log(max_period), dtype=torch.float32) * torch.arange(half, dtype=torch.float32)
    exponent = exponent / torch.tensor(half - freq_shift, dtype=torch.float32)
    arg = (t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]).to(torch.float64)
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """embeddings.py TimestepEmbedding: linear_1, SiLU, linear_2."""

    def __init__(self, i, d):
        super().__init__()
        self.linear_1 = Linear(i, d)
        self.linear_2 = Linear(d, d)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """resnet.py ResnetBlock2D, time_embedding_norm "default", no up/down sampling."""

    def __init__(self, cin, cout, temb, groups, eps, output_scale_factor=1.0):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps)
        self.conv1 = Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = Linear(temb, cout)
        self.norm2 = GroupNorm(groups, cout, eps)
        self.conv2 = Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = Conv2d(cin, cout, 1) if cin != cout else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # dropout p = 0
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Attention(nn.Module):
    """attention_processor.py Attention + AttnProcessor: to_q/k/v without bias, to_out.0 with
    bias, heads split the channels in order, scale dim_head^-0.5."""

    def __init__(self, dim, heads, dim_head, cross_dim=None):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = Linear(dim, inner, bias=False)
        self.to_k = Linear(cross_dim or dim, inner, bias=False)
        self.to_v = Linear(cross_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([Linear(inner, dim), nn.Identity()])

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        B, Tq, _ = x.shape
        Tk = ctx.shape[1]

        def split(t, T):  # head_to_batch_dim
            return t.reshape(B, T, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x), Tq), split(self.to_k(ctx), Tk), split(self.to_v(ctx), Tk)
        p = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(B, Tq, -1)
        return self.to_out[0](o)


class GEGLU(nn.Module):
    """activations.py GEGLU: proj to 2 * dim_out, chunk into (hidden, gate), hidden * gelu(gate)."""

    def __init__(self, i, o):
        super().__init__()
        self.proj = Linear(i, 2 * o)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)  # exact erf GELU


class FeedForward(nn.Module):
    """attention.py FeedForward, activation "geglu", mult 4: net = [GEGLU, Dropout, Linear]."""

    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), Linear(4 * dim, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """attention.py BasicTransformerBlock, norm_type "layer_norm" (eps 1e-5)."""

    def __init__(self, dim, heads, dim_head, cross_dim):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_dim)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, ctx):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), ctx) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """transformers/transformer_2d.py, continuous input: GroupNorm(eps 1e-6), proj_in (1x1 conv,
    or linear on tokens with use_linear_projection), blocks, proj_out, + residual."""

    def __init__(self, heads, dim_head, C, n_layers, cross_dim, groups, linear):
        super().__init__()
        inner = heads * dim_head
        self.linear = linear
        self.norm = GroupNorm(groups, C, 1e-6)
        self.proj_in = Linear(C, inner) if linear else Conv2d(C, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_dim) for _ in range(n_layers)])
        self.proj_out = Linear(inner, C) if linear else Conv2d(inner, C, 1)

    def forward(self, x, ctx):
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, -1)
        if self.linear:
            h = self.proj_in(h)
        for blk in self.transformer_blocks:
            h = blk(h, ctx)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, -1).permute(0, 3, 1, 2)
        if not self.linear:
            h = self.proj_out(h)
        return h + x


class Downsample2D(nn.Module):
    """downsampling.py Downsample2D(use_conv=True): conv3x3 stride 2 padding 1."""

    def __init__(self, C):
        super().__init__()
        self.conv = Conv2d(C, C, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    """upsampling.py Upsample2D(use_conv=True): nearest 2x, conv3x3."""

    def __init__(self, C):
        super().__init__()
        self.conv = Conv2d(C, C, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """unet_2d_blocks.py CrossAttnDownBlock2D (attn) / DownBlock2D: returns the hidden state and
    output_states (every resnet [+ attention] output, then the downsampler's)."""

    def __init__(self, cin, cout, temb, n, attn, heads, tlayers, cross, groups, eps, linear, down):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, temb, groups, eps)
                                      for i in range(n)])
        if attn:
            self.attentions = nn.ModuleList([Transformer2DModel(heads, cout // heads, cout, tlayers, cross, groups,
                                                                linear) for _ in range(n)])
        self.has_attn = attn
        if down:
            self.downsamplers = nn.ModuleList([Downsample2D(cout)])
        self.has_down = down

    def forward(self, h, temb, ctx):
        states = []
        for i, r in enumerate(self.resnets):
            h = r(h, temb)
            if self.has_attn:
                h = self.attentions[i](h, ctx)
            states.append(h)
        if self.has_down:
            h = self.downsamplers[0](h)
            states.append(h)
        return h, states


class MidBlock(nn.Module):
    """unet_2d_blocks.py UNetMidBlock2DCrossAttn: resnet, (attention, resnet) x 1."""

    def __init__(self, C, temb, heads, tlayers, cross, groups, eps, linear, scale):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(C, C, temb, groups, eps, scale) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(heads, C // heads, C, tlayers, cross, groups, linear)])

    def forward(self, h, temb, ctx):
        h = self.resnets[0](h, temb)
        h = self.attentions[0](h, ctx)
        return self.resnets[1](h, temb)


class UpBlock(nn.Module):
    """unet_2d_blocks.py CrossAttnUpBlock2D (attn) / UpBlock2D: resnet i reads
    cat([h, last skip]); res_skip = in_channels for the last resnet, else out_channels."""

    def __init__(self, cin, cout, prev, temb, n, attn, heads, tlayers, cross, groups, eps, linear, up):
        super().__init__()
        self.resnets = nn.ModuleList()
        for i in range(n):
            res_skip = cin if i == n - 1 else cout
            res_in = prev if i == 0 else cout
            self.resnets.append(ResnetBlock2D(res_in + res_skip, cout, temb, groups, eps))
        if attn:
            self.attentions = nn.ModuleList([Transformer2DModel(heads, cout // heads, cout, tlayers, cross, groups,
                                                                linear) for _ in range(n)])
        self.has_attn = attn
        if up:
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])
        self.has_up = up

    def forward(self, h, skips, temb, ctx):
        for i, r in enumerate(self.resnets):
            h = r(torch.cat([h, skips.pop()], dim=1), temb)
            if self.has_attn:
                h = self.attentions[i](h, ctx)
        if self.has_up:
            h = self.upsamplers[0](h)
        return h


class UNet2DConditionModel(nn.Module):
    """unets/unet_2d_condition.py: heads = num_attention_heads or attention_head_dim (per
    block; an int applies to all), up blocks take the reversed lists."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        boc = cfg["block_out_channels"]
        n = len(boc)

        def per_block(v):
            return list(v) if isinstance(v, (list, tuple)) else [v] * n

        heads = per_block(cfg.get("num_attention_heads") or cfg["attention_head_dim"])
        layers = per_block(cfg["layers_per_block"])
        tl = per_block(cfg.get("transformer_layers_per_block", 1))
        temb = cfg.get("time_embedding_dim") or 4 * boc[0]
        groups, eps, cross = cfg["norm_num_groups"], cfg["norm_eps"], cfg["cross_attention_dim"]
        linear = cfg["use_linear_projection"]
        self.conv_in = Conv2d(cfg["in_channels"], boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        self.down_blocks = nn.ModuleList()
        out = boc[0]
        for i, t in enumerate(cfg["down_block_types"]):
            cin, out = out, boc[i]
            self.down_blocks.append(DownBlock(cin, out, temb, layers[i], t == "CrossAttnDownBlock2D", heads[i], tl[i],
                                              cross, groups, eps, linear, i < n - 1))
        self.mid_block = MidBlock(boc[-1], temb, heads[-1], tl[-1], cross, groups, eps, linear,
                                  cfg.get("mid_block_scale_factor", 1))
        rb, rh, rl, rt = boc[::-1], heads[::-1], layers[::-1], tl[::-1]
        self.up_blocks = nn.ModuleList()
        out = rb[0]
        for i, t in enumerate(cfg["up_block_types"]):
            prev, out, cin = out, rb[i], rb[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(cin, out, prev, temb, rl[i] + 1, t == "CrossAttnUpBlock2D", rh[i], rt[i],
                                          cross, groups, eps, linear, i < n - 1))
        self.conv_norm_out = GroupNorm(groups, boc[0], eps)
        self.conv_out = Conv2d(boc[0], cfg["out_channels"], 3, padding=1)

    def forward(self, sample, timesteps, ctx):
        cfg = self.cfg
        if cfg.get("center_input_sample"):
            sample = 2 * sample - 1.0
        emb = self.time_embedding(timestep_features(timesteps, cfg["block_out_channels"][0], cfg["flip_sin_to_cos"],
                                                    cfg["freq_shift"]))
        h = self.conv_in(sample)
        skips = [h]
        for blk in self.down_blocks:
            h, states = blk(h, emb, ctx)
            skips += states
        self.n_skips = len(skips)
        h = self.mid_block(h, emb, ctx)
        for blk in self.up_blocks:
            h = blk(h, skips, emb, ctx)
        assert not skips
        return self.conv_out(F.silu(self.conv_norm_out(h)))


# ---------------------------------------------------------------------------------------------
# Configs and fixture generation

BASE = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.21.0",
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 4,
    "cross_attention_dim": 12,
    "sample_size": 8,
}

CONFIGS = {
    "sd1": dict(
        cfg=dict(BASE, in_channels=4, out_channels=4, block_out_channels=[8, 16], layers_per_block=1,
                 attention_head_dim=2, use_linear_projection=False,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
        dtype=torch.float32, B=2, H=8, W=8, T=5, scale=1.0, timesteps=[999.0, 37.5],
        spectral=["conv_in", "down_blocks.0.resnets.0.conv1",
                  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                  "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
                  "up_blocks.1.attentions.0.proj_in"],
        norm_shifts=[("down_blocks.1.resnets.0.norm2", "element")]),
    "sd2": dict(
        cfg=dict(BASE, in_channels=4, out_channels=4, block_out_channels=[8, 8, 8], layers_per_block=1,
                 attention_head_dim=[1, 2, 4], use_linear_projection=True, transformer_layers_per_block=[1, 1, 2],
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], upcast_attention=True),
        dtype=torch.float16, B=2, H=8, W=8, T=4, scale=0.75, timesteps=[500.0, 1.0],
        spectral=["conv_in", "down_blocks.1.resnets.0.conv1",
                  "mid_block.attentions.0.transformer_blocks.1.attn2.to_k",
                  "up_blocks.2.attentions.0.transformer_blocks.0.ff.net.0.proj",
                  "mid_block.attentions.0.proj_in"],
        norm_shifts=[("up_blocks.1.attentions.0.norm", "element"),
                     ("down_blocks.0.attentions.0.transformer_blocks.0.norm2", "element")]),
    "pixel": dict(
        cfg=dict(BASE, in_channels=3, out_channels=3, block_out_channels=[4, 8], layers_per_block=2,
                 attention_head_dim=2, use_linear_projection=False, flip_sin_to_cos=False, freq_shift=1,
                 center_input_sample=True, norm_num_groups=2, mid_block_scale_factor=2,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"]),
        dtype=torch.bfloat16, B=1, H=8, W=8, T=3, scale=1.0, timesteps=[250.0],
        spectral=["conv_in", "conv_out", "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
                  "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
                  "up_blocks.0.attentions.0.proj_in"],
        norm_shifts=[("conv_norm_out", "scalar")]),
}


def init_weights(model, gen, dtype):
    """Random weights (fan-in scaled), rounded to the storage dtype."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() >= 2:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            elif name.endswith("weight"):  # norm gain
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            else:  # biases, norm shifts
                v = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(round_to(v, dtype))


def spectral_factors(W2d, s, gen):
    """Float32-rounded thin SVD of W2d and a non-zero delta (two entries clip the ReLU; no
    unclipped argument near the kink)."""
    U, S, Vh = torch.linalg.svd(W2d, full_matrices=False)
    U, S, Vh = f32(U), f32(S), f32(Vh)
    r = S.numel()
    delta = 0.3 * S * torch.randn(r, generator=gen) / s
    for i in sorted({r - 1, r // 2}):
        delta[i] = -1.5 * S[i] / s
    arg = S + s * delta
    bad = arg.abs() < 0.1 * S
    delta[bad] = -0.5 * S[bad] / s
    delta = f32(delta)
    arg = S + s * delta
    assert (arg.abs() > 0.05 * S).all() and (arg < 0).sum() >= 1
    return U, S, Vh, delta


def tensor_bytes(t, dtype):
    a = t.detach().contiguous().reshape(-1)
    if dtype == "F32":
        return struct.pack("<%df" % a.numel(), *a.to(torch.float32).tolist())
    bits = a.to(torch.float16 if dtype == "F16" else torch.bfloat16).view(torch.int16).tolist()
    return struct.pack("<%dh" % len(bits), *bits)


def write_safetensors(path, tensors, metadata, dtype="F32"):
    """One-dtype fixture file (st_io.write_raw), metadata last."""
    entries = [(name, dtype, list(t.shape), tensor_bytes(t, dtype)) for name, t in tensors.items()]
    return st_io.write_raw(path, entries, metadata, keep_empty_metadata=True)


def generate(name, spec, outdir, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = spec["cfg"]
    model = UNet2DConditionModel(cfg)
    init_weights(model, gen, spec["dtype"])
    modules = dict(model.named_modules())
    s = spec["scale"]
    golden = {}
    leaves = []
    for path in spec["spectral"]:
        layer = modules[path]
        W2d = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        U, S, Vh, delta = spectral_factors(W2d, s, gen)
        d = delta.clone().requires_grad_(True)
        layer.sp = (U, S, Vh, d, s)
        golden.update({path + ".U": U, path + ".S": S, path + ".Vh": Vh, path + ".delta": delta})
        leaves.append((path + ".ddelta", d))
    for path, mode in spec["norm_shifts"]:
        norm = modules[path]
        C = norm.weight.numel()
        shift = f32(0.2 * torch.randn(C if mode == "element" else 1, generator=gen))
        if mode == "scalar":
            shift = f32(torch.tensor([0.3 * torch.linalg.norm(norm.weight).item()]))
        d = shift.clone().requires_grad_(True)
        norm.shift = (d, s, mode)
        golden[path + ".shift"] = shift
        leaves.append((path + ".dshift", d))

    B, H, W, T = spec["B"], spec["H"], spec["W"], spec["T"]
    sample = f32(torch.randn(B, cfg["in_channels"], H, W, generator=gen)).requires_grad_(True)
    ctx = f32(torch.randn(B, T, cfg["cross_attention_dim"], generator=gen)).requires_grad_(True)
    timesteps = torch.tensor(spec["timesteps"])
    out = model(sample, timesteps, ctx)
    dout = f32(torch.randn(out.shape, generator=gen))
    grads = torch.autograd.grad((out * dout).sum(), [sample, ctx] + [l for _, l in leaves])
    golden = dict({"sample": sample, "timesteps": timesteps, "ctx": ctx, "dout": dout, "out": out,
                   "dsample": grads[0], "dctx": grads[1], "scale": torch.tensor([s])}, **golden)
    for (key, _), g in zip(leaves, grads[2:]):
        golden[key] = g
    for k, v in golden.items():
        assert torch.isfinite(v).all(), k

    folder = os.path.join(outdir, name, "unet")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    sd_dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[spec["dtype"]]
    weights = {k: v for k, v in model.state_dict().items()}
    n1 = write_safetensors(os.path.join(folder, "diffusion_pytorch_model.safetensors"), weights, {"format": "pt"},
                           sd_dtype)
    meta = {"generator": "tests/reference/gen_unet_golden.py", "config": name,
            "spectral": ",".join(spec["spectral"]),
            "norm_shifts": ",".join(f"{p}:{m}" for p, m in spec["norm_shifts"]),
            "n_skips": str(model.n_skips), "n_params": str(sum(p.numel() for p in model.parameters())),
            "B": str(B), "H": str(H), "W": str(W), "T": str(T)}
    n2 = write_safetensors(os.path.join(outdir, name, "golden.safetensors"), golden, meta)
    print(f"{name}: {meta['n_params']} parameters ({sd_dtype}), {model.n_skips} skips, |out| max "
          f"{out.abs().max().item():.3g}, files {n1} + {n2} bytes")
    return n1 + n2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/unet)")
    args = ap.parse_args()
    total = 0
    for i, (name, spec) in enumerate(CONFIGS.items()):
        total += generate(name, spec, args.out, 20240701 + i)
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
