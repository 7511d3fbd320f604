#!/usr/bin/python3
"""Golden tensors for tests/test_golden_ops.c: every operator of src/ops/ops.h and the spectral
linear / conv / norm-shift of src/weights/spectral.h, computed in float64 with PyTorch autograd.

Run with Debian's torch (/usr/bin/python3); tests/reference/regenerate.sh is the one command.
Inputs are drawn in float64 from a fixed torch.Generator and ROUNDED to float32 before use, so
the C side sees exactly the inputs the reference used; everything is stored as F32.
For each case: inputs, parameters, a random upstream gradient `dout`, the forward output and
the gradient of every input / parameter of  loss = sum(out * dout).  Keys are "<case>.<tensor>".
Shapes live in the C test's case table (it checks the element counts).

The acceptance case spconv_big (64 -> 128 channels, 3x3, batch 2, 16x16) would not fit the
fixture budget with its inputs stored, so its inp / dout / W come from the C tests' own
generator (testutil.c: trng_seed + fill_uniform, which is exact integer arithmetic and an exact
float expression), re-implemented below bit for bit; head/tail values are stored so the C test
can prove that both sides generated the same numbers.
"""
import argparse
import math
import struct
import sys

import torch
import torch.nn.functional as F

import st_io  # noqa: E402  (tests/reference/st_io.py)

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # reductions in a fixed order: same bytes on every run

GEN = torch.Generator().manual_seed(20240611)
TENSORS = {}  # name -> float64 tensor (stored as F32), in insertion order


def f32(x):
    """Round a float64 tensor to the nearest float32 and back (exact values the C side sees)."""
    return x.detach().to(torch.float32).to(torch.float64)


def randn(*shape, std=1.0, mean=0.0):
    return f32(torch.randn(*shape, generator=GEN) * std + mean)


def rand(*shape, lo=0.0, hi=1.0):
    return f32(torch.rand(*shape, generator=GEN) * (hi - lo) + lo)


def fscalar(v):
    """A Python float rounded to float32 (e.g. a scale the C side holds as a float)."""
    return float(torch.tensor(v, dtype=torch.float32))


def put(case, name, t):
    key = f"{case}.{name}"
    assert key not in TENSORS, key
    TENSORS[key] = t.detach().clone()


def leaf(t):
    return t.clone().requires_grad_(True)


def run_case(case, inputs, fn, extra_outputs=None):
    """inputs: ordered dict name -> float32-exact tensor; fn(**leaves) -> out (or (out, extras)).
    Stores inputs, dout, out, extras and d<name> for every input."""
    leaves = {k: leaf(v) for k, v in inputs.items()}
    res = fn(**leaves)
    extras = {}
    if isinstance(res, tuple):
        res, extras = res
    dout = randn(*res.shape)
    loss = (res * dout).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    for k, v in inputs.items():
        put(case, k, v)
    put(case, "dout", dout)
    put(case, "out", res)
    for k, v in extras.items():
        put(case, k, v)
    for k, g in zip(leaves.keys(), grads):
        if g is None:
            g = torch.zeros_like(inputs[k])
        put(case, "d" + k, g)


# ---------------------------------------------------------------------------------------------
# trng (tests/testutil.c) re-implemented exactly: splitmix64 seeding, xorshift64, and
# fill_uniform(lo, hi) = lo + (hi - lo) * u with u = (x >> 40) / 2^24. With hi - lo a power of
# two the float expression is exact, so double arithmetic here gives the same floats.
M64 = (1 << 64) - 1


