#!/usr/bin/env python3
"""Pretraining-recipe sweep for the default model (configs/default-model.json) on the emoji data set,
in PyTorch, several recipes at once on one GPU: one worker process per recipe, all on cuda:0.

    python3 bench/recipe_sweep.py prep          # once, locally (CPU): writes .sweep/emoji32.npz
    python3 bench/recipe_sweep.py selftest      # locally: parameter counts, patched ops against the
                                                # references, DDIM + CFG against `svdiff generate`
    python3 bench/recipe_sweep.py run --out DIR [--recipes NAME,...] [--scale F] [--time-budget S]
                                      [--fit] [--compile MODE] [--threads N] [--list]

The model is the repository's own PyTorch reference code: UNet2DConditionModel from
tests/reference/gen_unet_golden.py (spectral shifts unused) and the functional CLIP text encoder of
tests/reference/gen_clip_golden.py (`embed`; the encoder layers are written out below with a fused
causal attention and checked against its `encoder` at start-up), initialised as `svdiff init` does
(src/models/init.c: PyTorch defaults for the UNet, transformers' CLIP rules for the text encoder,
rounded to fp16 as `svdiff init` stores them). Training follows `svdiff pretrain`
(src/train/trainer.c, full.c, optim.c, src/diffusion/schedule.c): images in [-1, 1], t uniform in
[0, 999], squaredcos_cap_v2 betas, v-prediction, mean MSE, caption dropout 0.1 to the empty
prompt, one Fisher-Yates permutation of the rows per epoch, AdamW (0.9, 0.999, 1e-8, decay 1e-2 on
every tensor), lr factor k / warmup for update k < warmup then cosine to 0 (update 0 has lr 0, as
in svdiff), grad-norm clip 1, EMA from the initial weights with decay min(d, (1+k)/(10+k)); the
EMA is evaluated. GPU: bf16 autocast, fp32 master weights. Evaluation: DDIM (eta 0, 25 steps,
trailing, set_alpha_to_one false, clip_sample, the model's eps kept after clipping as svdiff /
diffusers do), CFG 3 with the empty prompt, fp32.

`run` also evaluates the shipped models/emoji-32 the same way, without training (row
"shipped-emoji-32"; --no-baseline leaves it out). It needs .sweep/emoji32.npz from `prep` (an
ignored path: copy it along to the GPU machine) and no other data; build/ and data/ are not used.

`run` writes at most 4 files into DIR: summary.md (table), summary.json (everything, with the loss
curves), samples.png (10 eval captions as rows; columns: the real google + twitter images, then
4 seeds per recipe, in the order of summary.md; 32 px cells drawn 2x) and log.txt (all workers'
output). Worker files go to a temporary folder (--work). --time-budget S bounds the whole run:
training stops at S - --eval-reserve seconds after the start and the recipe evaluates what it has
(steps reached recorded); --fit instead shrinks the planned step count (and so the cosine decay)
once, early, to what the measured speed allows. --scale F multiplies every step count (steps and
warm-up) for quick tests.
"""
import argparse
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REF = os.path.join(ROOT, "tests", "reference")
DATA = os.path.join(ROOT, ".sweep", "emoji32.npz")
MODEL_CONFIG = os.path.join(ROOT, "configs", "default-model.json")
TOKENIZER = os.path.join(ROOT, "models", "emoji-32", "tokenizer")
TSV = os.path.join(ROOT, "data", "emoji", "pretrain.tsv")

EVAL_CAPTIONS = [
    "an emoji of birthday cake, food-sweet, google style",
    "an emoji of house, place-building, google style",
    "an emoji of tiger face, animal-mammal, google style",
    "an emoji of dog face, animal-mammal, google style",
    "an emoji of thumbs up, hand-fingers-closed, google style",
    "an emoji of fire, sky & weather, google style",
    "an emoji of grinning face, face-smiling, google style",
    "an emoji of rocket, transport-air, google style",
    "an emoji of bicycle, transport-ground, google style",
    "an emoji of sun, sky & weather, google style",
]
EVAL_SEEDS = [0, 1, 2, 3]
NOISE_SEED_BASE = 1000          # initial noise of eval seed s: torch.Generator().manual_seed(1000 + s)
VAL_ROWS, VAL_SEED = 256, 12345
CFG_SCALE, SAMPLE_STEPS = 3.0, 25
CAPTION_DROPOUT = 0.1
BASELINE = "shipped-emoji-32"

RECIPES = [
    dict(name="base3k", steps=3000, batch=32, lr=5e-4, warmup=100, ema=0.999),
    dict(name="lr2e-3", steps=3000, batch=32, lr=2e-3, warmup=100, ema=0.999),
    dict(name="b16-6k", steps=6000, batch=16, lr=1e-3, warmup=100, ema=0.999),
    dict(name="minsnr", steps=3000, batch=32, lr=1e-3, warmup=100, ema=0.999, min_snr_gamma=5.0),
    dict(name="lr1e-3", steps=3000, batch=32, lr=1e-3, warmup=100, ema=0.999),
    dict(name="long12k-lr1e-3", steps=12000, batch=32, lr=1e-3, warmup=100, ema=0.999),
    dict(name="long30k-lr1e-3", steps=30000, batch=32, lr=1e-3, warmup=100, ema=0.999),
    dict(name="s6k-lr1e-3", steps=6000, batch=32, lr=1e-3, warmup=100, ema=0.999),
]


def log(*a):
    print(*a, flush=True)


# =============================================================================================
# prep (local, CPU): images, token ids, eval captions -> .sweep/emoji32.npz


