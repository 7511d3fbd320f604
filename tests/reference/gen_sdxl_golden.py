#!/usr/bin/python3
"""A tiny SDXL-shaped model and golden tensors for tests/test_sdxl.c, computed by PyTorch
re-implementations (no diffusers / transformers package is used). The modules are those of the
other generators, imported from this folder, plus what SDXL adds:

  gen_unet_golden.UNet2DConditionModel  diffusers unets/unet_2d_condition.py; SDXLUNet below adds
                                        addition_embed_type "text_time" (get_aug_embed: add_time_proj
                                        = Timesteps(addition_time_embed_dim, flip_sin_to_cos,
                                        freq_shift) of time_ids.flatten(), reshaped [B, 6 * dim],
                                        cat(text_embeds, it), add_embedding = TimestepEmbedding
                                        (linear_1, SiLU, linear_2), added to the time embedding)
  text_states below                     transformers models/clip/modeling_clip.py CLIPTextModel /
                                        CLIPTextModelWithProjection: hidden_states (embeddings, then
                                        each layer's raw output), last_hidden_state =
                                        final_layer_norm(last), pooled = last_hidden_state at the first
                                        position of the largest id (the EOS), text_embeds =
                                        text_projection(pooled) (no bias)
  encode_prompt below                   diffusers pipelines/stable_diffusion_xl/
                                        pipeline_stable_diffusion_xl.py encode_prompt: per encoder
                                        hidden_states[-(clip_skip + 2)] (clip_skip None = 0), the two
                                        concatenated on the last axis; pooled from text_encoder_2;
                                        force_zeros_for_empty_prompt: no negative prompt -> zeros
  gen_sampler_golden.Sampler            scheduling_euler_discrete.py (timestep_spacing "leading",
                                        steps_offset 1), float64 arithmetic on the float32 schedule
                                        (gen_pipeline_golden.sampler_for)
  gen_vae_golden.decode                 AutoencoderKL decode (latents / scaling_factor 0.13025)

The model (tests/fixtures/tiny-sdxl/): UNet block_out_channels [6, 8, 8] with
[DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D] (the first level has no attention),
layers_per_block 2, transformer_layers_per_block [1, 2, 3] (the mid block runs 3), linear
projection, cross_attention_dim 24 = 8 (text_encoder: CLIP-L-like, quick_gelu, 3 layers) + 16
(text_encoder_2: OpenCLIP-bigG-like, gelu, 3 layers, text_projection 16 -> 12),
addition_time_embed_dim 8, projection_class_embeddings_input_dim 12 + 6 * 8 = 60; the tiny-sd VAE
shape with scaling_factor 0.13025; EulerDiscreteScheduler. A single file stores neither head counts
nor GroupNorm groups, so the folder's configs state what src/io/model_config.c derives for these
widths (one head per level and per text encoder: widths that are not multiples of 64; norm_num_groups
the largest divisor up to 32 of every width: 2 for the UNet, whose GroupNorms then see 3 or 4 channels
a group, 4 for the VAE): both layouts then describe the same model and give the same numbers
(multi-head attention is covered by the unet and clip goldens). Every value is
float16-exact, so all copies hold the same floats:
  diffusers/         model_index.json (force_zeros_for_empty_prompt), unet/ (F16), vae/ (F32),
                     text_encoder/ (F32), text_encoder_2/ (F16, two shards + index), tokenizer/ (the
                     tiny-sd tokenizer), tokenizer_2/ (the same vocabulary, pad_token "!"), scheduler/
  sdxl.safetensors   the sgm single file (F16, I64 position_ids): model.diffusion_model.* (label_emb.0.0
                     / .0.2 = add_embedding.linear_1 / _2), conditioner.embedders.0.transformer.
                     text_model.* (HF layout), conditioner.embedders.1.model.* (OpenCLIP layout: fused
                     attn.in_proj_weight / in_proj_bias, text_projection stored [hidden, projection],
                     positional_embedding, ln_final, logit_scale), first_stage_model.*

Golden tensors, tests/fixtures/sdxl/golden.safetensors (F32; ids as integer-valued F32):
  unet.sample [2, 4, 8, 12], unet.timesteps [2], unet.ctx [2, 77, 24], unet.text_embeds [2, 12],
  unet.time_ids [2, 6]           inputs
  unet.out_base                  the UNet output with the stored weights
  unet.<path>.U/.S/.Vh/.delta    spectral layers (metadata "unet_spectral"), with the stored W:
                                 W + U diag(relu(S + delta) - S) Vh (as gen_unet_golden.py)
  unet.out, unet.dout            the output with those shifts; the upstream gradient
  unet.dsample, unet.dctx, unet.dtext_embeds, unet.<path>.ddelta
                                 gradients of sum(out * dout)
  te.ids, te2.ids [2, 77]        token ids of PROMPTS (tokenizer pads with the end token, tokenizer_2
                                 with "!", id 0)
  te.penult, te2.penult          hidden_states[-2] (no final LayerNorm) [2, 77, 8] / [2, 77, 16]
  te.skip1, te2.skip1            hidden_states[-3] (clip_skip 1)
  te.last, te2.last              last_hidden_state (final LayerNorm of the last layer)
  te2.pooled [2, 12]             text_projection at the EOS
  prompt.ctx [2, 77, 24], prompt.pooled [2, 12]   encode_prompt of [NEGATIVE, PROMPT]
  prompt.ctx_skip1               the same with clip_skip 1 (pooled does not change)
  <run>.init [1, 4, 8, 12]       svdiff's seeded noise (gen_sampler_golden.Rng(seed)), unscaled
  <run>.t, <run>.traj, <run>.latents, <run>.image, <run>.time_ids [2, 6] ([negative; prompt] rows),
  <run>.ctx [2, 77, 24], <run>.pooled [2, 12]     a whole sampling run (RUNS) with CFG
  train.*                        one training step (TRAIN_* below): x0, eps, timesteps, ids1, ids2,
                                 time_ids, loss; train.grad.<name> = d loss / d shift at zero shifts
                                 for every trained shift (<name>: "unet/<path>", "te/<path>.weight",
                                 "te2/<path>.weight", the C trainer's names); metadata train_zero_grads
                                 counts those that are zero (text_encoder's last layer, which the
                                 context skips)

Run with Debian's torch (/usr/bin/python3) via tests/reference/regenerate.sh (after tiny-sd, whose
tokenizer it copies); output is byte-for-byte deterministic.
"""
import argparse
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_pipeline_golden as piperef  # noqa: E402
import gen_sampler_golden as sampref    # noqa: E402
import gen_tiny_models as tiny          # noqa: E402
import gen_tokenizer_golden as tokref   # noqa: E402
import gen_unet_golden as unetref       # noqa: E402  (sets the default dtype to float64)
import gen_vae_golden as vaeref         # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order: byte-identical output on every run

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TINY_TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tiny-sd", "diffusers", "tokenizer")
SEED = 20261207