class Trng:
    def __init__(self, seed):
        x = (seed + 0x9E3779B97F4A7C15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        self.s = (z ^ (z >> 31)) | 1

    def next(self):
        s = self.s
        s ^= (s << 13) & M64
        s ^= s >> 7
        s ^= (s << 17) & M64
        self.s = s
        return s

    def uniform_tensor(self, n, lo, hi):
        width = hi - lo
        assert width > 0 and math.frexp(width)[0] == 0.5, "hi - lo must be a power of two"
        vals = [lo + width * ((self.next() >> 40) * (1.0 / 16777216.0)) for _ in range(n)]
        t = torch.tensor(vals, dtype=torch.float64)
        assert torch.equal(t, f32(t)), "trng values must be exact float32"
        return t


def trng_tensor(seed, shape, lo, hi):
    n = 1
    for d in shape:
        n *= d
    return Trng(seed).uniform_tensor(n, lo, hi).reshape(shape)


# ---------------------------------------------------------------------------------------------
# ops.h


def gen_linear():
    N, IC, OC = 6, 10, 7
    run_case("linear_bias",
             dict(inp=randn(N, IC), weight=randn(OC, IC, std=0.3), bias=randn(OC)),
             lambda inp, weight, bias: F.linear(inp, weight, bias))
    run_case("linear_nobias",
             dict(inp=randn(N, IC), weight=randn(OC, IC, std=0.3)),
             lambda inp, weight: F.linear(inp, weight))


def conv_case(case, B, IC, H, W, OC, K, stride, pad):
    """pad = (top, bottom, left, right) as in conv2d_shape_t."""
    top, bottom, left, right = pad

    def fn(inp, weight, bias):
        x = F.pad(inp, (left, right, top, bottom))
        return F.conv2d(x, weight, bias, stride=stride)

    run_case(case,
             dict(inp=randn(B, IC, H, W), weight=randn(OC, IC, K, K, std=0.2), bias=randn(OC)),
             fn)


def gen_conv():
    conv_case("conv3x3_s1", 2, 3, 6, 5, 4, 3, 1, (1, 1, 1, 1))
    conv_case("conv3x3_s2", 2, 3, 7, 6, 4, 3, 2, (1, 1, 1, 1))
    conv_case("conv1x1", 2, 5, 4, 3, 3, 1, 1, (0, 0, 0, 0))
    conv_case("conv3x3_s2_vae", 2, 3, 8, 6, 4, 3, 2, (0, 1, 0, 1))


def gen_norm():
    B, C, S, G, eps = 2, 8, 12, 4, 1e-5

    def gn(inp, gamma, beta):
        x = inp.view(B, G, -1)
        mean = x.mean(-1)
        var = ((x - mean[..., None]) ** 2).mean(-1)
        rstd = 1.0 / torch.sqrt(var + eps)
        y = ((x - mean[..., None]) * rstd[..., None]).view(B, C, S)
        out = y * gamma[None, :, None] + beta[None, :, None]
        return out, dict(mean=mean, rstd=rstd)

    run_case("groupnorm",
             dict(inp=randn(B, C, S, std=2.0, mean=0.5), gamma=randn(C, std=0.5, mean=1.0),
                  beta=randn(C, std=0.5)),
             gn)

    N, C2 = 5, 12

    def ln(inp, gamma, beta):
        mean = inp.mean(-1)
        var = ((inp - mean[:, None]) ** 2).mean(-1)
        rstd = 1.0 / torch.sqrt(var + eps)
        out = (inp - mean[:, None]) * rstd[:, None] * gamma + beta
        return out, dict(mean=mean, rstd=rstd)

    run_case("layernorm",
             dict(inp=randn(N, C2, std=1.5, mean=-0.3), gamma=randn(C2, std=0.5, mean=1.0),
                  beta=randn(C2, std=0.5)),
             ln)


def gen_activation():
    n = 64
    run_case("silu", dict(inp=randn(n, std=3.0)), lambda inp: inp * torch.sigmoid(inp))
    run_case("gelu", dict(inp=randn(n, std=3.0)),
             lambda inp: 0.5 * inp * (1.0 + torch.erf(inp / math.sqrt(2.0))))
    run_case("quick_gelu", dict(inp=randn(n, std=3.0)),
             lambda inp: inp * torch.sigmoid(1.702 * inp))
    N, C = 4, 6

    def geglu(inp):
        h, gate = inp[:, :C], inp[:, C:]
        return h * (0.5 * gate * (1.0 + torch.erf(gate / math.sqrt(2.0))))

    run_case("geglu", dict(inp=randn(N, 2 * C, std=2.0)), geglu)


def attention_ref(q, k, v, B, Tq, Tk, H, D, scale, causal):
    qh = q.view(B, Tq, H, D).transpose(1, 2)
    kh = k.view(B, Tk, H, D).transpose(1, 2)
    vh = v.view(B, Tk, H, D).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1)
    o = (p @ vh).transpose(1, 2).reshape(B, Tq, H * D)
    return o, dict(lse=lse)


def attn_case(case, B, Tq, Tk, H, D, causal):
    scale = fscalar(D ** -0.5)
    run_case(case,
             dict(q=randn(B, Tq, H * D), k=randn(B, Tk, H * D), v=randn(B, Tk, H * D)),
             lambda q, k, v: attention_ref(q, k, v, B, Tq, Tk, H, D, scale, causal))


