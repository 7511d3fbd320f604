#!/usr/bin/python3
"""Tiny random Stable-Diffusion-architecture models for tests/test_model.c, in the three layouts
src/io/model.c opens. The same weights are written three times:

  diffusers/        model_index.json; unet/ (config.json + diffusion_pytorch_model.safetensors: matrices
                    and kernels F16, vectors F32); vae/ (config.json + only the variant file
                    diffusion_pytorch_model.fp16.safetensors); text_encoder/ (config.json +
                    model.safetensors.index.json and two shards, the first F16, the second F32 with
                    transformers' int64 position_ids buffer); scheduler/scheduler_config.json;
                    tokenizer/ (the tokenizer tests' tiny vocab.json + merges.txt when present, else a
                    minimal one; tokenizer_config.json, special_tokens_map.json)
  sd1.safetensors   CompVis/LDM single file, SD 1.x, all F16: model.diffusion_model.*,
                    first_stage_model.* (mid attention as 1x1 convs), cond_stage_model.transformer.*
                    (with the position_ids buffer), plus an F32 alphas_cumprod the loader ignores
  sd2.safetensors   LDM single file, SD 2.x, all F16, without a VAE: the UNet with linear
                    proj_in/proj_out, OpenCLIP text (fused attn.in_proj_weight / in_proj_bias, one
                    extra last resblock, text_projection and logit_scale, all ignored by the loader)

Every value is rounded to float16 first, so F32 and F16 copies convert to identical floats and the
C test compares them bit for bit. Key names follow diffusers' UNet2DConditionModel / AutoencoderKL
and transformers' CLIPTextModel for the configs below; the LDM names follow the CompVis / Stability
checkpoints (as diffusers' single-file conversion reads them). This file also holds the name and
shape tables bench/make_random_sd15.py uses for the full-size model.

Run with Debian's torch (/usr/bin/python3) via tests/reference/regenerate.sh; output is
byte-for-byte deterministic.
"""
import argparse
import json
import os
import shutil

import torch

import st_io  # noqa: E402  (tests/reference/st_io.py)

# ---- configs (diffusers / transformers keys) ---------------------------------------------------

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.21.0",
    "act_fn": "silu",
    "attention_head_dim": 2,
    "block_out_channels": [4, 8],
    "center_input_sample": False,
    "cross_attention_dim": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 2,
    "out_channels": 4,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False,
}

VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.21.0",
    "act_fn": "silu",
    "block_out_channels": [4, 8],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "out_channels": 3,
    "sample_size": 16,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}

TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 16,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 32,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 1,
    "projection_dim": 16,
    "torch_dtype": "float32",
    "vocab_size": None,  # the tokenizer's size, filled in by main()
}

SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.21.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.21.0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# ---- diffusers / transformers tensor names and shapes ------------------------------------------
# Each function returns [(name, shape, kind)] in module order; kind is "w" (a weight: fan-in scaled
# noise), "b" (bias), "g" (norm gain, near 1) or "n" (norm shift) so the values look like a model.


def _norm(out, prefix, c):
    out.append((prefix + ".weight", [c], "g"))
    out.append((prefix + ".bias", [c], "n"))


def _lin(out, prefix, o, i, bias=True):
    out.append((prefix + ".weight", [o, i], "w"))
    if bias:
        out.append((prefix + ".bias", [o], "b"))


def _conv(out, prefix, o, i, k):
    out.append((prefix + ".weight", [o, i, k, k], "w"))
    out.append((prefix + ".bias", [o], "b"))


def _resnet(out, prefix, cin, cout, temb):
    """diffusers ResnetBlock2D (temb None: the VAE's, without time_emb_proj)."""
    _norm(out, prefix + ".norm1", cin)
    _conv(out, prefix + ".conv1", cout, cin, 3)
    if temb:
        _lin(out, prefix + ".time_emb_proj", cout, temb)
    _norm(out, prefix + ".norm2", cout)
    _conv(out, prefix + ".conv2", cout, cout, 3)
    if cin != cout:
        _conv(out, prefix + ".conv_shortcut", cout, cin, 1)


