#!/usr/bin/python3
"""Golden tensors for tests/test_clip.c: a tiny random CLIP text encoder (transformers
CLIPTextModel semantics, as Stable Diffusion uses it) computed in float64 with PyTorch autograd.

Writes, under --out (tests/fixtures/clip/):
  sd1_text_encoder/      config.json + model.safetensors (F32): hidden 32, 4 heads of 8, MLP 64,
                         2 layers, quick_gelu, SD1-style ids (padded with the end token); the file
                         also holds transformers' int64 `position_ids` buffer, as SD 1.x files do.
  sd1_text_encoder_f16/  the same weights stored as F16 (the reference for it uses the F16-rounded
                         weights).
  sd2_text_encoder/      hidden 16, 2 heads of 8, MLP 64, 3 layers, exact gelu, no layer_norm_eps
                         key (default 1e-5), SD2-style ids (padded with 0).
  golden.safetensors     ids, outputs and gradients, keys "<case>.<tensor>":
    sd1.ids / sd1.hidden / sd1.dembed          last_hidden_state and d loss / d(token + position)
    sd1_f16.hidden                             the same with the F16 weights (the C test checks the
                                               F16 backward against an F32 copy of the F16 values)
    sd1_spec.*                                 layer 0 q_proj and fc1 and the token embedding made
                                               spectral with W kept: W + U diag(relu(S + delta) - S) Vh
                                               from the stored float32-rounded U, S, Vh and a non-zero
                                               delta (some entries clipped by the ReLU, none near the
                                               kink); hidden and d delta of each
    sd2.ids / sd2.hidden / sd2.dembed          the gelu model
    sd2_skip1.hidden                           clip_skip = 1: output of layer L-1, then final LN
    sdxl2.ids / sdxl2.hidden / sdxl2.pooled    SDXL's text_encoder_2 shape (CLIPTextModelWithProjection,
                                               gelu, text_projection [12, 16] without bias): hidden =
                                               hidden_states[-2] (raw, no final LN), pooled =
                                               text_projection(final LN of the last layer at the first
                                               largest id); row 0 padded with 0 ("!"), row 1 with the
                                               end token (the first one is the EOS)
    sdxl2_skip1.*                              clip_skip = 1: hidden = hidden_states[-3]; with
                                               loss = sum(hidden * dout) + sum(pooled * dpool): dembed,
                                               dproj (d text_projection.weight), dlnf (d final LN gain),
                                               dfc2_last (d layers.2.mlp.fc2.weight)
loss = sum(hidden * dout). dout is not stored: both sides draw it from the tests' generator
(tests/testutil.c trng_seed + fill_uniform(-1, 1), re-implemented here bit for bit; seeds in
DOUT_SEED), which keeps the fixtures small. All inputs are float32-exact; math is float64.
"""
import argparse
import json
import math
import os
import struct

import torch
import torch.nn.functional as F

import st_io  # noqa: E402  (tests/reference/st_io.py)

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order: byte-identical output on every run

GEN = torch.Generator().manual_seed(7707)
B, T = 2, 77
DOUT_SEED = {"sd1": 501, "sd2": 502, "sdxl2": 503, "sdxl2_pool": 504}   # the C test uses the same seeds

CONFIGS = {
    "sd1": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, vocab_size=192, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "sd2": dict(hidden_size=16, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                max_position_embeddings=77, vocab_size=128, hidden_act="gelu"),
    "sdxl2": dict(hidden_size=16, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                  max_position_embeddings=77, vocab_size=128, hidden_act="gelu", projection_dim=12,
                  architectures=["CLIPTextModelWithProjection"]),
}


def f32(x):
    return x.detach().to(torch.float32).to(torch.float64)


def f16(x):
    return x.detach().to(torch.float16).to(torch.float64)


def randn(*shape, std=1.0, mean=0.0):
    return f32(torch.randn(*shape, generator=GEN) * std + mean)


# ---- tests/testutil.c's generator, bit for bit: splitmix64 seed, xorshift64, 24-bit uniforms ----
M64 = (1 << 64) - 1