def gen_attention():
    attn_case("attn_self", 2, 40, 40, 2, 8, False)
    attn_case("attn_cross", 2, 9, 7, 2, 8, False)
    attn_case("attn_causal", 2, 33, 33, 2, 4, True)


def gen_resample():
    B, C, H, W = 2, 3, 3, 4
    run_case("upsample", dict(inp=randn(B, C, H, W)),
             lambda inp: inp.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    B, Ca, Cb, S = 2, 3, 2, 5
    run_case("concat", dict(a=randn(B, Ca, S), b=randn(B, Cb, S)),
             lambda a, b: torch.cat([a, b], dim=1))


def gen_embed():
    B, dim, max_period = 4, 16, 10000.0
    t = torch.tensor([0.0, 3.5, 250.0, 999.0])
    for shift in (0, 1):
        def emb(t):
            half = dim // 2
            exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - shift)
            arg = t[:, None] * torch.exp(exponent)[None, :]
            return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)  # flip_sin_to_cos

        run_case(f"temb_shift{shift}", dict(t=t.clone()), emb)


def gen_loss():
    n, dloss = 50, fscalar(1.7)
    pred, target = randn(n), randn(n)
    p = leaf(pred)
    loss = ((p - target) ** 2).mean()
    (g,) = torch.autograd.grad(loss * dloss, [p])
    put("mse", "pred", pred)
    put("mse", "target", target)
    put("mse", "loss", loss.reshape(1))
    put("mse", "dloss", torch.tensor([dloss]))
    put("mse", "dpred", g)


# ---------------------------------------------------------------------------------------------
# spectral.h