def cmd_prep(args):
    import numpy as np
    from PIL import Image
    sys.path.insert(0, REF)
    import gen_tokenizer_golden as tk

    t0 = time.time()
    ref = tk.Reference(TOKENIZER)
    cache = {}
    bpe = ref.bpe
    ref.bpe = lambda piece: cache[piece] if piece in cache else cache.setdefault(piece, bpe(piece))

    def encode(text):
        full = ref.encode(text)
        if len(full) > 77:  # svdiff refuses a training prompt over 77 tokens
            raise SystemExit(f"prep: caption over 77 tokens: {text!r}")
        return ref.encode_fixed(text)  # padded with <|endoftext|>, as tokenizer_config.json says

    root = os.path.dirname(TSV)
    paths, captions = [], []
    with open(TSV, encoding="utf-8") as f:
        for i, line in enumerate(f):
            cols = line.rstrip("\n").split("\t")
            if i == 0 and cols[0] == "path":
                continue
            if len(cols) > 2 and cols[2] and cols[2] != "train":
                continue  # svdiff pretrain skips rows of another split
            paths.append(cols[0])
            captions.append(cols[1])
    n = len(paths)
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(os.path.join(root, p)) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (32, 32, 3):
            raise SystemExit(f"prep: {p} is {a.shape}, not 32x32 RGB (svdiff would resize; not done here)")
        images[i] = a
    t_img = time.time() - t0
    ids = np.array([encode(c) for c in captions], dtype=np.int32)
    empty = np.array(encode(""), dtype=np.int32)
    t_tok = time.time() - t0 - t_img

    index = {p: i for i, p in enumerate(paths)}
    by_caption = {}
    for i, c in enumerate(captions):
        by_caption.setdefault(c, i)
    eval_rows, eval_refs, notes = [], [], []
    for c in EVAL_CAPTIONS:
        if c not in by_caption:
            raise SystemExit(f"prep: eval caption not in {TSV}: {c!r}")
        r = by_caption[c]
        base = os.path.basename(paths[r])
        refs = [index.get(f"images/{v}/{base}", -1) for v in ("google", "twitter")]
        if r not in refs:
            refs = [r, refs[1] if refs[0] == r else refs[0]]
        eval_rows.append(r)
        eval_refs.append(refs)
        if -1 in refs:
            notes.append(f"{c}: only one real image")
    eval_ids = ids[eval_rows]
    with open(os.path.join(TOKENIZER, "vocab.json"), encoding="utf-8") as f:
        vocab_size = len(json.load(f))

    # the ids against the svdiff binary (the C tokenizer) on 20 captions and the empty prompt
    svdiff = os.path.join(ROOT, "build", "svdiff")
    checked = 0
    if os.path.exists(svdiff) and not args.no_check:
        rng = np.random.default_rng(7)
        texts = [(EVAL_CAPTIONS[k], eval_ids[k]) for k in range(len(EVAL_CAPTIONS))]
        texts += [(captions[k], ids[k]) for k in rng.choice(n, max(args.check - 10, 0), replace=False)]
        texts += [("", empty)]
        for text, want in texts:
            out = subprocess.run([svdiff, "tokenize", "--model", os.path.dirname(TOKENIZER), "--", text],
                                 capture_output=True, text=True, check=True).stdout.split()
            got = [int(x) for x in out]
            if got != [int(x) for x in want]:
                raise SystemExit(f"prep: token ids differ from `svdiff tokenize` for {text!r}:\n{got}\n{list(want)}")
            checked += 1
    else:
        log("prep: build/svdiff not found (or --no-check): ids not checked against `svdiff tokenize`")

    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    tmp = DATA + ".tmp.npz"
    np.savez_compressed(tmp, images=images, ids=ids, empty_ids=empty, eval_ids=eval_ids,
                        eval_rows=np.array(eval_rows, dtype=np.int32), eval_refs=np.array(eval_refs, dtype=np.int32),
                        eval_captions=np.array(EVAL_CAPTIONS), vocab_size=np.array(vocab_size))
    os.replace(tmp, DATA)
    log(f"prep: {n} rows, images {t_img:.1f} s, tokens {t_tok:.1f} s ({len(cache)} distinct pieces), "
        f"{checked} prompts checked against svdiff tokenize, vocab {vocab_size}")
    log(f"prep: empty prompt ids {empty[:4].tolist()}... ; longest caption {int((ids != empty[-1]).sum(1).max()) + 1} ids")
    for c, r, refs in zip(EVAL_CAPTIONS, eval_rows, eval_refs):
        log(f"prep: eval row {r} refs {refs}: {c}")
    for x in notes:
        log("prep: note: " + x)
    log(f"prep: wrote {DATA} ({os.path.getsize(DATA) / 1e6:.1f} MB) in {time.time() - t0:.1f} s")


# =============================================================================================
# the model: the repository's reference modules, with fused attention where torch has it

_MODS = {}


def load_refs():
    """gen_unet_golden / gen_clip_golden, imported once; they set float64 and 1 thread on import,
    which is undone here. Patches: float32 timestep features on the input's device (the reference
    returns float64 and builds its frequencies on the CPU) and, where torch has it,
    scaled_dot_product_attention in the UNet's Attention (same maths; checked by check_ops)."""
    if _MODS:
        return _MODS["gu"], _MODS["gc"]
    import torch
    import torch.nn.functional as F
    threads = torch.get_num_threads()
    sys.path.insert(0, REF)
    import gen_unet_golden as gu
    import gen_clip_golden as gc
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(threads)

    gu._ref_timestep_features = gu.timestep_features

    def timestep_features(t, dim, flip_sin_to_cos, freq_shift, max_period=10000.0):
        half = dim // 2
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
        exponent = exponent / float(half - freq_shift)
        arg = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
        if flip_sin_to_cos:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        return emb

    gu.timestep_features = timestep_features
    gu.Attention._ref_forward = gu.Attention.forward

    def attn_forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        B, Tq, _ = x.shape
        Tk = ctx.shape[1]
        q = self.to_q(x).reshape(B, Tq, self.heads, -1).transpose(1, 2)
        k = self.to_k(ctx).reshape(B, Tk, self.heads, -1).transpose(1, 2)
        v = self.to_v(ctx).reshape(B, Tk, self.heads, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)  # scale dim_head^-0.5, as the reference
        return self.to_out[0](o.transpose(1, 2).reshape(B, Tq, -1))

    if hasattr(F, "scaled_dot_product_attention"):
        gu.Attention.forward = attn_forward
    _MODS.update(gu=gu, gc=gc, fused_attention=hasattr(F, "scaled_dot_product_attention"))
    return gu, gc