# ---- configs (diffusers / transformers keys; the UNet's as SDXL base 1.0 writes them) -----------

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 8,
    "attention_head_dim": [1, 1, 1],
    "block_out_channels": [6, 8, 8],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 24,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 2,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 60,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 8,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 3],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

VAE_CONFIG = dict(tiny.VAE_CONFIG, scaling_factor=0.13025, norm_num_groups=4, force_upcast=True, sample_size=16,
                  _diffusers_version="0.20.0.dev0")

TE_BASE = {k: v for k, v in tiny.TEXT_CONFIG.items() if k not in ("vocab_size",)}
TE1_CONFIG = dict(TE_BASE, hidden_size=8, intermediate_size=16, num_attention_heads=1, num_hidden_layers=3,
                  projection_dim=8, hidden_act="quick_gelu", eos_token_id=2, pad_token_id=1)
TE2_CONFIG = dict(TE_BASE, architectures=["CLIPTextModelWithProjection"], hidden_size=16, intermediate_size=32,
                  num_attention_heads=1, num_hidden_layers=3, projection_dim=12, hidden_act="gelu",
                  eos_token_id=2, pad_token_id=1, torch_dtype="float16")

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

PROMPT = "a photo of a cat sitting on a red chair, highly detailed"
NEGATIVE = "blurry, dark"
PROMPTS = [NEGATIVE, PROMPT]
N_TOK = 77

# Sampling runs (the C test repeats this table): name, seed, steps, guidance, height, width,
# negative prompt (None: force_zeros_for_empty_prompt), clip_skip (the prompt's only: diffusers
# encodes the negative prompt with hidden_states[-2] always), original_size, crops_coords_top_left,
# target_size ((0, 0) = diffusers' default: the image size; crop (0, 0)); the negative rows use the
# same time ids.
RUNS = [
    ("euler", 7, 2, 5.0, 16, 24, None, 0, (0, 0), (0, 0), (0, 0)),
    ("euler_cond", 11, 2, 4.0, 16, 24, NEGATIVE, 1, (64, 48), (4, 2), (32, 40)),
]