def _transformer(out, prefix, c, cross, linear):
    """diffusers Transformer2DModel with one BasicTransformerBlock (GEGLU feed-forward)."""
    _norm(out, prefix + ".norm", c)
    if linear:
        _lin(out, prefix + ".proj_in", c, c)
    else:
        _conv(out, prefix + ".proj_in", c, c, 1)
    tb = prefix + ".transformer_blocks.0"
    _norm(out, tb + ".norm1", c)
    for p in ("to_q", "to_k", "to_v"):
        _lin(out, f"{tb}.attn1.{p}", c, c, bias=False)
    _lin(out, tb + ".attn1.to_out.0", c, c)
    _norm(out, tb + ".norm2", c)
    _lin(out, tb + ".attn2.to_q", c, c, bias=False)
    _lin(out, tb + ".attn2.to_k", c, cross, bias=False)
    _lin(out, tb + ".attn2.to_v", c, cross, bias=False)
    _lin(out, tb + ".attn2.to_out.0", c, c)
    _norm(out, tb + ".norm3", c)
    _lin(out, tb + ".ff.net.0.proj", 8 * c, c)
    _lin(out, tb + ".ff.net.2", c, 4 * c)
    if linear:
        _lin(out, prefix + ".proj_out", c, c)
    else:
        _conv(out, prefix + ".proj_out", c, c, 1)