def clip_layers(p, cfg, x, fused=True):
    """gen_clip_golden.encoder (pre-LN layers, q scaled by D^-0.5, causal mask, quick_gelu, final
    LN) with the mask on x's device and, where torch has it, fused causal attention."""
    import torch
    import torch.nn.functional as F
    gc = _MODS["gc"]
    B, T, C = x.shape
    H = cfg["num_attention_heads"]
    D = C // H
    eps = cfg.get("layer_norm_eps", 1e-5)
    fused = fused and hasattr(F, "scaled_dot_product_attention")
    mask = None if fused else torch.full((T, T), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        pre = f"text_model.encoder.layers.{i}."
        g = lambda n: p[pre + n]  # noqa: E731
        h = F.layer_norm(x, (C,), g("layer_norm1.weight"), g("layer_norm1.bias"), eps)

        def heads(t):
            return t.reshape(B, T, H, D).transpose(1, 2)

        q = heads(F.linear(h, g("self_attn.q_proj.weight"), g("self_attn.q_proj.bias")))
        k = heads(F.linear(h, g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias")))
        v = heads(F.linear(h, g("self_attn.v_proj.weight"), g("self_attn.v_proj.bias")))
        if fused:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = torch.softmax((q * D ** -0.5) @ k.transpose(-1, -2) + mask.to(q.dtype), dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(a, g("self_attn.out_proj.weight"), g("self_attn.out_proj.bias"))
        h = F.layer_norm(x, (C,), g("layer_norm2.weight"), g("layer_norm2.bias"), eps)
        h = gc.act_fn(cfg["hidden_act"], F.linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias")))
        x = x + F.linear(h, g("mlp.fc2.weight"), g("mlp.fc2.bias"))
    return F.layer_norm(x, (C,), p["text_model.final_layer_norm.weight"], p["text_model.final_layer_norm.bias"], eps)


def model_configs(vocab_size):
    with open(MODEL_CONFIG) as f:
        cfg = json.load(f)
    te = dict(cfg["text_encoder"], vocab_size=int(vocab_size))
    return cfg["unet"], te


def build_model(vocab_size, seed=1):
    """nn.Module(unet, te): forward(x_t, t, ids) -> model output; te(ids) -> [B, 77, 256]."""
    import torch
    import torch.nn as nn
    gu, gc = load_refs()
    unet_cfg, te_cfg = model_configs(vocab_size)

    class TextEncoder(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            shapes = {k: tuple(v.shape) for k, v in gc.make_params(cfg).items()}  # the reference's names
            self.names = list(shapes)
            self.keys = [(k, k.replace(".", "__")) for k in self.names]
            self.params = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(torch.zeros(s)) for k, s in shapes.items()})
            self.fused = True

        def pdict(self):
            return {k: self.params[q] for k, q in self.keys}

        def forward(self, ids):
            p = self.pdict()
            return clip_layers(p, self.cfg, gc.embed(p, ids), self.fused)

    class T2I(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = gu.UNet2DConditionModel(unet_cfg)
            self.te = TextEncoder(te_cfg)

        def forward(self, x, t, ids):
            return self.unet(x, t, self.te(ids))

    m = T2I()
    init_like_svdiff(m, te_cfg, seed)
    return m


def init_like_svdiff(m, te_cfg, seed):
    """src/models/init.c: UNet conv/linear weight and bias U(+-1/sqrt(fan_in)), norms 1/0; text
    encoder N(0, std) by transformers' CLIP rules, biases 0, LayerNorms 1/0; rounded to fp16 (the
    folder `svdiff init` writes). Its Philox streams are not reproduced: values differ, laws do not."""
    import torch
    gu = _MODS["gu"]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod in m.unet.named_modules():
            if isinstance(mod, (gu.Linear, gu.Conv2d)):
                bound = 1.0 / math.sqrt(mod.weight[0].numel())
                mod.weight.copy_((torch.rand(mod.weight.shape, generator=g) * 2 - 1) * bound)
                if mod.bias is not None:
                    mod.bias.copy_((torch.rand(mod.bias.shape, generator=g) * 2 - 1) * bound)
            elif isinstance(mod, (gu.GroupNorm, gu.LayerNorm)):
                mod.weight.fill_(1.0)
                mod.bias.fill_(0.0)
        d, L, f = te_cfg["hidden_size"], te_cfg["num_hidden_layers"], te_cfg.get("initializer_factor", 1.0)
        in_std = d ** -0.5 * (2 * L) ** -0.5 * f
        for name, p in m.te.pdict().items():
            if p.dim() == 1:
                p.fill_(0.0 if name.endswith(".bias") else 1.0)
                continue
            if "embeddings." in name:
                std = 0.02 * f
            elif any(s in name for s in (".q_proj.", ".k_proj.", ".v_proj.", ".fc2.")):
                std = in_std
            elif ".out_proj." in name:
                std = d ** -0.5 * f
            elif ".fc1." in name:
                std = (2 * d) ** -0.5 * f
            else:
                raise ValueError(f"no init rule for {name}")
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for p in m.parameters():
            p.copy_(p.half().float())


def check_ops(m, dev, log_fn=log):
    """The patched pieces against the reference code on random inputs (fp32): timestep features,
    UNet attention (fused vs gen_unet_golden's), text encoder (clip_layers vs gen_clip_golden's
    encoder, the reference run on the CPU). A mismatch falls back to the reference form."""
    import torch
    gu, gc = load_refs()
    g = torch.Generator().manual_seed(0)
    out = {}
    t = torch.tensor([0.0, 1.0, 37.0, 500.0, 999.0])
    a = gu._ref_timestep_features(t, 32, True, 0).float()
    b = gu.timestep_features(t.to(dev), 32, True, 0).cpu()
    out["timestep_features"] = (a - b).abs().max().item()
    attn = [mm for mm in m.unet.modules() if isinstance(mm, gu.Attention)]
    x = torch.randn(2, 64, attn[0].to_q.weight.shape[1], generator=g).to(dev)
    c = torch.randn(2, 77, attn[1].to_k.weight.shape[1], generator=g).to(dev)
    with torch.no_grad():
        d1 = (gu.Attention.forward(attn[0], x) - gu.Attention._ref_forward(attn[0], x)).abs().max().item()
        d2 = (gu.Attention.forward(attn[1], x, c) - gu.Attention._ref_forward(attn[1], x, c)).abs().max().item()
    out["unet_attention"] = max(d1, d2)
    ids = torch.randint(0, m.te.cfg["vocab_size"], (2, 77), generator=g)
    with torch.no_grad():
        p_cpu = {k: v.detach().float().cpu() for k, v in m.te.pdict().items()}
        ref = gc.encoder(p_cpu, m.te.cfg, gc.embed(p_cpu, ids))
        mine = m.te(ids.to(dev)).float().cpu()
    out["text_encoder"] = (ref - mine).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    ok = True
    if out["unet_attention"] > 1e-3:
        gu.Attention.forward = gu.Attention._ref_forward
        ok = False
    if out["text_encoder"] > 1e-3:
        m.te.fused = False
        ok = False
    if out["timestep_features"] > 1e-4:
        raise SystemExit(f"timestep features differ from the reference: {out}")
    log_fn("check_ops: max abs diff timestep features %.2e, attention %.2e, text encoder (rel) %.2e%s" % (
        out["timestep_features"], out["unet_attention"], out["text_encoder"],
        "" if ok else " -> MISMATCH, reference attention used"))
    return out


def param_counts(m):
    return (sum(p.numel() for p in m.unet.parameters()), sum(p.numel() for p in m.te.parameters()))


# =============================================================================================
# schedule and sampler (src/diffusion/schedule.c, sampler.c, ddim.c, guidance.c)


def alphas_cumprod_f32(T=1000):
    """squaredcos_cap_v2: betas in double, min 0.999, stored as float32; cumprod in double of the
    float32 alphas, stored as float32 (schedule.c noise_schedule_init)."""
    import numpy as np

    def abar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=np.float32)
    alphas = (np.float32(1.0) - betas).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32)


def ddim_timesteps(T, N):
    """trailing spacing: rint(arange(T, 0, -T/N)) - 1 (sampler.c trailing_t)."""
    import numpy as np
    return [int(np.rint(T - k * (T / N))) - 1 for k in range(N)]


def ddim_sample(model, cond_ids, empty_ids, noise, ac, steps=SAMPLE_STEPS, cfg=CFG_SCALE):
    """DDIM eta 0 with v-prediction, clip_sample to [-1, 1] (the model's eps kept, ddim.c), alpha_prev
    of the last step alphas_cumprod[0] (set_alpha_to_one false), CFG on the model output with
    [uncond; cond] rows. fp32."""
    import torch
    import numpy as np
    n = cond_ids.shape[0]
    T = len(ac)
    ratio = T // steps
    with torch.no_grad():
        ctx = model.te(torch.cat([empty_ids[None].expand(n, -1), cond_ids]))
        x = noise.clone()
        for t in ddim_timesteps(T, steps):
            out = model.unet(torch.cat([x, x]), torch.full((2 * n,), float(t), device=x.device), ctx)
            u, c = out.float().chunk(2)
            mo = u + cfg * (c - u) if cfg > 1 else c
            a = float(ac[t])
            prev = t - ratio
            a_prev = float(ac[prev]) if prev >= 0 else float(ac[0])
            sa, sb = float(np.float32(math.sqrt(a))), float(np.float32(math.sqrt(1 - a)))
            x0 = (sa * x - sb * mo).clamp(-1.0, 1.0)
            eps = sa * mo + sb * x
            x = float(np.float32(math.sqrt(a_prev))) * x0 + float(np.float32(math.sqrt(max(1 - a_prev, 0.0)))) * eps
    return x


# =============================================================================================
# worker: one recipe


def cmd_worker(args):
    import numpy as np
    import torch

    t_start = time.time()
    recipe = json.loads(args.recipe)
    name = recipe["name"]
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    d = np.load(DATA)
    vocab = int(d["vocab_size"])
    model = build_model(vocab, seed=args.seed)
    if recipe.get("load"):  # a finished model (the shipped one), evaluated as it is
        load_model_dir(model, os.path.join(ROOT, recipe["load"]))
    model = model.to(dev)
    ops = check_ops(model, dev)
    n_unet, n_te = param_counts(model)
    res = dict(recipe=recipe, device=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__,
               params_unet=n_unet, params_te=n_te, check_ops=ops, status="running")
    log(f"{name}: {dev}, torch {torch.__version__}, UNet {n_unet:,} + text encoder {n_te:,} parameters, "
        f"{args.threads} threads, deadline in {args.deadline - time.time():.0f} s")

    images = torch.from_numpy(d["images"]).to(dev)
    x_all = images.permute(0, 3, 1, 2).float().div(255.0).mul(2.0).sub(1.0).contiguous()  # vae_image_to_tensor
    ids_all = torch.from_numpy(d["ids"].astype(np.int64)).to(dev)
    empty = torch.from_numpy(d["empty_ids"].astype(np.int64)).to(dev)
    N = x_all.shape[0]
    ac = alphas_cumprod_f32()
    sa_tab = torch.from_numpy(np.sqrt(ac)).to(dev)              # sqrtf(a)
    sb_tab = torch.from_numpy(np.sqrt(np.float32(1) - ac)).to(dev)  # sqrtf(1 - a)
    snr_tab = torch.from_numpy((ac.astype(np.float64) / (1 - ac.astype(np.float64))).astype(np.float32)).to(dev)

    B = int(recipe.get("batch", 1))
    planned = int(recipe["steps"])
    W = int(recipe.get("warmup", 0))
    lr0 = float(recipe.get("lr", 0.0))
    ema_d = float(recipe.get("ema", 0.0))
    gamma = recipe.get("min_snr_gamma")

    params = [p for p in model.parameters()]
    try:
        opt = torch.optim.AdamW(params, lr=lr0, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, fused=cuda)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(params, lr=lr0, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    params_d = [p.detach() for p in params]  # aliases: see the optimizer's in-place updates

    def clip_norm():
        try:
            return torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        except TypeError:
            return torch.nn.utils.clip_grad_norm_(params, 1.0)

    def lr_factor(k, n):  # trainer_lr_factor with t->step = k updates done
        if k < W:
            return k / max(W, 1)
        prog = (k - W) / max(n - W, 1)
        return max(0.5 * (1 + math.cos(math.pi * prog)), 0.0)

    amp = cuda  # bf16 autocast on the GPU (fp32 master weights), plain fp32 on the CPU

    def train_forward(x0, ids, t, noise):
        sa = sa_tab[t].view(-1, 1, 1, 1)
        sb = sb_tab[t].view(-1, 1, 1, 1)
        xt = sa * x0 + sb * noise
        target = sa * noise - sb * x0
        if amp:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                pred = model(xt, t.float(), ids)
        else:
            pred = model(xt, t.float(), ids)
        per = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        mse = per.mean()
        if gamma:
            snr = snr_tab[t]
            loss = (per * torch.clamp(snr, max=float(gamma)) / (snr + 1)).mean()
        else:
            loss = mse
        return loss, mse

    fwd = train_forward
    compiled = "none"
    if args.compile != "none" and hasattr(torch, "compile"):
        try:
            fwd = torch.compile(train_forward, mode=None if args.compile == "default" else args.compile)
            compiled = args.compile
        except Exception as e:  # noqa: BLE001
            log(f"{name}: torch.compile failed ({type(e).__name__}: {e}); eager")
            fwd, compiled = train_forward, "failed"

    gen = torch.Generator(device=dev).manual_seed(args.seed)
    gen_cpu = torch.Generator().manual_seed(args.seed ^ 0x5EED)
    perm = torch.randperm(N, generator=gen_cpu).to(dev)
    pos = 0

    def next_indices():
        nonlocal perm, pos
        if pos + B <= N:
            idx = perm[pos:pos + B]
            pos += B
            return idx
        rest = perm[pos:]
        perm = torch.randperm(N, generator=gen_cpu).to(dev)
        pos = B - rest.shape[0]
        return torch.cat([rest, perm[:pos]])

    loss_hist = torch.zeros(planned, device=dev)
    obj_hist = torch.zeros(planned, device=dev) if gamma else None
    res["startup_s"] = round(time.time() - t_start, 2)
    log(f"{name}: start training, {planned} steps x batch {B}, lr {lr0:g}, warmup {W}, ema {ema_d}"
        + (f", min-SNR gamma {gamma}" if gamma else "") + f", compile {compiled}")
    t0 = time.time()
    t_last, k_last = t0, 0
    step = 0
    status = "done" if not recipe.get("load") else "loaded"
    fit_done = not args.fit
    fit_ref = None
    while step < planned:
        if time.time() >= args.deadline:
            status = "stopped_by_budget"
            break
        idx = next_indices()
        x0 = x_all[idx]
        ids = ids_all[idx]
        drop = torch.rand(B, generator=gen, device=dev) < CAPTION_DROPOUT
        ids = torch.where(drop[:, None], empty[None, :], ids)
        t = torch.randint(0, 1000, (B,), generator=gen, device=dev)
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        try:
            loss, mse = fwd(x0, ids, t, noise)
            loss.backward()
        except Exception as e:  # noqa: BLE001
            if fwd is train_forward or step > 0:
                raise
            log(f"{name}: compiled step failed ({type(e).__name__}: {str(e)[:300]}); eager")
            opt.zero_grad(set_to_none=True)
            fwd, compiled = train_forward, "failed"
            loss, mse = fwd(x0, ids, t, noise)
            loss.backward()
        clip_norm()
        f = lr_factor(step, planned)
        for gr in opt.param_groups:
            gr["lr"] = lr0 * f
        opt.step()
        opt.zero_grad(set_to_none=True)
        dk = min(ema_d, (1.0 + step) / (10.0 + step))
        torch._foreach_mul_(ema, dk)
        torch._foreach_add_(ema, params_d, alpha=1.0 - dk)
        loss_hist[step] = mse.detach()
        if obj_hist is not None:
            obj_hist[step] = loss.detach()
        step += 1
        now = time.time()
        if not fit_done:  # --fit: once, after >= 20 s and >= 50 steps past the first 20
            if fit_ref is None and step >= 20:
                fit_ref = (step, now)
            elif fit_ref is not None and now - t0 >= 20 and step - fit_ref[0] >= 50:
                rate = (step - fit_ref[0]) / (now - fit_ref[1])
                can = int(step + rate * (args.deadline - now) * 0.9)
                fit_done = True
                res["fit_rate"] = round(rate, 3)
                if can < planned:
                    log(f"{name}: fit: {rate:.2f} steps/s -> planning {can} steps instead of {planned}")
                    res["fit_from"] = planned
                    planned = max(can, step + 1)
                else:
                    log(f"{name}: fit: {rate:.2f} steps/s, {planned} steps fit")
        if step % 500 == 0 or now - t_last >= 30 or step == planned:
            window = loss_hist[k_last:step].mean().item()
            now = time.time()
            log(f"{name}: step {step}/{planned} loss {window:.4f} lr {lr0 * f:.3g} "
                f"{(step - k_last) / (now - t_last):.2f} steps/s elapsed {now - t0:.0f} s")
            t_last, k_last = now, step
            if not math.isfinite(window):
                status = "diverged"
                break
    if cuda:
        torch.cuda.synchronize()
    train_s = time.time() - t0
    res.update(status=status, steps_planned=planned, steps_done=step, train_s=round(train_s, 2),
               lr_at_stop=lr0 * lr_factor(max(step - 1, 0), planned),
               steps_per_s=round(step / train_s, 3) if train_s > 0 else None, compile=compiled)
    lh = loss_hist[:step].float().cpu().numpy()
    res["final_loss"] = float(lh[-100:].mean()) if step else None
    if obj_hist is not None and step:
        res["final_objective"] = float(obj_hist[:step][-100:].mean().item())
    res["loss_curve_every"] = 100
    res["loss_curve"] = [round(float(lh[i:i + 100].mean()), 5) for i in range(0, step, 100)]
    if cuda:
        res["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    log(f"{name}: trained {step} steps in {train_s:.1f} s ({status}); final loss {res['final_loss']}")
    res_path = os.path.join(args.work, f"{name}.json")

    def save(phase):
        res["phase"] = phase
        res["total_s"] = round(time.time() - t_start, 2)
        with open(res_path + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(res_path + ".tmp", res_path)

    save("trained")

    # ---- evaluation: the EMA weights (samples first, the main measure), then the raw weights' val loss
    t_eval = time.time()
    model.eval()
    raw = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    eval_ids = torch.from_numpy(d["eval_ids"].astype(np.int64)).to(dev)
    nc, ns = eval_ids.shape[0], len(EVAL_SEEDS)
    noise = torch.cat([torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(NOISE_SEED_BASE + s))
                       for s in EVAL_SEEDS])
    cond = eval_ids.repeat_interleave(ns, dim=0)               # row c * ns + s
    x = ddim_sample(model, cond, empty, noise.repeat(nc, 1, 1, 1).to(dev), ac, steps=args.sample_steps)
    imgs = (x.float().cpu() / 2 + 0.5).clamp(0, 1).view(nc, ns, 3, 32, 32)
    res.update(image_metrics(imgs, d))
    grid = torch.round(imgs * 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()  # [nc, ns, 32, 32, 3]
    np.save(os.path.join(args.work, f"{name}.npy"), grid)
    res["sample_s"] = round(time.time() - t_eval, 2)
    save("sampled")
    log(f"{name}: samples in {res['sample_s']} s: seed_mse {res['seed_mse']:.4g} caption_mse {res['caption_mse']:.4g} "
        f"ratio {res['ratio']:.3g} nn_mse {res['nn_mse']:.4g} (other captions {res['nn_mse_other']:.4g})")

    g = torch.Generator().manual_seed(VAL_SEED)
    vidx = torch.randperm(N, generator=g)[:VAL_ROWS]
    vt = torch.randint(0, 1000, (VAL_ROWS,), generator=g)
    vnoise = torch.randn(VAL_ROWS, 3, 32, 32, generator=g)

    def val_loss():
        per = []
        with torch.no_grad():
            for i in range(0, VAL_ROWS, 128):
                j = vidx[i:i + 128].to(dev)
                t = vt[i:i + 128].to(dev)
                e = vnoise[i:i + 128].to(dev)
                x0 = x_all[j]
                sa, sb = sa_tab[t].view(-1, 1, 1, 1), sb_tab[t].view(-1, 1, 1, 1)
                pred = model(sa * x0 + sb * e, t.float(), ids_all[j])
                per.append((pred.float() - (sa * e - sb * x0)).pow(2).mean(dim=(1, 2, 3)).cpu())
        per = torch.cat(per)
        buckets = [round(per[(vt >= lo) & (vt < hi)].mean().item(), 5) for lo, hi in ((0, 333), (333, 666), (666, 1000))]
        return per.mean().item(), buckets

    res["val_loss_ema"], res["val_loss_ema_by_t"] = val_loss()
    save("val_ema")
    with torch.no_grad():
        for p, r in zip(params, raw):
            p.copy_(r)
    res["val_loss_raw"], res["val_loss_raw_by_t"] = val_loss()
    res["eval_s"] = round(time.time() - t_eval, 2)
    save("complete")
    log(f"{name}: eval {res['eval_s']} s: val loss EMA {res['val_loss_ema']:.4f} (t buckets {res['val_loss_ema_by_t']}), "
        f"raw {res['val_loss_raw']:.4f}")


def image_metrics(imgs, d):
    """imgs [captions, seeds, 3, 32, 32] in [0, 1]. seed_mse: consecutive seeds of a caption;
    caption_mse: consecutive captions at one seed; nn_mse: each sample to the nearer of its caption's
    real images (google, twitter); nn_mse_other: the same against each other eval caption's images
    (mean over them)."""
    import torch
    nc, ns = imgs.shape[:2]

    def mse(a, b):
        return (a - b).pow(2).mean().item()

    seed = [mse(imgs[c, k], imgs[c, k + 1]) for c in range(nc) for k in range(ns - 1)]
    capt = [mse(imgs[c, s], imgs[c + 1, s]) for c in range(nc - 1) for s in range(ns)]
    real = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 255.0
    refs = [[real[i] for i in row if i >= 0] for row in d["eval_refs"]]

    def nn(sample, c):
        return min(mse(sample, r) for r in refs[c])

    own = [[nn(imgs[c, s], c) for s in range(ns)] for c in range(nc)]
    other = [sum(nn(imgs[c, s], o) for o in range(nc) if o != c) / (nc - 1) for c in range(nc) for s in range(ns)]
    out = dict(seed_mse=sum(seed) / len(seed), caption_mse=sum(capt) / len(capt),
               nn_mse=sum(map(sum, own)) / (nc * ns), nn_mse_other=sum(other) / len(other),
               nn_mse_per_caption=[round(sum(r) / ns, 5) for r in own])
    out["ratio"] = out["caption_mse"] / max(out["seed_mse"], 1e-12)
    out["nn_ratio"] = out["nn_mse_other"] / max(out["nn_mse"], 1e-12)
    return out


def real_baselines(d):
    """The same measures on the real images: consecutive eval captions (google images) and google
    vs twitter of one caption."""
    import numpy as np
    real = d["images"].astype(np.float64) / 255.0
    g = [real[r[0]] for r in d["eval_refs"]]
    capt = np.mean([((g[c] - g[c + 1]) ** 2).mean() for c in range(len(g) - 1)])
    style = [((real[r[0]] - real[r[1]]) ** 2).mean() for r in d["eval_refs"] if r[1] >= 0]
    return dict(real_caption_mse=float(capt), real_google_vs_twitter_mse=float(np.mean(style)) if style else None)


# =============================================================================================
# launcher


def write_png(path, rgb):
    """uint8 [H, W, 3] -> PNG (zlib; no PIL needed)."""
    H, W, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(H))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def compose_grid(work, names, d, scale=2, gap=4):
    """rows: eval captions; columns: real google, real twitter | recipe 1 seeds | recipe 2 seeds ..."""
    import numpy as np
    nc = len(d["eval_refs"])
    blocks = []
    real = d["images"]
    blank = np.full((32, 32, 3), 255, np.uint8)
    blocks.append(np.stack([np.stack([real[i] if i >= 0 else blank for i in row]) for row in d["eval_refs"]]))
    for n in names:
        p = os.path.join(work, f"{n}.npy")
        blocks.append(np.load(p) if os.path.exists(p) else np.full((nc, len(EVAL_SEEDS), 32, 32, 3), 128, np.uint8))
    cols = []
    for b in blocks:
        rows = [np.concatenate(list(b[c]), axis=1) for c in range(nc)]  # [32, k*32, 3]
        cols.append(np.concatenate(rows, axis=0))
        cols.append(np.full((nc * 32, gap // scale if scale > 1 else gap, 3), 96, np.uint8))
    img = np.concatenate(cols[:-1], axis=1)
    return img.repeat(scale, axis=0).repeat(scale, axis=1)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def write_summary(out, work, names, results, args, t0, baselines, final):
    rows = []
    for n in names:
        r = results.get(n)
        if r is None:
            continue
        rc = r.get("recipe", {})
        rows.append("| %s | %s | %s/%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            n, r.get("status"), r.get("steps_done", "-"), r.get("steps_planned", rc.get("steps", "-")), rc.get("batch", "-"),
            fmt(rc.get("lr"), "g"), rc.get("warmup", "-"),
            ("min-SNR %g" % rc["min_snr_gamma"]) if rc.get("min_snr_gamma") else "-",
            fmt(r.get("train_s"), ".0f"), fmt(r.get("steps_per_s"), ".1f"), fmt(r.get("final_loss"), ".4f"),
            fmt(r.get("val_loss_ema"), ".4f"), fmt(r.get("val_loss_raw"), ".4f"),
            fmt(r.get("seed_mse"), ".4g"), fmt(r.get("caption_mse"), ".4g"), fmt(r.get("ratio"), ".3g"),
            fmt(r.get("nn_mse"), ".4g"), fmt(r.get("nn_mse_other"), ".4g"), fmt(r.get("nn_ratio"), ".4g")))
    first = next((results[n] for n in names if n in results and "device" in results[n]), {})
    md = [f"# recipe sweep ({'final' if final else 'partial'}, {time.time() - t0:.0f} s)", "",
          f"device {first.get('device', '?')}, torch {first.get('torch', '?')}, UNet {first.get('params_unet', '?')} + "
          f"text encoder {first.get('params_te', '?')} parameters; scale {args.scale}, time budget {args.time_budget} s"
          f"{', fit' if args.fit else ''}, compile {args.compile}; EMA weights evaluated, DDIM {args.sample_steps} steps "
          f"(trailing), CFG {CFG_SCALE}, seeds {EVAL_SEEDS}.", "",
          "| recipe | status | steps | batch | lr | warmup | weighting | train s | steps/s | final loss | val EMA | "
          "val raw | seed_mse | caption_mse | ratio | nn_mse | nn_other | nn_ratio |",
          "|" + "---|" * 18] + rows + [
          "", "final loss: mean plain v-MSE of the last 100 steps; val: the same on %d fixed rows, noise and "
          "timesteps (EMA / raw weights); seed_mse / caption_mse: pixel MSE in [0, 1] between consecutive seeds of "
          "a caption / consecutive captions at one seed (ratio > 1: samples follow the caption more than the seed); "
          "nn_mse: sample to the nearer real image of its caption (google / twitter), nn_other: to the other "
          "captions' images, nn_ratio = nn_other / nn_mse (> 1: closer to its own emoji)." % VAL_ROWS,
          "real images: caption_mse of the eval captions' google images %.4f, google vs twitter %.4f." % (
              baselines["real_caption_mse"], baselines["real_google_vs_twitter_mse"] or float("nan")),
          "", "samples.png: one row per eval caption (%s); columns: real google, real twitter, then 4 seeds of "
          "each recipe in the table's order." % "; ".join(c.replace("an emoji of ", "") for c in EVAL_CAPTIONS)]
    for n in names:
        r = results.get(n, {})
        if "log_tail" in r:
            md += ["", f"{n}: {r['status']}, log tail:", "```", r.get("log_tail", ""), "```"]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(dict(final=final, wall_s=round(time.time() - t0, 1), args=vars(args), baselines=baselines,
                       recipes={n: results.get(n) for n in names}), f, indent=1)


def cmd_run(args):
    import numpy as np
    t0 = time.time()
    if not os.path.exists(DATA):
        raise SystemExit(f"{DATA} missing: run `python3 bench/recipe_sweep.py prep` first")
    by_name = {r["name"]: r for r in RECIPES}
    if args.list:
        for r in RECIPES:
            print(json.dumps(r))
        return
    if not args.out:
        raise SystemExit("run: --out DIR is required")
    names = [n.strip() for n in args.recipes.split(",")] if args.recipes else [r["name"] for r in RECIPES]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; known: {list(by_name)}")
    recipes = []
    for n in names:
        r = dict(by_name[n])
        r["steps"] = max(1, int(round(r["steps"] * args.scale)))
        r["warmup"] = int(round(r["warmup"] * args.scale))
        recipes.append(r)
    if not args.no_baseline:  # the shipped model through the same evaluation, no training
        recipes.append(dict(name=BASELINE, steps=0, load="models/emoji-32"))
        names.append(BASELINE)
    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="recipe_sweep_")
    os.makedirs(work, exist_ok=True)
    d = np.load(DATA)
    baselines = real_baselines(d)
    threads = args.threads or max(1, min(4, (os.cpu_count() or 2) // len(recipes)))
    deadline = t0 + args.time_budget - args.eval_reserve
    hard = t0 + args.time_budget
    logf = open(os.path.join(args.out, "log.txt"), "w")
    lock = threading.Lock()
    tails = {n: [] for n in names}

    def emit(line):
        with lock:
            print(line, flush=True)
            logf.write(line + "\n")
            logf.flush()

    emit(f"run: {len(recipes)} recipes in parallel, {threads} threads each, work {work}, "
         f"training deadline +{deadline - t0:.0f} s, hard stop +{hard - t0:.0f} s")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if args.compile != "none":
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))
    procs = {}
    for r in recipes:
        cmd = [sys.executable, os.path.abspath(__file__), "worker", "--recipe", json.dumps(r), "--work", work,
               "--deadline", repr(deadline), "--threads", str(threads), "--device", args.device,
               "--compile", args.compile, "--seed", str(args.seed), "--sample-steps", str(args.sample_steps)]
        if args.fit:
            cmd.append("--fit")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)

        def pump(p=p, n=r["name"]):
            for line in p.stdout:
                line = line.rstrip("\n")
                tails[n] = (tails[n] + [line])[-15:]
                emit(f"[{n} +{time.time() - t0:.0f}s] {line}")

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        procs[r["name"]] = (p, th)

    results, done = {}, set()
    smi = shutil.which("nvidia-smi")
    next_smi = time.time() + 45

    def gpu_snapshot():
        try:
            q = subprocess.run([smi, "--query-gpu=utilization.gpu,memory.used,power.draw", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
            emit(f"run: +{time.time() - t0:.0f}s nvidia-smi utilization, memory, power: {q}")
        except Exception as e:  # noqa: BLE001
            emit(f"run: nvidia-smi failed: {e}")

    def collect(n, status=None):
        p = os.path.join(work, f"{n}.json")
        if os.path.exists(p):
            with open(p) as f:
                results[n] = json.load(f)
            if results[n].get("phase") != "complete":  # died or killed during the evaluation
                results[n]["status"] = f"{results[n].get('status')}; {status or 'failed'} after phase {results[n].get('phase')}"
                results[n]["log_tail"] = "\n".join(tails[n])
        else:
            results[n] = dict(recipe=next(r for r in recipes if r["name"] == n), status=status or "failed",
                              log_tail="\n".join(tails[n]))

    while len(done) < len(procs):
        for n, (p, th) in procs.items():
            if n not in done and p.poll() is not None:
                th.join(timeout=5)
                collect(n, "failed" if p.returncode else "missing")
                emit(f"run: {n} exited with {p.returncode} at +{time.time() - t0:.0f} s ({results[n].get('status')})")
                done.add(n)
                write_summary(args.out, work, names, results, args, t0, baselines, final=False)
        if smi and time.time() > next_smi and len(done) < len(procs):
            gpu_snapshot()
            next_smi = time.time() + 60
        if time.time() > hard and len(done) < len(procs):
            for n, (p, th) in procs.items():
                if n not in done:
                    emit(f"run: {n} still running at the hard stop: killed")
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait()
                    collect(n, "killed")
                    done.add(n)
        time.sleep(0.5)
    img = compose_grid(work, names, d)
    write_png(os.path.join(args.out, "samples.png"), img)
    write_summary(args.out, work, names, results, args, t0, baselines, final=True)
    emit(f"run: done in {time.time() - t0:.0f} s; {args.out}/summary.md, summary.json, samples.png, log.txt")
    logf.close()
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read(), flush=True)


# =============================================================================================
# selftest (local): counts, patched ops, and sampling against `svdiff generate` on models/emoji-32


def read_safetensors(path):
    """{name: torch tensor} of a safetensors file (tests/reference/st_io.py reads it)."""
    import torch
    sys.path.insert(0, REF)
    import st_io
    return {k: torch.from_numpy(v) for k, v in st_io.read_arrays(path).items()}


def load_model_dir(m, model_dir):
    """A diffusers folder's unet/ and text_encoder/ weights (diffusers / transformers names) into m."""
    import torch
    sd_u = read_safetensors(os.path.join(model_dir, "unet", "diffusion_pytorch_model.safetensors"))
    sd_t = read_safetensors(os.path.join(model_dir, "text_encoder", "model.safetensors"))
    with torch.no_grad():
        for k, p in m.unet.named_parameters():
            p.copy_(sd_u.pop(k).reshape(p.shape))
        for k, p in m.te.pdict().items():
            p.copy_(sd_t.pop(k).reshape(p.shape))
    left = [k for k in list(sd_u) + list(sd_t) if "position_ids" not in k]
    assert not left, f"unused tensors in {model_dir}: {left[:5]}"


def cmd_selftest(args):
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    d = np.load(DATA)
    vocab = int(d["vocab_size"])
    m = build_model(vocab)
    nu, nt = param_counts(m)
    log(f"selftest: UNet {nu:,} ({nu / 1e6:.2f} M) + text encoder {nt:,} ({nt / 1e6:.2f} M) = {nu + nt:,} parameters; "
        f"fused attention {'yes' if _MODS['fused_attention'] else 'no (torch ' + torch.__version__ + ')'}")
    stats = {k: (float(v.mean()), float(v.std())) for k, v in
             [("unet.conv_in.weight", m.unet.conv_in.weight), ("te.token_embedding", m.te.pdict()["text_model.embeddings.token_embedding.weight"])]}
    log(f"selftest: init mean/std {stats}")
    check_ops(m, torch.device("cpu"))
    ac = alphas_cumprod_f32()
    log(f"selftest: alphas_cumprod[0] {ac[0]:.8f} [999] {ac[999]:.3e}; DDIM timesteps {ddim_timesteps(1000, 25)[:3]}..."
        f"{ddim_timesteps(1000, 25)[-2:]}")
    svdiff = os.path.join(ROOT, "build", "svdiff")
    model_dir = os.path.dirname(TOKENIZER)
    if not os.path.exists(svdiff):
        log("selftest: build/svdiff missing: sampler not checked")
        return
    load_model_dir(m, model_dir)  # models/emoji-32's weights into the same modules
    m.eval()
    prompt = EVAL_CAPTIONS[args.caption]
    ids = torch.from_numpy(d["eval_ids"][args.caption].astype(np.int64))
    empty = torch.from_numpy(d["empty_ids"].astype(np.int64))
    noise = torch.cat([torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(NOISE_SEED_BASE + s))
                       for s in range(args.images)])
    sys.path.insert(0, REF)
    import st_io
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init.safetensors")
        st_io.write_raw(init, [("latents", "F32", list(noise.shape), noise.numpy().astype("<f4").tobytes())])
        outp = os.path.join(tmp, "out.safetensors")
        cmd = [svdiff, "generate", "--model", model_dir, "--prompt", prompt, "--steps", str(args.sample_steps),
               "--cfg", str(CFG_SCALE), "--sampler", "ddim", "--num-images", str(args.images), "--batch-size",
               str(args.images), "--threads", str(args.threads), "--init-latents", init, "--save-latents", outp,
               "-o", os.path.join(tmp, "o.png")]
        t = time.time()
        subprocess.run(cmd, check=True, capture_output=True)
        t_c = time.time() - t
        theirs = read_safetensors(outp)["latents"]
    t = time.time()
    mine = ddim_sample(m, ids[None].expand(args.images, -1), empty, noise, ac, steps=args.sample_steps)
    t_p = time.time() - t
    diff = (mine - theirs).abs()
    log(f"selftest: DDIM {args.sample_steps} steps + CFG {CFG_SCALE} on models/emoji-32, {args.images} images of "
        f"{prompt!r}: max |torch - svdiff| {diff.max().item():.2e}, mean {diff.mean().item():.2e} "
        f"(|x| max {theirs.abs().max().item():.2f}); svdiff {t_c:.1f} s, torch {t_p:.1f} s")
    if args.png:
        both = torch.cat([mine, theirs]).clamp(-1, 1).add(1).div(2).mul(255).round().to(torch.uint8)
        strip = both.permute(2, 0, 3, 1).reshape(32, -1, 3).numpy()
        write_png(args.png, strip.repeat(4, 0).repeat(4, 1))
        log(f"selftest: {args.png}: torch samples then svdiff samples")


# =============================================================================================


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep", help="local: images + token ids -> .sweep/emoji32.npz")
    p.add_argument("--no-check", action="store_true", help="skip the check against `svdiff tokenize`")
    p.add_argument("--check", type=int, default=20, help="captions checked against `svdiff tokenize` (default 20)")
    p = sub.add_parser("selftest", help="local: parameter counts, op checks, DDIM vs svdiff generate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--caption", type=int, default=6)
    p.add_argument("--sample-steps", type=int, default=SAMPLE_STEPS)
    p.add_argument("--png", help="write the torch and svdiff samples side by side here")
    p = sub.add_parser("run", help="train and evaluate the recipes in parallel")
    p.add_argument("--out", help="output folder (required unless --list)")
    p.add_argument("--recipes", help="comma-separated names (default: all; --list shows them)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--no-baseline", action="store_true",
                   help="leave out the evaluation of the shipped models/emoji-32 (a row with no training)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies steps and warm-up")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds for the whole run (default 420)")
    p.add_argument("--eval-reserve", type=float, default=30.0, help="seconds kept for evaluation (default 30)")
    p.add_argument("--fit", action="store_true", help="shrink a recipe's planned steps early to fit the budget")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead",
                                                         "max-autotune-no-cudagraphs"])
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default cpus / recipes, 1-4)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=SAMPLE_STEPS)
    p.add_argument("--work", help="folder for the workers' files (default: a new temporary folder)")
    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("--recipe", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--deadline", type=float, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="none")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=SAMPLE_STEPS)
    p.add_argument("--fit", action="store_true")
    args = ap.parse_args()
    {"prep": cmd_prep, "selftest": cmd_selftest, "run": cmd_run, "worker": cmd_worker}[args.cmd](args)


if __name__ == "__main__":
    main()