# The UNet golden's spectral layers (with W): both add_embedding linears, layers of the 3-layer
# transformers (mid block, up block 0) and the 2-layer one.
UNET_SPECTRAL = ["add_embedding.linear_1", "add_embedding.linear_2",
                 "mid_block.attentions.0.transformer_blocks.2.attn2.to_k",
                 "up_blocks.0.attentions.2.transformer_blocks.1.ff.net.2",
                 "down_blocks.1.attentions.1.transformer_blocks.1.attn1.to_q",
                 "down_blocks.0.resnets.1.conv1"]

# The training step: two instance images (original (h, w) as decoded from their files) at
# resolution TRAIN_RES (latents TRAIN_RES / 2), resized so the shorter side is TRAIN_RES (torchvision
# Resize: the longer side int(TRAIN_RES * long / short)) and center-cropped, as diffusers'
# train_dreambooth_lora_sdxl.py does (crop top = max(0, round((h' - res) / 2)), left alike); time_ids =
# original (h, w) + crop (top, left) + (res, res).
TRAIN_RES = 16
TRAIN_IMAGES = [(24, 20), (30, 48)]
TRAIN_TIMESTEPS = [17, 503]
TRAIN_PROMPT = "a photo of sks dog"


def f16(x):
    return x.detach().to(torch.float16).to(torch.float64)


def f32(x):
    return x.detach().to(torch.float32).to(torch.float64)


# ---- the UNet ------------------------------------------------------------------------------------