def unet_tensors(cfg):
    ch = cfg["block_out_channels"]
    n, lpb = len(ch), cfg["layers_per_block"]
    cross, linear = cfg["cross_attention_dim"], cfg.get("use_linear_projection", False)
    temb = 4 * ch[0]
    out = []
    _conv(out, "conv_in", ch[0], cfg["in_channels"], 3)
    _lin(out, "time_embedding.linear_1", temb, ch[0])
    _lin(out, "time_embedding.linear_2", temb, temb)
    cout = ch[0]
    for i, kind in enumerate(cfg["down_block_types"]):
        cin, cout = cout, ch[i]
        for j in range(lpb):
            _resnet(out, f"down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout, temb)
            if kind == "CrossAttnDownBlock2D":
                _transformer(out, f"down_blocks.{i}.attentions.{j}", cout, cross, linear)
        if i < n - 1:
            _conv(out, f"down_blocks.{i}.downsamplers.0.conv", cout, cout, 3)
    _resnet(out, "mid_block.resnets.0", ch[-1], ch[-1], temb)
    _transformer(out, "mid_block.attentions.0", ch[-1], cross, linear)
    _resnet(out, "mid_block.resnets.1", ch[-1], ch[-1], temb)
    rev = list(reversed(ch))
    cout = rev[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        prev, cout = cout, rev[i]
        cin = rev[min(i + 1, n - 1)]
        for j in range(lpb + 1):
            skip = cin if j == lpb else cout
            rin = prev if j == 0 else cout
            _resnet(out, f"up_blocks.{i}.resnets.{j}", rin + skip, cout, temb)
            if kind == "CrossAttnUpBlock2D":
                _transformer(out, f"up_blocks.{i}.attentions.{j}", cout, cross, linear)
        if i < n - 1:
            _conv(out, f"up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
    _norm(out, "conv_norm_out", ch[0])
    _conv(out, "conv_out", cfg["out_channels"], ch[0], 3)
    return out


def _vae_mid(out, prefix, c):
    _resnet(out, prefix + ".resnets.0", c, c, None)
    a = prefix + ".attentions.0"
    _norm(out, a + ".group_norm", c)
    for p in ("to_q", "to_k", "to_v", "to_out.0"):
        _lin(out, f"{a}.{p}", c, c)
    _resnet(out, prefix + ".resnets.1", c, c, None)


def vae_tensors(cfg):
    ch = cfg["block_out_channels"]
    n, lpb, lat = len(ch), cfg["layers_per_block"], cfg["latent_channels"]
    out = []
    _conv(out, "encoder.conv_in", ch[0], cfg["in_channels"], 3)
    cout = ch[0]
    for i in range(n):
        cin, cout = cout, ch[i]
        for j in range(lpb):
            _resnet(out, f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout, None)
        if i < n - 1:
            _conv(out, f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout, 3)
    _vae_mid(out, "encoder.mid_block", ch[-1])
    _norm(out, "encoder.conv_norm_out", ch[-1])
    _conv(out, "encoder.conv_out", 2 * lat, ch[-1], 3)
    _conv(out, "quant_conv", 2 * lat, 2 * lat, 1)
    _conv(out, "post_quant_conv", lat, lat, 1)
    _conv(out, "decoder.conv_in", ch[-1], lat, 3)
    _vae_mid(out, "decoder.mid_block", ch[-1])
    rev = list(reversed(ch))
    cout = rev[0]
    for i in range(n):
        prev, cout = cout, rev[i]
        for j in range(lpb + 1):
            _resnet(out, f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else cout, cout, None)
        if i < n - 1:
            _conv(out, f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
    _norm(out, "decoder.conv_norm_out", ch[0])
    _conv(out, "decoder.conv_out", cfg["out_channels"], ch[0], 3)
    return out


def clip_tensors(cfg):
    c, m = cfg["hidden_size"], cfg["intermediate_size"]
    out = [("text_model.embeddings.token_embedding.weight", [cfg["vocab_size"], c], "e"),
           ("text_model.embeddings.position_embedding.weight", [cfg["max_position_embeddings"], c], "e")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{i}"
        for q in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _lin(out, f"{p}.self_attn.{q}", c, c)
        _norm(out, p + ".layer_norm1", c)
        _lin(out, p + ".mlp.fc1", m, c)
        _lin(out, p + ".mlp.fc2", c, m)
        _norm(out, p + ".layer_norm2", c)
    _norm(out, "text_model.final_layer_norm", c)
    return out


# ---- LDM (CompVis) names, written from the diffusers side -------------------------------------

UNET_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                   "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTN_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_rest(rest):
    head, tail = rest.rsplit(".", 1)
    return UNET_RESNET_LDM[head] + "." + tail


def unet_ldm_name(name, cfg):
    s = cfg["layers_per_block"] + 1
    p = name.split(".")
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head = ".".join(p[:-1])
    if head in fixed:
        return f"model.diffusion_model.{fixed[head]}.{p[-1]}"
    rest = ".".join(p[4:])
    if p[0] == "down_blocks":
        i, j = int(p[1]), int(p[3])
        if p[2] == "resnets":
            ldm = f"input_blocks.{s * i + j + 1}.0.{_resnet_rest(rest)}"
        elif p[2] == "attentions":
            ldm = f"input_blocks.{s * i + j + 1}.1.{rest}"
        else:  # downsamplers.0.conv.X
            ldm = f"input_blocks.{s * (i + 1)}.0.op.{p[-1]}"
    elif p[0] == "mid_block":
        j, rest = int(p[2]), ".".join(p[3:])
        ldm = f"middle_block.1.{rest}" if p[1] == "attentions" else f"middle_block.{2 * j}.{_resnet_rest(rest)}"
    elif p[0] == "up_blocks":
        i, j = int(p[1]), int(p[3])
        if p[2] == "resnets":
            ldm = f"output_blocks.{s * i + j}.0.{_resnet_rest(rest)}"
        elif p[2] == "attentions":
            ldm = f"output_blocks.{s * i + j}.1.{rest}"
        else:
            has_attn = cfg["up_block_types"][i] == "CrossAttnUpBlock2D"
            ldm = f"output_blocks.{s * i + s - 1}.{2 if has_attn else 1}.conv.{p[-1]}"
    else:
        raise KeyError(name)
    return "model.diffusion_model." + ldm


def vae_ldm_name(name, cfg):
    n = len(cfg["block_out_channels"])
    p = name.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return "first_stage_model." + name
    side, what = p[0], p[1]
    if what in ("conv_in", "conv_out"):
        ldm = name
    elif what == "conv_norm_out":
        ldm = f"{side}.norm_out.{p[-1]}"
    elif what in ("down_blocks", "up_blocks"):
        i = int(p[2])
        lvl, word = (i, "down") if what == "down_blocks" else (n - 1 - i, "up")
        if p[3] == "resnets":
            rest = ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            ldm = f"{side}.{word}.{lvl}.block.{p[4]}.{rest}"
        else:  # downsamplers.0.conv / upsamplers.0.conv
            ldm = f"{side}.{word}.{lvl}.{'downsample' if word == 'down' else 'upsample'}.conv.{p[-1]}"
    elif what == "mid_block":
        if p[2] == "resnets":
            ldm = f"{side}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
        else:
            ldm = f"{side}.mid.attn_1.{VAE_ATTN_LDM['.'.join(p[4:-1])]}.{p[-1]}"
    else:
        raise KeyError(name)
    return "first_stage_model." + ldm


OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def openclip_tensors(params, cfg, extra_layer, gen):
    """SD 2.x cond_stage_model.model.* from CLIPTextModel tensors: q/k/v fused into in_proj, plus
    an extra last resblock (SD 2 runs the penultimate layer: diffusers drops the last one)."""
    pre = "cond_stage_model.model."
    out = {pre + "token_embedding.weight": params["text_model.embeddings.token_embedding.weight"],
           pre + "positional_embedding": params["text_model.embeddings.position_embedding.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        hp, op = f"text_model.encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
        out[op + "attn.in_proj_weight"] = torch.cat([params[hp + f"self_attn.{q}_proj.weight"] for q in "qkv"])
        out[op + "attn.in_proj_bias"] = torch.cat([params[hp + f"self_attn.{q}_proj.bias"] for q in "qkv"])
        for h, o in OPENCLIP_LAYER.items():
            for t in ("weight", "bias"):
                out[f"{op}{o}.{t}"] = params[f"{hp}{h}.{t}"]
    for k, v in extra_layer.items():
        out[f"{pre}transformer.resblocks.{cfg['num_hidden_layers']}.{k}"] = v
    out[pre + "ln_final.weight"] = params["text_model.final_layer_norm.weight"]
    out[pre + "ln_final.bias"] = params["text_model.final_layer_norm.bias"]
    c = cfg["hidden_size"]
    out[pre + "text_projection"] = value([c, c], "w", gen)
    out[pre + "logit_scale"] = torch.tensor(4.6052, dtype=torch.float32).half().float()
    return out


# ---- values and files --------------------------------------------------------------------------

def value(shape, kind, gen):
    """fp16-exact float32 values: fan-in scaled noise for weights, gains near 1."""
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if kind == "w":
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        x = x / fan_in ** 0.5
    elif kind == "g":
        x = 1.0 + 0.1 * x
    elif kind in ("b", "n"):
        x = 0.1 * x
    else:  # embeddings
        x = 0.5 * x
    return x.half().float()


def make_params(table, gen):
    return {name: value(shape, kind, gen) for name, shape, kind in table}


DT = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "I64": (torch.int64, 8)}


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype name, tensor)} (st_io.write_raw; metadata first)."""
    entries = [(name, dt, list(t.shape), t.detach().to(DT[dt][0]).contiguous().numpy().tobytes())
               for name, (dt, t) in tensors.items()]
    return st_io.write_raw(path, entries, metadata, metadata_first=True)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def bytes_to_unicode():
    """CLIP's byte -> printable character table (ids 0..255 of the vocabulary, in this order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


TINY_MERGES = ["t h", "th e</w>", "o f</w>", "a n", "an d</w>", "p h", "ph o", "pho t", "phot o</w>",
               "d o", "do g</w>", "c a", "ca t</w>", "s k", "sk s</w>", "i n</w>", "s n", "sn o",
               "sno w</w>", "p a", "pa i", "pai n", "pain t", "paint i", "painti n", "paintin g</w>",
               "o n</w>"]


def write_tokenizer(folder, root):
    """Copies the tokenizer tests' tiny vocabulary (tests/fixtures/tokenizer/tiny/, written by
    gen_tokenizer_golden.py, which regenerate.sh runs first) when it exists, so prompts can run
    through this model; else writes a minimal valid CLIP BPE vocabulary (bytes, bytes + </w>, a
    few merges, the two specials). Returns the vocabulary size."""
    os.makedirs(folder, exist_ok=True)
    vocab = None
    for sub in (("tokenizer", "tiny"), ("tokenizer",)):
        src = os.path.join(root, "tests", "fixtures", *sub)
        if vocab is None and os.path.isfile(os.path.join(src, "vocab.json")) and \
                os.path.isfile(os.path.join(src, "merges.txt")):
            with open(os.path.join(src, "vocab.json"), encoding="utf-8") as f:
                v = json.load(f)
            if len(v) <= 2048:
                vocab = v
                for name in ("vocab.json", "merges.txt"):
                    shutil.copyfile(os.path.join(src, name), os.path.join(folder, name))
    if vocab is None:
        base = bytes_to_unicode()
        toks = base + [b + "</w>" for b in base] + [m.replace(" ", "") for m in TINY_MERGES]
        toks += ["<|startoftext|>", "<|endoftext|>"]
        assert len(set(toks)) == len(toks)
        vocab = {t: i for i, t in enumerate(toks)}
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n")
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
    write_json(os.path.join(folder, "special_tokens_map.json"), {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"})
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"})
    return max(vocab.values()) + 1


def schedule_buffers():
    """One of the DDPM buffers LDM checkpoints carry (the loader ignores them), F32."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return {"alphas_cumprod": ("F32", torch.cumprod(1 - betas, 0).float())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/tiny-sd)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    out = args.out
    d = os.path.join(out, "diffusers")
    if os.path.isdir(d):
        shutil.rmtree(d)
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        os.makedirs(os.path.join(d, sub))

    text_cfg = dict(TEXT_CONFIG)
    text_cfg["vocab_size"] = write_tokenizer(os.path.join(d, "tokenizer"), root)

    gen = torch.Generator().manual_seed(31337)
    unet = make_params(unet_tensors(UNET_CONFIG), gen)
    vae = make_params(vae_tensors(VAE_CONFIG), gen)
    text = make_params(clip_tensors(text_cfg), gen)
    extra = make_params([(k, s, kind) for k, s, kind in clip_tensors(dict(text_cfg, num_hidden_layers=1))
                         if k.startswith("text_model.encoder.layers.0.")], gen)
    extra_layer = {}  # the extra OpenCLIP resblock in its own names
    for i_key, v in extra.items():
        rest = i_key[len("text_model.encoder.layers.0."):]
        for h, o in OPENCLIP_LAYER.items():
            if rest.startswith(h + "."):
                extra_layer[o + rest[len(h):]] = v
    for t in ("weight", "bias"):
        extra_layer["attn.in_proj_" + t] = torch.cat([extra[f"text_model.encoder.layers.0.self_attn.{q}_proj.{t}"]
                                                      for q in "qkv"])

    # (a) diffusers folder
    write_json(os.path.join(d, "model_index.json"), MODEL_INDEX)
    write_json(os.path.join(d, "unet", "config.json"), UNET_CONFIG)
    write_json(os.path.join(d, "vae", "config.json"), VAE_CONFIG)
    write_json(os.path.join(d, "text_encoder", "config.json"), text_cfg)
    write_json(os.path.join(d, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
    # mixed dtypes in one file: matrices and kernels F16, vectors F32
    write_safetensors(os.path.join(d, "unet", "diffusion_pytorch_model.safetensors"),
                      {k: ("F16" if v.dim() >= 2 else "F32", v) for k, v in unet.items()}, {"format": "pt"})
    write_safetensors(os.path.join(d, "vae", "diffusion_pytorch_model.fp16.safetensors"),
                      {k: ("F16", v) for k, v in vae.items()}, {"format": "pt"})
    names = list(text.keys())
    half = len(names) // 2
    shards = [("model-00001-of-00002.safetensors", names[:half]), ("model-00002-of-00002.safetensors", names[half:])]
    weight_map, total = {}, 0
    for fname, keys in shards:
        dt = "F16" if fname.startswith("model-00001") else "F32"   # shards of different dtypes
        tens = {k: (dt, text[k]) for k in keys}
        if fname.startswith("model-00002"):  # transformers' buffer, as older SD 1.x files have it
            tens["text_model.embeddings.position_ids"] = ("I64", torch.arange(77).unsqueeze(0))
        write_safetensors(os.path.join(d, "text_encoder", fname), tens, {"format": "pt"})
        for k in tens:
            weight_map[k] = fname
        total += sum((2 if dt == "F16" else 4) * v.numel() for k, v in text.items() if k in keys)
    write_json(os.path.join(d, "text_encoder", "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})

    # (b) SD 1.x single file
    sd1 = {}
    for k, v in unet.items():
        sd1[unet_ldm_name(k, UNET_CONFIG)] = ("F16", v)
    for k, v in vae.items():
        if ".mid_block.attentions.0.to_" in k and k.endswith(".weight"):
            v = v.reshape(v.shape[0], v.shape[1], 1, 1)   # LDM stores them as 1x1 convs
        sd1[vae_ldm_name(k, VAE_CONFIG)] = ("F16", v)
    for k, v in text.items():
        sd1["cond_stage_model.transformer." + k] = ("F16", v)
    sd1["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ("I64", torch.arange(77).unsqueeze(0))
    sd1.update(schedule_buffers())
    write_safetensors(os.path.join(out, "sd1.safetensors"), sd1)

    # (c) SD 2.x single file: linear proj_in / proj_out, OpenCLIP text with an extra last layer, and
    # no VAE (as "no-vae" checkpoints ship; first_stage_model.* is the same as in SD 1.x anyway)
    unet2_cfg = dict(UNET_CONFIG, use_linear_projection=True)
    sd2 = {}
    for k, v in unet.items():
        if (k.endswith("proj_in.weight") or k.endswith("proj_out.weight")) and v.dim() == 4:
            v = v.reshape(v.shape[0], v.shape[1])
        sd2[unet_ldm_name(k, unet2_cfg)] = ("F16", v)
    for k, v in openclip_tensors(text, text_cfg, extra_layer, gen).items():
        sd2[k] = ("F16", v)
    write_safetensors(os.path.join(out, "sd2.safetensors"), sd2)

    size = 0
    for dirpath, _, files in os.walk(out):
        size += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"wrote {out}: unet {sum(v.numel() for v in unet.values())} params, vae "
          f"{sum(v.numel() for v in vae.values())}, text {sum(v.numel() for v in text.values())}; "
          f"{size} bytes in all")


if __name__ == "__main__":
    main()