def trng_uniform(seed, n, lo, hi):
    z = (seed + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    s = (z ^ (z >> 31)) | 1
    width = hi - lo
    assert width > 0 and math.frexp(width)[0] == 0.5, "hi - lo must be a power of two (exact floats)"
    out = []
    for _ in range(n):
        s ^= (s << 13) & M64
        s ^= s >> 7
        s ^= (s << 17) & M64
        out.append(lo + width * ((s >> 40) * (1.0 / 16777216.0)))
    return torch.tensor(out, dtype=torch.float64)


# ---- the model -------------------------------------------------------------------------------

def make_params(cfg):
    """Random weights in transformers' key names, scaled so every layer does real work:
    unit-variance LN outputs, O(1) attention scores, gains near 1."""
    C, I, V, P = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"]
    p = {}
    p["text_model.embeddings.token_embedding.weight"] = randn(V, C, std=0.5)
    p["text_model.embeddings.position_embedding.weight"] = randn(P, C, std=0.2)
    for i in range(cfg["num_hidden_layers"]):
        pre = f"text_model.encoder.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            p[pre + ln + ".weight"] = randn(C, std=0.1, mean=1.0)
            p[pre + ln + ".bias"] = randn(C, std=0.1)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            p[pre + "self_attn." + proj + ".weight"] = randn(C, C, std=1.0 / math.sqrt(C))
            p[pre + "self_attn." + proj + ".bias"] = randn(C, std=0.1)
        p[pre + "mlp.fc1.weight"] = randn(I, C, std=1.0 / math.sqrt(C))
        p[pre + "mlp.fc1.bias"] = randn(I, std=0.1)
        p[pre + "mlp.fc2.weight"] = randn(C, I, std=1.0 / math.sqrt(I))
        p[pre + "mlp.fc2.bias"] = randn(C, std=0.1)
    p["text_model.final_layer_norm.weight"] = randn(C, std=0.1, mean=1.0)
    p["text_model.final_layer_norm.bias"] = randn(C, std=0.1)
    return p


def layer_norm(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def act_fn(name, x):
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)  # exact erf form, transformers' "gelu"
    raise ValueError(name)


def embed(p, ids):
    Tn = ids.shape[1]
    return p["text_model.embeddings.token_embedding.weight"][ids] + \
        p["text_model.embeddings.position_embedding.weight"][:Tn].unsqueeze(0)


def encoder_layer(p, cfg, i, x):
    """CLIPEncoderLayer i on x [B, T, C] (causal self-attention, then the MLP)."""
    Bn, Tn, C = x.shape
    H = cfg["num_attention_heads"]
    D = C // H
    eps = cfg.get("layer_norm_eps", 1e-5)
    mask = torch.full((Tn, Tn), float("-inf")).triu(1)  # query i sees keys j <= i
    pre = f"text_model.encoder.layers.{i}."
    g = lambda n: p[pre + n]
    h = layer_norm(x, g("layer_norm1.weight"), g("layer_norm1.bias"), eps)
    heads = lambda t: t.view(Bn, Tn, H, D).transpose(1, 2)
    q = heads(F.linear(h, g("self_attn.q_proj.weight"), g("self_attn.q_proj.bias")) * D ** -0.5)
    k = heads(F.linear(h, g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias")))
    v = heads(F.linear(h, g("self_attn.v_proj.weight"), g("self_attn.v_proj.bias")))
    a = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1) @ v
    a = a.transpose(1, 2).reshape(Bn, Tn, C)
    x = x + F.linear(a, g("self_attn.out_proj.weight"), g("self_attn.out_proj.bias"))
    h = layer_norm(x, g("layer_norm2.weight"), g("layer_norm2.bias"), eps)
    h = act_fn(cfg["hidden_act"], F.linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias")))
    return x + F.linear(h, g("mlp.fc2.weight"), g("mlp.fc2.bias"))


def final_ln(p, cfg, x):
    return layer_norm(x, p["text_model.final_layer_norm.weight"], p["text_model.final_layer_norm.bias"],
                      cfg.get("layer_norm_eps", 1e-5))


def encoder(p, cfg, x, skip=0):
    """CLIPEncoder + final_layer_norm on the embedding output x [B, T, C]; with skip = k the
    last k layers are not run (diffusers' clip_skip: hidden_states[-(k+1)], then final LN)."""
    for i in range(cfg["num_hidden_layers"] - skip):
        x = encoder_layer(p, cfg, i, x)
    return final_ln(p, cfg, x)


def hidden_states(p, cfg, x):
    """transformers' hidden_states: [x, output of layer 0, ..., output of the last layer]."""
    out = [x]
    for i in range(cfg["num_hidden_layers"]):
        out.append(encoder_layer(p, cfg, i, out[-1]))
    return out


def pooled_output(p, cfg, states, ids):
    """CLIPTextModelWithProjection.text_embeds: text_projection of the final LN of the last
    layer at the first largest id of each row (torch.argmax returns the first maximum)."""
    last = final_ln(p, cfg, states[-1])
    return F.linear(last[torch.arange(ids.shape[0]), ids.argmax(dim=-1)], p["text_projection.weight"])


def make_ids(cfg, lengths, pad_with_end):
    """[start] + random ids + [end], padded to T with the end token (SD1) or 0 (SD2)."""
    V = cfg["vocab_size"]
    start, end = V - 2, V - 1
    rows = []
    for n in lengths:
        body = torch.randint(1, V - 2, (n,), generator=GEN).tolist()
        row = [start] + body + [end]
        row += [end if pad_with_end else 0] * (T - len(row))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


def run(p, cfg, ids, dout, skip=0):
    """hidden and d loss / d(embedding output)."""
    x0 = embed(p, ids).detach().requires_grad_(True)
    hidden = encoder(p, cfg, x0, skip)
    (dx0,) = torch.autograd.grad((hidden * dout).sum(), [x0])
    return hidden.detach(), dx0


# ---- spectral weights --------------------------------------------------------------------------

def spectral_factors(W):
    """float32-rounded thin SVD of W and a delta with some entries clipped by the ReLU, none
    within 0.05 of the kink (the C side uses exactly these factors)."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    U, S, Vh = f32(U), f32(S), f32(Vh)
    delta = f32(0.4 * S * torch.randn(S.shape, generator=GEN))
    for i in range(S.numel()):
        if i % 4 == 3:
            delta[i] = f32(torch.tensor(-1.5) * S[i])          # sigma + delta < 0: clipped
        if abs(S[i] + delta[i]) < 0.05:
            delta[i] = f32(delta[i] + 0.2)
    return U, S, Vh, delta


def spectral_weff(W, U, S, Vh, delta):
    return W + U @ torch.diag(torch.relu(S + delta) - S) @ Vh


# ---- files -------------------------------------------------------------------------------------

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


def write_text_encoder(folder, cfg, params, dtype, position_ids):
    """A diffusers text_encoder folder: transformers-style config.json + model.safetensors."""
    os.makedirs(folder, exist_ok=True)
    conf = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
            "initializer_factor": 1.0, "initializer_range": 0.02, "pad_token_id": 1,
            "projection_dim": cfg["hidden_size"],
            "torch_dtype": "float16" if dtype == "F16" else "float32"}
    conf.update(cfg)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)
        f.write("\n")
    tensors = {k: (dtype, v) for k, v in params.items()}
    if position_ids:
        tensors["text_model.embeddings.position_ids"] = (
            "I64", torch.arange(cfg["max_position_embeddings"], dtype=torch.int64).unsqueeze(0))
    return write_safetensors(os.path.join(folder, "model.safetensors"), tensors)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/clip)")
    args = ap.parse_args()
    golden = {}

    def put(key, t, dt="F32"):
        assert key not in golden, key
        if dt == "F32":
            assert torch.isfinite(t).all(), key
        golden[key] = (dt, t)

    # SD1-like: quick_gelu, ids padded with the end token
    cfg1 = CONFIGS["sd1"]
    p1 = make_params(cfg1)
    ids1 = make_ids(cfg1, [5, 12], pad_with_end=True)
    C1 = cfg1["hidden_size"]
    dout1 = trng_uniform(DOUT_SEED["sd1"], B * T * C1, -1.0, 1.0).view(B, T, C1)
    hidden, dx0 = run(p1, cfg1, ids1, dout1)
    put("sd1.ids", ids1, "I64")
    put("sd1.hidden", hidden)
    put("sd1.dembed", dx0)

    p1h = {k: f16(v) for k, v in p1.items()}
    hidden, _ = run(p1h, cfg1, ids1, dout1)
    put("sd1_f16.hidden", hidden)

    # spectral layer 0 q_proj, fc1 and token embedding (W kept), gradients of their deltas
    spec = {"q": "text_model.encoder.layers.0.self_attn.q_proj.weight",
            "fc1": "text_model.encoder.layers.0.mlp.fc1.weight",
            "tok": "text_model.embeddings.token_embedding.weight"}
    ps = dict(p1)
    deltas = {}
    for short, key in spec.items():
        U, S, Vh, delta = spectral_factors(p1[key])
        for n, t in (("U", U), ("S", S), ("Vh", Vh), ("delta", delta)):
            put(f"sd1_spec.{short}.{n}", t)
        deltas[short] = delta.clone().requires_grad_(True)
        ps[key] = spectral_weff(p1[key], U, S, Vh, deltas[short])
    hidden = encoder(ps, cfg1, embed(ps, ids1))
    grads = torch.autograd.grad((hidden * dout1).sum(), list(deltas.values()))
    put("sd1_spec.hidden", hidden.detach())
    for short, g in zip(deltas.keys(), grads):
        put(f"sd1_spec.{short}.ddelta", g)

    # SD2-like: exact gelu, 3 layers, ids padded with 0, default layer_norm_eps
    cfg2 = CONFIGS["sd2"]
    p2 = make_params(cfg2)
    ids2 = make_ids(cfg2, [7, 20], pad_with_end=False)
    C2 = cfg2["hidden_size"]
    dout2 = trng_uniform(DOUT_SEED["sd2"], B * T * C2, -1.0, 1.0).view(B, T, C2)
    hidden, dx0 = run(p2, cfg2, ids2, dout2)
    put("sd2.ids", ids2, "I64")
    put("sd2.hidden", hidden)
    put("sd2.dembed", dx0)
    hidden, _ = run(p2, cfg2, ids2, dout2, skip=1)
    put("sd2_skip1.hidden", hidden)

    # SDXL text_encoder_2-like (last: the draws above are unchanged by it)
    cfg3 = CONFIGS["sdxl2"]
    p3 = make_params(cfg3)
    C3, P3 = cfg3["hidden_size"], cfg3["projection_dim"]
    p3["text_projection.weight"] = randn(P3, C3, std=1.0 / math.sqrt(C3))
    ids3 = make_ids(cfg3, [9, 30], pad_with_end=False)
    ids3[1, 32:] = cfg3["vocab_size"] - 1   # row 1: padded with the end token (the first one counts)
    states = hidden_states(p3, cfg3, embed(p3, ids3))
    put("sdxl2.ids", ids3, "I64")
    put("sdxl2.hidden", states[-2].detach())
    put("sdxl2.pooled", pooled_output(p3, cfg3, states, ids3).detach())
    dout3 = trng_uniform(DOUT_SEED["sdxl2"], B * T * C3, -1.0, 1.0).view(B, T, C3)
    dpool3 = trng_uniform(DOUT_SEED["sdxl2_pool"], B * P3, -1.0, 1.0).view(B, P3)
    pg = {k: v.clone().requires_grad_(True) for k, v in p3.items()}
    x0 = embed(pg, ids3).detach().requires_grad_(True)
    states = hidden_states(pg, cfg3, x0)
    loss = (states[-3] * dout3).sum() + (pooled_output(pg, cfg3, states, ids3) * dpool3).sum()
    wanted = {"dproj": "text_projection.weight", "dlnf": "text_model.final_layer_norm.weight",
              "dfc2_last": "text_model.encoder.layers.2.mlp.fc2.weight"}
    grads = torch.autograd.grad(loss, [x0] + [pg[k] for k in wanted.values()])
    put("sdxl2_skip1.hidden", states[-3].detach())
    put("sdxl2_skip1.dembed", grads[0])
    for short, gr in zip(wanted.keys(), grads[1:]):
        put(f"sdxl2_skip1.{short}", gr)

    os.makedirs(args.out, exist_ok=True)
    total = write_text_encoder(os.path.join(args.out, "sd1_text_encoder"), cfg1, p1, "F32", True)
    total += write_text_encoder(os.path.join(args.out, "sd1_text_encoder_f16"), cfg1, p1, "F16", True)
    total += write_text_encoder(os.path.join(args.out, "sd2_text_encoder"), cfg2, p2, "F32", False)
    total += write_text_encoder(os.path.join(args.out, "sdxl2_text_encoder"), cfg3, p3, "F32", False)
    total += write_safetensors(os.path.join(args.out, "golden.safetensors"), golden,
                               {"generator": "tests/reference/gen_clip_golden.py",
                                "dout": "trng_seed(seed) + fill_uniform(-1, 1); seeds sd1=%d sd2=%d sdxl2=%d sdxl2 dpool=%d"
                                        % (DOUT_SEED["sd1"], DOUT_SEED["sd2"], DOUT_SEED["sdxl2"],
                                           DOUT_SEED["sdxl2_pool"])})
    print(f"wrote {args.out}: {total} bytes of safetensors")


if __name__ == "__main__":
    main()