class SDXLUNet(unetref.UNet2DConditionModel):
    """UNet2DConditionModel with addition_embed_type "text_time" (unet_2d_condition.py
    get_aug_embed, then emb = emb + aug_emb before the blocks)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        temb = cfg.get("time_embedding_dim") or 4 * cfg["block_out_channels"][0]
        self.add_embedding = unetref.TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], temb)

    def forward(self, sample, timesteps, ctx, text_embeds, time_ids):
        cfg = self.cfg
        B = sample.shape[0]
        emb = self.time_embedding(unetref.timestep_features(timesteps, cfg["block_out_channels"][0],
                                                            cfg["flip_sin_to_cos"], cfg["freq_shift"]))
        time_embeds = unetref.timestep_features(time_ids.reshape(-1), cfg["addition_time_embed_dim"],
                                                cfg["flip_sin_to_cos"], cfg["freq_shift"]).reshape(B, -1)
        emb = emb + self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1))
        h = self.conv_in(sample)
        skips = [h]
        for blk in self.down_blocks:
            h, states = blk(h, emb, ctx)
            skips += states
        h = self.mid_block(h, emb, ctx)
        for blk in self.up_blocks:
            h = blk(h, skips, emb, ctx)
        assert not skips
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def init_unet(gen):
    model = SDXLUNet(UNET_CONFIG)
    unetref.init_weights(model, gen, torch.float16)
    return model


# ---- the text encoders ---------------------------------------------------------------------------

def te_params(cfg, gen, projection):
    """Random transformers-named weights (fan-in scaled, gains near 1), float16-exact."""
    C, I, V, P = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"]

    def rnd(*shape, std=1.0, mean=0.0):
        return f16(torch.randn(*shape, generator=gen) * std + mean)

    p = {"text_model.embeddings.token_embedding.weight": rnd(V, C, std=0.5),
         "text_model.embeddings.position_embedding.weight": rnd(P, C, std=0.2)}
    for i in range(cfg["num_hidden_layers"]):
        pre = f"text_model.encoder.layers.{i}."
        for q in ("k_proj", "v_proj", "q_proj", "out_proj"):
            p[pre + f"self_attn.{q}.weight"] = rnd(C, C, std=C ** -0.5)
            p[pre + f"self_attn.{q}.bias"] = rnd(C, std=0.1)
        p[pre + "layer_norm1.weight"] = rnd(C, std=0.1, mean=1.0)
        p[pre + "layer_norm1.bias"] = rnd(C, std=0.1)
        p[pre + "mlp.fc1.weight"] = rnd(I, C, std=C ** -0.5)
        p[pre + "mlp.fc1.bias"] = rnd(I, std=0.1)
        p[pre + "mlp.fc2.weight"] = rnd(C, I, std=I ** -0.5)
        p[pre + "mlp.fc2.bias"] = rnd(C, std=0.1)
        p[pre + "layer_norm2.weight"] = rnd(C, std=0.1, mean=1.0)
        p[pre + "layer_norm2.bias"] = rnd(C, std=0.1)
    p["text_model.final_layer_norm.weight"] = rnd(C, std=0.1, mean=1.0)
    p["text_model.final_layer_norm.bias"] = rnd(C, std=0.1)
    if projection:
        p["text_projection.weight"] = rnd(cfg["projection_dim"], C, std=C ** -0.5)
    return p


def text_states(p, cfg, ids):
    """CLIPTextModel(WithProjection) with output_hidden_states: (hidden_states list of L + 1
    [B, T, C], last_hidden_state, text_embeds or None). Causal self-attention, no padding mask
    (the pipelines pass none), q scaled by head_dim^-0.5 before q k^T."""
    eps = cfg["layer_norm_eps"]
    Bn, Tn = ids.shape
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    D = C // H
    x = p["text_model.embeddings.token_embedding.weight"][ids] + \
        p["text_model.embeddings.position_embedding.weight"][:Tn].unsqueeze(0)
    mask = torch.full((Tn, Tn), float("-inf")).triu(1)
    states = [x]
    for i in range(cfg["num_hidden_layers"]):
        g = lambda n: p[f"text_model.encoder.layers.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(x, (C,), g("layer_norm1.weight"), g("layer_norm1.bias"), eps)
        heads = lambda t: t.view(Bn, Tn, H, D).transpose(1, 2)  # noqa: E731
        q = heads(F.linear(h, g("self_attn.q_proj.weight"), g("self_attn.q_proj.bias")) * D ** -0.5)
        k = heads(F.linear(h, g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias")))
        v = heads(F.linear(h, g("self_attn.v_proj.weight"), g("self_attn.v_proj.bias")))
        a = (torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1) @ v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + F.linear(a, g("self_attn.out_proj.weight"), g("self_attn.out_proj.bias"))
        h = F.layer_norm(x, (C,), g("layer_norm2.weight"), g("layer_norm2.bias"), eps)
        h = F.linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias"))
        h = h * torch.sigmoid(1.702 * h) if cfg["hidden_act"] == "quick_gelu" else F.gelu(h)
        x = x + F.linear(h, g("mlp.fc2.weight"), g("mlp.fc2.bias"))
        states.append(x)
    last = F.layer_norm(x, (C,), p["text_model.final_layer_norm.weight"], p["text_model.final_layer_norm.bias"], eps)
    proj = None
    if "text_projection.weight" in p:
        eos = ids.argmax(dim=-1)   # the first position of the largest id: the first EOS
        proj = F.linear(last[torch.arange(Bn), eos], p["text_projection.weight"])
    return states, last, proj


class Tokenizers:
    def __init__(self, folder):
        self.ref = tokref.Reference(folder)

    def ids(self, prompts):
        """tokenizer (padded with the end token) and tokenizer_2 (padded with "!", id 0) ids."""
        pad2 = self.ref.vocab["!"]
        one = torch.tensor([self.ref.encode_fixed(s, N_TOK) for s in prompts], dtype=torch.int64)
        two = torch.tensor([self.ref.encode_fixed(s, N_TOK, pad=pad2) for s in prompts], dtype=torch.int64)
        return one, two


def encode_prompt(te1, te2, ids1, ids2, clip_skip=0):
    """pipeline_stable_diffusion_xl.py encode_prompt for given ids: ctx [n, 77, C1 + C2], pooled."""
    s1, _, _ = text_states(te1, TE1_CONFIG, ids1)
    s2, _, pooled = text_states(te2, TE2_CONFIG, ids2)
    return torch.cat([s1[-(clip_skip + 2)], s2[-(clip_skip + 2)]], dim=-1), pooled


# ---- files ---------------------------------------------------------------------------------------

def write_st(path, tensors, metadata=None):
    """{name: (dtype name, tensor)}: F32 / F16 / I64 (tiny.write_safetensors: metadata first)."""
    return tiny.write_safetensors(path, {k: (dt, t.to(torch.float32) if dt != "I64" else t)
                                         for k, (dt, t) in tensors.items()}, metadata)


def write_json(path, obj):
    tiny.write_json(path, obj)


def write_tokenizers(d):
    """tokenizer/: the tiny-sd tokenizer as it is; tokenizer_2/: the same vocabulary, pad_token "!"
    (SDXL's tokenizer_2 pads with it)."""
    for sub in ("tokenizer", "tokenizer_2"):
        os.makedirs(os.path.join(d, sub))
        for fn in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(TINY_TOKENIZER, fn), os.path.join(d, sub, fn))
    for fn in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(d, "tokenizer_2", fn)
        with open(path) as f:
            obj = json.load(f)
        obj["pad_token"] = "!"
        write_json(path, obj)


def te_config_json(cfg, vocab):
    return dict(cfg, vocab_size=vocab)