def spectral_factors(W2d, s):
    """Stored, float32-rounded thin SVD of W2d and a shift delta ~ 0.3 S / s with entries that
    clip the ReLU (sigma + s delta < 0), none of them near the kink."""
    U, S, Vh = torch.linalg.svd(W2d, full_matrices=False)
    U, S, Vh = f32(U), f32(S), f32(Vh)
    r = S.numel()
    z = torch.randn(r, generator=GEN)
    delta = 0.3 * S * z / s
    # Clip the smallest singular value and one in the middle: sigma + s delta = -0.5 sigma.
    for i in (r - 1, r // 2):
        delta[i] = -1.5 * S[i] / s
    # Keep every unclipped argument well away from 0 (float32 vs float64 must agree on the side).
    arg = S + s * delta
    bad = (arg.abs() < 0.1 * S)
    delta[bad] = -0.5 * S[bad] / s
    delta = f32(delta)
    arg = S + s * delta
    assert (arg.abs() > 0.05 * S).all() and (arg < 0).sum() >= 1
    return U, S, Vh, delta


def spectral_weff(W2d, U, S, Vh, delta, s, with_w):
    c = F.relu(S + s * delta)
    if with_w:
        return W2d + U @ torch.diag(c - S) @ Vh
    return U @ torch.diag(c) @ Vh


def store_spectral(case, W2d, U, S, Vh, delta, s, with_w):
    if with_w:
        put(case, "W", W2d)
    put(case, "U", U)
    put(case, "S", S)
    put(case, "Vh", Vh)
    put(case, "delta", delta)
    put(case, "scale", torch.tensor([s]))


def spectral_grads(case, out, dout, inp_leaf, delta_leaf, bias_leaf, store_inputs=True):
    loss = (out * dout).sum()
    dinp, ddelta, dbias = torch.autograd.grad(loss, [inp_leaf, delta_leaf, bias_leaf])
    if store_inputs:
        put(case, "inp", inp_leaf)
        put(case, "dout", dout)
    put(case, "bias", bias_leaf)
    put(case, "out", out)
    put(case, "dinp", dinp)
    put(case, "ddelta", ddelta)
    put(case, "dbias", dbias)


def splinear_case(case, N, cols, rows, with_w):
    s = fscalar(0.7)
    W = randn(rows, cols, std=0.4)
    U, S, Vh, delta = spectral_factors(W, s)
    store_spectral(case, W, U, S, Vh, delta, s, with_w)
    x, d, b = leaf(randn(N, cols)), leaf(delta), leaf(randn(rows))
    out = F.linear(x, spectral_weff(W, U, S, Vh, d, s, with_w), b)
    spectral_grads(case, out, randn(*out.shape), x, d, b)


def spconv_case(case, B, IC, H, Wd, OC, K, stride, pad, with_w, big=False):
    s = fscalar(0.7)
    top, bottom, left, right = pad
    cols = IC * K * K
    if big:
        # Inputs from the C test's generator (see the module docstring).
        W = trng_tensor(1003, (OC, cols), -1.0 / 16, 1.0 / 16)
        inp = trng_tensor(1001, (B, IC, H, Wd), -1.0, 1.0)
    else:
        W = randn(OC, cols, std=0.2)
        inp = randn(B, IC, H, Wd)
    U, S, Vh, delta = spectral_factors(W, s)
    store_spectral(case, W if not big else None, U, S, Vh, delta, s, with_w and not big)
    x, d, b = leaf(inp), leaf(delta), leaf(randn(OC))
    weff = spectral_weff(W, U, S, Vh, d, s, with_w).view(OC, IC, K, K)
    out = F.conv2d(F.pad(x, (left, right, top, bottom)), weff, b, stride=stride)
    if big:
        dout = trng_tensor(1002, tuple(out.shape), -1.0, 1.0)
        for nm, t in (("inp", inp), ("dout", dout), ("W", W)):
            flat = t.reshape(-1)
            put(case, nm + "_check", torch.cat([flat[:4], flat[-4:]]))
    else:
        dout = randn(*out.shape)
    spectral_grads(case, out, dout, x, d, b, store_inputs=not big)


def gen_spectral():
    splinear_case("splinear_w", 6, 10, 7, True)
    splinear_case("splinear_now", 5, 6, 9, False)
    spconv_case("spconv3x3_w", 2, 3, 5, 6, 8, 3, 1, (1, 1, 1, 1), True)
    spconv_case("spconv3x3_s2_vae_now", 2, 2, 6, 5, 6, 3, 2, (0, 1, 0, 1), False)
    # Acceptance case: SD-sized channels, with W.
    spconv_case("spconv_big", 2, 64, 16, 16, 128, 3, 1, (1, 1, 1, 1), True, big=True)


def gen_normshift():
    C = 8
    s = fscalar(0.7)
    # Element mode: gain = gamma + s * delta (spectral.c applies the scale here too).
    gamma = randn(C, std=0.5, mean=1.0)
    delta = randn(C, std=0.3)
    g, d = leaf(gamma), leaf(delta)
    gain = g + s * d
    dgain = randn(C)
    (dd,) = torch.autograd.grad((gain * dgain).sum(), [d])
    for k, v in (("gamma", gamma), ("delta", delta), ("scale", torch.tensor([s])),
                 ("gain", gain), ("dgain", dgain), ("ddelta", dd)):
        put("normshift_element", k, v)
    # Scalar mode: gamma as a 1 x C matrix, sigma = ||gamma||_2, gain = gamma relu(sigma + s d)/sigma.
    # Two deltas: one unclipped, one that clips the ReLU (gain 0, ddelta 0).
    for case, dval in (("normshift_scalar", 0.9), ("normshift_scalar_clip", -6.0)):
        gamma = randn(C, std=0.8, mean=0.2)  # mixed signs
        delta = f32(torch.tensor([dval]))
        g, d = leaf(gamma), leaf(delta)
        sigma = torch.linalg.norm(g)
        gain = g * F.relu(sigma + s * d) / sigma
        dgain = randn(C)
        (dd,) = torch.autograd.grad((gain * dgain).sum(), [d])
        for k, v in (("gamma", gamma), ("delta", delta), ("scale", torch.tensor([s])),
                     ("gain", gain), ("dgain", dgain), ("ddelta", dd)):
            put(case, k, v)


# ---------------------------------------------------------------------------------------------


def write_safetensors(path, tensors, metadata):
    """F32 fixture file (st_io.write_raw): tensors name -> tensor, metadata last."""
    entries = []
    for name, t in tensors.items():
        a = t.detach().to(torch.float32).contiguous().reshape(-1)
        entries.append((name, "F32", list(t.shape), struct.pack("<%df" % a.numel(), *a.tolist())))
    return st_io.write_raw(path, entries, metadata, keep_empty_metadata=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output .safetensors path")
    args = ap.parse_args()
    gen_linear()
    gen_conv()
    gen_norm()
    gen_activation()
    gen_attention()
    gen_resample()
    gen_embed()
    gen_loss()
    gen_spectral()
    gen_normshift()
    for k, v in TENSORS.items():
        assert torch.isfinite(v).all(), k
    size = write_safetensors(args.out, TENSORS, {
        "generator": "tests/reference/gen_ops_golden.py",
        "torch": torch.__version__.split("+")[0],
    })
    print(f"{args.out}: {len(TENSORS)} tensors, {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