def unet_sgm_name(name):
    if name.startswith("add_embedding.linear_"):
        i = int(name[len("add_embedding.linear_")])
        return "model.diffusion_model.label_emb.0.%d.%s" % (0 if i == 1 else 2, name.rsplit(".", 1)[1])
    return tiny.unet_ldm_name(name, UNET_CONFIG)


def openclip_tensors(p, cfg):
    """conditioner.embedders.1.model.*: OpenCLIP names, q/k/v fused, text_projection stored as
    [hidden, projection] (x @ text_projection), logit_scale."""
    pre = "conditioner.embedders.1.model."
    out = {pre + "positional_embedding": p["text_model.embeddings.position_embedding.weight"],
           pre + "text_projection": p["text_projection.weight"].t().contiguous(),
           pre + "token_embedding.weight": p["text_model.embeddings.token_embedding.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        hp, op = f"text_model.encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
        out[op + "attn.in_proj_weight"] = torch.cat([p[hp + f"self_attn.{q}_proj.weight"] for q in "qkv"])
        out[op + "attn.in_proj_bias"] = torch.cat([p[hp + f"self_attn.{q}_proj.bias"] for q in "qkv"])
        for h, o in tiny.OPENCLIP_LAYER.items():
            for t in ("weight", "bias"):
                out[f"{op}{o}.{t}"] = p[f"{hp}{h}.{t}"]
    out[pre + "ln_final.weight"] = p["text_model.final_layer_norm.weight"]
    out[pre + "ln_final.bias"] = p["text_model.final_layer_norm.bias"]
    out[pre + "logit_scale"] = torch.tensor(4.6055)
    return out


def write_model(out, unet, vae, te1, te2, vocab):
    d = os.path.join(out, "diffusers")
    if os.path.isdir(d):
        shutil.rmtree(d)
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        os.makedirs(os.path.join(d, sub))
    write_tokenizers(d)
    write_json(os.path.join(d, "model_index.json"), MODEL_INDEX)
    write_json(os.path.join(d, "unet", "config.json"), UNET_CONFIG)
    write_json(os.path.join(d, "vae", "config.json"), VAE_CONFIG)
    write_json(os.path.join(d, "text_encoder", "config.json"), te_config_json(TE1_CONFIG, vocab))
    write_json(os.path.join(d, "text_encoder_2", "config.json"), te_config_json(TE2_CONFIG, vocab))
    write_json(os.path.join(d, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
    sd = unet.state_dict()
    write_st(os.path.join(d, "unet", "diffusion_pytorch_model.safetensors"),
             {k: ("F16", v) for k, v in sd.items()}, {"format": "pt"})
    write_st(os.path.join(d, "vae", "diffusion_pytorch_model.safetensors"),
             {k: ("F32", v) for k, v in vae.items()}, {"format": "pt"})
    write_st(os.path.join(d, "text_encoder", "model.safetensors"),
             {k: ("F32", v) for k, v in te1.items()}, {"format": "pt"})
    names = list(te2.keys())
    half = len(names) // 2
    weight_map, total = {}, 0
    for fname, keys in (("model-00001-of-00002.safetensors", names[:half]),
                        ("model-00002-of-00002.safetensors", names[half:])):
        write_st(os.path.join(d, "text_encoder_2", fname), {k: ("F16", te2[k]) for k in keys}, {"format": "pt"})
        for k in keys:
            weight_map[k] = fname
            total += 2 * te2[k].numel()
    write_json(os.path.join(d, "text_encoder_2", "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})

    # the sgm single file
    sgm = {}
    for k, v in sd.items():
        sgm[unet_sgm_name(k)] = ("F16", v)
    for k, v in te1.items():
        sgm["conditioner.embedders.0.transformer." + k] = ("F16", v)
    sgm["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = (
        "I64", torch.arange(N_TOK, dtype=torch.int64).unsqueeze(0))
    for k, v in openclip_tensors(te2, TE2_CONFIG).items():
        sgm[k] = ("F16", v)
    for k, v in vae.items():
        if ".mid_block.attentions.0.to_" in k and k.endswith(".weight"):
            v = v.reshape(v.shape[0], v.shape[1], 1, 1)   # LDM stores them as 1x1 convs
        sgm[tiny.vae_ldm_name(k, VAE_CONFIG)] = ("F16", v)
    write_st(os.path.join(out, "sdxl.safetensors"), sgm)


# ---- golden cases --------------------------------------------------------------------------------

def time_ids_of(original, crop, target):
    return torch.tensor([list(original) + list(crop) + list(target)], dtype=torch.float64)


def unet_golden(unet, gen, put):
    cfg = UNET_CONFIG
    B, H, W = 2, 8, 12
    sample = f32(torch.randn(B, 4, H, W, generator=gen))
    ctx = f32(torch.randn(B, N_TOK, cfg["cross_attention_dim"], generator=gen))
    text_embeds = f32(torch.randn(B, TE2_CONFIG["projection_dim"], generator=gen))
    timesteps = torch.tensor([999.0, 37.5])
    time_ids = torch.cat([time_ids_of((1024, 768), (0, 0), (1024, 1024)), time_ids_of((13, 700), (32, 5), (96, 80))])
    with torch.no_grad():
        out_base = unet(sample, timesteps, ctx, text_embeds, time_ids)
    for k, v in (("sample", sample), ("timesteps", timesteps), ("ctx", ctx), ("text_embeds", text_embeds),
                 ("time_ids", time_ids), ("out_base", out_base)):
        put("unet." + k, v)
    modules = dict(unet.named_modules())
    leaves = []
    for path in UNET_SPECTRAL:
        layer = modules[path]
        U, S, Vh, delta = unetref.spectral_factors(layer.weight.detach().reshape(layer.weight.shape[0], -1), 1.0, gen)
        d = delta.clone().requires_grad_(True)
        layer.sp = (U, S, Vh, d, 1.0)
        for n, t in (("U", U), ("S", S), ("Vh", Vh), ("delta", delta)):
            put(f"unet.{path}.{n}", t)
        leaves.append(d)
    xs = [sample.clone().requires_grad_(True), ctx.clone().requires_grad_(True),
          text_embeds.clone().requires_grad_(True)]
    out = unet(xs[0], timesteps, xs[1], xs[2], time_ids)
    dout = f32(torch.randn(out.shape, generator=gen))
    grads = torch.autograd.grad((out * dout).sum(), xs + leaves)
    for layer in (modules[p] for p in UNET_SPECTRAL):
        layer.sp = None
    put("unet.out", out)
    put("unet.dout", dout)
    for k, g in zip(("dsample", "dctx", "dtext_embeds"), grads[:3]):
        put("unet." + k, g)
    for path, g in zip(UNET_SPECTRAL, grads[3:]):
        put(f"unet.{path}.ddelta", g)
    print(f"unet: |out_base| max {out_base.abs().max().item():.3g}, |out - out_base| max "
          f"{(out - out_base).abs().max().item():.3g}, |dtext_embeds| max {grads[2].abs().max().item():.3g}",
          file=sys.stderr)


def text_golden(te1, te2, tok, put):
    ids1, ids2 = tok.ids(PROMPTS)
    assert (ids2 == 0).any() and not (ids1 == 0).any()
    for name, p, cfg, ids in (("te", te1, TE1_CONFIG, ids1), ("te2", te2, TE2_CONFIG, ids2)):
        states, last, pooled = text_states(p, cfg, ids)
        put(name + ".ids", ids.to(torch.float64))
        put(name + ".penult", states[-2])
        put(name + ".skip1", states[-3])
        put(name + ".last", last)
        if pooled is not None:
            put(name + ".pooled", pooled)
    ctx, pooled = encode_prompt(te1, te2, ids1, ids2)
    put("prompt.ctx", ctx)
    put("prompt.pooled", pooled)
    ctx1, _ = encode_prompt(te1, te2, ids1, ids2, clip_skip=1)
    put("prompt.ctx_skip1", ctx1)


class _Sched:
    """What gen_pipeline_golden.sampler_for reads of a model: the scheduler config."""
    sched_cfg = SCHEDULER_CONFIG
    schedule = piperef.Model.schedule


def sample_golden(unet, vae, te1, te2, tok, put):
    """StableDiffusionXLPipeline.__call__ with latents from svdiff's seeded stream: encode_prompt
    ([negative; prompt]; zeros for no negative), add_time_ids (_get_add_time_ids; the negative
    rows use the same), latents * init_noise_sigma, per step: cat([x, x]), scale_model_input, UNet
    with added_cond_kwargs, guidance u + g (c - u), Euler step; decode (latents / scaling_factor)."""
    for name, seed, steps, g, height, width, negative, skip, orig, crop, target in RUNS:
        ids1, ids2 = tok.ids([negative or "", PROMPT])
        ctx, pooled = encode_prompt(te1, te2, ids1[1:], ids2[1:], skip)
        if negative is None:
            ctx, pooled = torch.cat([torch.zeros_like(ctx), ctx]), torch.cat([torch.zeros_like(pooled), pooled])
        else:   # the negative prompt is encoded without clip_skip (hidden_states[-2] always)
            nctx, npooled = encode_prompt(te1, te2, ids1[:1], ids2[:1], 0)
            ctx, pooled = torch.cat([nctx, ctx]), torch.cat([npooled, pooled])
        h, w = height // 2, width // 2
        o = orig if orig[0] else (height, width)
        tg = target if target[0] else (height, width)
        tids = time_ids_of(o, crop, tg).expand(2, -1).contiguous()
        init = sampref.Rng(seed).normal((1, 4, h, w)).to(torch.float64)
        s = piperef.sampler_for(_Sched(), "euler", steps)
        x = init * s.init_noise_sigma
        traj = []
        with torch.no_grad():
            for i, t in enumerate(s.timesteps):
                xin = s.scale_model_input(torch.cat([x, x]), i)
                out = unet(xin, torch.full((2,), float(t)), ctx, pooled, tids)
                u, c = out.chunk(2)
                x = s.step(u + g * (c - u), i, x, None)
                traj.append(x.clone())
            image = vaeref.decode(x, vae, VAE_CONFIG)
        for k, v in (("init", init), ("t", s.timesteps.to(torch.float64)), ("traj", torch.stack(traj)),
                     ("latents", x), ("image", image), ("time_ids", tids), ("ctx", ctx), ("pooled", pooled)):
            put(f"{name}.{k}", v)
        print(f"{name}: t {s.timesteps.tolist()}, init_noise_sigma {float(s.init_noise_sigma):.6f}, |latents| max "
              f"{x.abs().max().item():.3g}, image [{image.min().item():.3f}, {image.max().item():.3f}]",
              file=sys.stderr)


def train_time_ids(h, w, res):
    """train_dreambooth_lora_sdxl.py: original (h, w); torchvision Resize(res) (shorter side res,
    longer int(res * long / short)); center crop top / left = max(0, round((h' - res) / 2))."""
    if h <= w:
        h2, w2 = res, int(res * w / h)
    else:
        h2, w2 = int(res * h / w), res
    top, left = max(0, int(round((h2 - res) / 2.0))), max(0, int(round((w2 - res) / 2.0)))
    return [h, w, top, left, res, res]


def effective_weight_nobase(self):
    """The training form U diag(relu(S + s delta)) Vh (gen_train_golden.py)."""
    if self.sp is None:
        return self.weight
    U, S, Vh, delta, s = self.sp
    return ((U * F.relu(S + s * delta)) @ Vh).reshape(self.weight.shape)


def te_shift_paths(cfg, projection):
    paths = ["text_model.embeddings.token_embedding", "text_model.embeddings.position_embedding"]
    for i in range(cfg["num_hidden_layers"]):
        for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                    "mlp.fc2"):
            paths.append(f"text_model.encoder.layers.{i}.{lin}")
    if projection:
        paths.append("text_projection")
    return paths


def train_golden(unet, te1, te2, tok, gen, put):
    """One step as gen_train_golden.py defines it, on SDXL: every UNet conv / linear (add_embedding
    included) in the training form, per-element shifts of every UNet norm gain, text_encoder and
    text_encoder_2 embeddings and linears (text_projection too); ctx = cat of the penultimate states,
    text_embeds = TE2's pooled projection, time_ids per image; loss = MSE(UNet(x_t), eps)."""
    unetref.SpectralMixin.effective_weight = effective_weight_nobase
    for p in unet.parameters():
        p.requires_grad_(False)
    shifts = []   # (name, tensor)
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.Linear, unetref.Conv2d)):
            U, S, Vh = (f32(t) for t in torch.linalg.svd(mod.weight.reshape(mod.weight.shape[0], -1),
                                                         full_matrices=False))
            d = torch.zeros(S.numel(), requires_grad=True)
            mod.sp = (U, S, Vh, d, 1.0)
            shifts.append(("unet/" + path, d))
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.GroupNorm, unetref.LayerNorm)):
            d = torch.zeros(mod.weight.numel(), requires_grad=True)
            mod.shift = (d, 1.0, "element")
            shifts.append(("unet/" + path, d))
    te_svd = []
    for tag, p, cfg in (("te", te1, TE1_CONFIG), ("te2", te2, TE2_CONFIG)):
        for path in te_shift_paths(cfg, tag == "te2"):
            U, S, Vh = (f32(t) for t in torch.linalg.svd(p[path + ".weight"], full_matrices=False))
            d = torch.zeros(S.numel(), requires_grad=True)
            te_svd.append((tag, path, U, S, Vh, d))
            shifts.append((f"{tag}/{path}.weight", d))

    def params(tag, p):
        q = dict(p)
        for t, path, U, S, Vh, d in te_svd:
            if t == tag:
                q[path + ".weight"] = (U * F.relu(S + d)) @ Vh
        return q

    n = len(TRAIN_IMAGES)
    hl = TRAIN_RES // 2
    x0 = f32(0.8 * torch.randn(n, 4, hl, hl, generator=gen))
    eps = f32(torch.randn(n, 4, hl, hl, generator=gen))
    ts = torch.tensor(TRAIN_TIMESTEPS, dtype=torch.int64)
    tids = torch.tensor([train_time_ids(h, w, TRAIN_RES) for h, w in TRAIN_IMAGES], dtype=torch.float64)
    ids1, ids2 = tok.ids([TRAIN_PROMPT] * n)
    betas = torch.linspace(SCHEDULER_CONFIG["beta_start"] ** 0.5, SCHEDULER_CONFIG["beta_end"] ** 0.5,
                           SCHEDULER_CONFIG["num_train_timesteps"], dtype=torch.float32) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0).to(torch.float64)[ts]
    xt = ac.sqrt()[:, None, None, None] * x0 + (1 - ac).sqrt()[:, None, None, None] * eps
    ctx, pooled = encode_prompt(params("te", te1), params("te2", te2), ids1, ids2)
    pred = unet(xt, ts.to(torch.float64), ctx, pooled, tids)
    loss = F.mse_loss(pred, eps)
    grads = torch.autograd.grad(loss, [d for _, d in shifts], allow_unused=True)
    for k, v in (("x0", x0), ("eps", eps), ("timesteps", ts.to(torch.float64)), ("ids1", ids1.to(torch.float64)),
                 ("ids2", ids2.to(torch.float64)), ("time_ids", tids), ("loss", torch.tensor([loss.item()]))):
        put("train." + k, v)
    n_zero = 0
    for (name, d), g in zip(shifts, grads):
        if g is None:   # text_encoder's last layer: not on the path (the context is its penultimate)
            g = torch.zeros_like(d)
        n_zero += int(not g.abs().max().item() > 1e-12)
        put("train.grad." + name, g)
    print(f"train: loss {loss.item():.6f}, time_ids {tids.tolist()}, {len(shifts)} shifts "
          f"({n_zero} with zero gradient)", file=sys.stderr)
    return len(shifts), n_zero


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-out", required=True, help="output folder of the model (tests/fixtures/tiny-sdxl)")
    ap.add_argument("--out", required=True, help="output folder of the golden tensors (tests/fixtures/sdxl)")
    args = ap.parse_args()
    tok = Tokenizers(TINY_TOKENIZER)
    vocab = max(tok.ref.vocab.values()) + 1
    gen = torch.Generator().manual_seed(SEED)
    unet = init_unet(gen)
    vae = {k: v.to(torch.float64) for k, v in tiny.make_params(tiny.vae_tensors(VAE_CONFIG), gen).items()}
    te1 = te_params(dict(TE1_CONFIG, vocab_size=vocab), gen, False)
    te2 = te_params(dict(TE2_CONFIG, vocab_size=vocab), gen, True)
    os.makedirs(args.model_out, exist_ok=True)
    write_model(args.model_out, unet, vae, te1, te2, vocab)

    golden = {}

    def put(key, t):
        assert key not in golden, key
        t = t.detach()
        assert torch.isfinite(t).all(), key
        golden[key] = ("F32", t)

    unet_golden(unet, gen, put)
    text_golden(te1, te2, tok, put)
    sample_golden(unet, vae, te1, te2, tok, put)
    n_shifts, n_zero = train_golden(unet, te1, te2, tok, gen, put)
    os.makedirs(args.out, exist_ok=True)
    meta = {"generator": "tests/reference/gen_sdxl_golden.py", "prompt": PROMPT, "negative_prompt": NEGATIVE,
            "unet_spectral": ",".join(UNET_SPECTRAL),
            "runs": ";".join(",".join(str(x) for x in r) for r in RUNS),
            "train_res": str(TRAIN_RES), "train_images": ";".join(f"{h}x{w}" for h, w in TRAIN_IMAGES),
            "train_prompt": TRAIN_PROMPT, "train_shifts": str(n_shifts), "train_zero_grads": str(n_zero)}
    size = write_st(os.path.join(args.out, "golden.safetensors"), golden, meta)
    total = 0
    for dirpath, _, files in os.walk(args.model_out):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"wrote {args.model_out} ({total} bytes; unet {sum(v.numel() for v in unet.state_dict().values())} params, "
          f"te {sum(v.numel() for v in te1.values())}, te2 {sum(v.numel() for v in te2.values())}) and "
          f"{args.out}/golden.safetensors ({size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
