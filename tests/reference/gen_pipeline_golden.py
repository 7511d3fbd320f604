#!/usr/bin/python3
"""Golden data for tests/test_pipeline.c: whole text-to-image runs of the tiny model
tests/fixtures/tiny-sd/diffusers (tokenizer -> text encoder -> 4 sampler steps with
classifier-free guidance -> VAE decode), computed by the PyTorch reference modules of the
other generators, imported from this folder (no diffusers package is used):

  gen_tokenizer_golden.Reference        the CLIP tokenizer (simple_tokenizer algorithm)
  gen_clip_golden.embed / encoder       CLIPTextModel, last_hidden_state
  gen_unet_golden.UNet2DConditionModel  UNet2DConditionModel
  gen_sampler_golden.Schedule / Sampler the schedule (float32, bit-exact with the C side) and the
                                        DDIM / Euler / DPM-Solver++ 2M steps
  gen_vae_golden.decode / postprocess   AutoencoderKL decode, VaeImageProcessor.postprocess

The weights are read from the model folder by the small safetensors reader below (F32, F16,
BF16, I64), i.e. exactly the values the C side reads; every model's math is float64, and so is
the sampler's step arithmetic (the float32 schedule values -- alphas_cumprod, sigmas -- promoted
to float64), the C side computing in float32. The loop follows diffusers'
StableDiffusionPipeline.__call__: latents = noise * init_noise_sigma; per step the latents are
duplicated [uncond; cond], scaled (scale_model_input), the UNet runs once on the 2B rows,
guidance out = u + g (c - u), scheduler step. Initial noise is svdiff's Philox stream (image k
of a batch: seed + k), re-implemented in gen_sampler_golden.Rng; it is also stored, and the C
test checks both: passing it as init, and drawing it from the seed.

Writes, under --out (tests/fixtures/pipeline/):
  golden.safetensors, keys "<run>.<tensor>" (F32; the run table is repeated in the C test):
    <run>.init     [B, C, h, w]        the initial (unscaled) noise
    <run>.t        [steps]             the sampler's timesteps
    <run>.traj     [steps, B, C, h, w] the latents after each step (what the progress callback sees)
    <run>.latents  [B, C, h, w]        the final latents (= traj[-1])
    <run>.image    [B, 3, H, W]        decoded, before postprocessing (VAE decode; the latents
                                       themselves for the pixel-space model)
    <run>.u8       [B, H, W, 3]        postprocess -> uint8 (integers stored as floats)
    ctx.ids / ctx.hidden               token ids and text-encoder output of [negative, prompt]
  pixel/          a pixel-space model folder without unet/ and tokenizer/: model_index.json
                  (vae [null, null]), scheduler/ (v-prediction, trailing spacing) and a
                  text_encoder/ of hidden size 12 (F16); the C test links in
                  tests/fixtures/unet/pixel/unet (a BF16 pixel UNet) and the tiny-sd tokenizer.

Errors: the C side (float32) is checked against these float64 values at <= 1e-4 relative per
step; the errors measured are in the C test's comments.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_clip_golden as clipref       # noqa: E402
import gen_sampler_golden as sampref    # noqa: E402
import gen_tokenizer_golden as tokref   # noqa: E402
import gen_unet_golden as unetref       # noqa: E402  (sets the default dtype to float64)
import gen_vae_golden as vaeref         # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order: byte-identical output on every run

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TINY = os.path.join(ROOT, "tests", "fixtures", "tiny-sd", "diffusers")
PIXEL_UNET = os.path.join(ROOT, "tests", "fixtures", "unet", "pixel", "unet")

PROMPT = "a photo of a cat sitting on a red chair, highly detailed"
NEGATIVE = "blurry, dark"

# (name, model, sampler, batch, seed, steps, guidance, width, height); the C test has this table.
RUNS = [
    ("ddim", "tiny", "ddim", 2, 1234, 4, 5.0, 16, 16),
    ("dpmpp_2m", "tiny", "dpmpp_2m", 1, 99, 4, 5.0, 16, 16),
    ("euler", "tiny", "euler", 1, 5, 4, 5.0, 16, 16),
    ("pixel_ddim", "pixel", "ddim", 1, 77, 4, 5.0, 8, 8),
]

# The pixel model's own parts: a text encoder matching the pixel UNet's cross_attention_dim 12,
# and a scheduler config that differs from the tiny model's (v-prediction, trailing spacing).
PIXEL_TEXT = dict(hidden_size=12, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
PIXEL_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.21.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "steps_offset": 1, "timestep_spacing": "trailing",
}
PIXEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.21.0",
    "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": [None, None],
}


# ---- reading the model: a small safetensors reader ----------------------------------------------

def read_safetensors(path):
    """name -> tensor: float dtypes (F32, F16, BF16) as float64 holding the stored values exactly,
    I64 as int64."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        raw = data[base + lo:base + hi]
        shape, dt = e["shape"], e["dtype"]
        if dt == "F32":
            t = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).to(torch.float64)
        elif dt == "F16":
            t = torch.from_numpy(np.frombuffer(raw, dtype="<f2").copy()).to(torch.float64)
        elif dt == "BF16":  # the top half of a float32
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            t = torch.from_numpy(bits.view(np.float32).copy()).to(torch.float64)
        elif dt == "I64":
            t = torch.from_numpy(np.frombuffer(raw, dtype="<i8").copy())
        else:
            raise ValueError(f"{path}: {name}: dtype {dt} not handled")
        out[name] = t.reshape(shape)
    return out


def read_component(folder):
    """config.json and the tensors of every .safetensors file in a component folder (the shards
    of a sharded checkpoint, or a lone .fp16 variant file)."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    tensors = {}
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".safetensors"):
            for k, v in read_safetensors(os.path.join(folder, fn)).items():
                assert k not in tensors, k
                tensors[k] = v
    return cfg, tensors


class Model:
    """The parts of a diffusers folder (unet, text_encoder, tokenizer, scheduler, vae) as the
    reference modules want them."""

    def __init__(self, unet_dir, text_dir, tok_dir, scheduler_json, vae_dir=None):
        self.tok = tokref.Reference(tok_dir)
        self.text_cfg, self.text = read_component(text_dir)
        ucfg, uweights = read_component(unet_dir)
        self.unet = unetref.UNet2DConditionModel(ucfg)
        self.unet.load_state_dict(uweights, strict=True)
        self.unet_cfg = ucfg
        with open(scheduler_json) as f:
            self.sched_cfg = json.load(f)
        self.vae = None
        if vae_dir:
            self.vae_cfg, self.vae = read_component(vae_dir)
            # the pipelines' latent <-> image factor: 2^(levels - 1)
            self.scale = 2 ** (len(self.vae_cfg["block_out_channels"]) - 1)
        else:
            self.scale = 1

    def encode(self, prompts):
        """ids [n, 77] (padded with the end token, as SD 1.x) and last_hidden_state [n, 77, C]."""
        ids = torch.tensor([self.tok.encode_fixed(p) for p in prompts], dtype=torch.int64)
        return ids, clipref.encoder(self.text, self.text_cfg, clipref.embed(self.text, ids))

    def schedule(self):
        c = self.sched_cfg
        s = sampref.Schedule(T=c["num_train_timesteps"], beta_start=c["beta_start"], beta_end=c["beta_end"],
                             beta_schedule=c["beta_schedule"], prediction_type=c["prediction_type"],
                             steps_offset=c["steps_offset"], set_alpha_to_one=c["set_alpha_to_one"],
                             clip_sample=c["clip_sample"])
        return s, c.get("timestep_spacing")   # None: each sampler's diffusers default

    def decode(self, latents):
        if self.vae is None:
            return latents
        return vaeref.decode(latents, self.vae, self.vae_cfg)


def sampler_for(model, kind, steps):
    """gen_sampler_golden.Sampler with its float32 schedule values promoted to float64, so the
    step arithmetic is float64 on the same values (the C side: double coefficients, float32
    element updates)."""
    sch, spacing = model.schedule()
    sch.alphas_cumprod = sch.alphas_cumprod.to(torch.float64)
    sch.final_alpha_cumprod = torch.as_tensor(sch.final_alpha_cumprod).to(torch.float64)
    s = sampref.Sampler(kind, sch, steps, spacing)
    if hasattr(s, "sigmas"):
        s.sigmas = s.sigmas.to(torch.float64)
    if kind in ("euler", "euler_a"):   # diffusers' init_noise_sigma, here in float64
        m = float(s.sigmas.max())
        s.init_noise_sigma = m if s.spacing in ("linspace", "trailing") else (m * m + 1) ** 0.5
    return s


def txt2img(model, kind, B, seed, steps, g, width, height):
    """StableDiffusionPipeline.__call__ with latents from svdiff's seeded stream."""
    C = model.unet_cfg["in_channels"]
    h, w = height // model.scale, width // model.scale
    _, ctx2 = model.encode([NEGATIVE, PROMPT])
    ctx = torch.cat([ctx2[:1].expand(B, -1, -1), ctx2[1:].expand(B, -1, -1)])   # [uncond x B; cond x B]
    init = torch.cat([sampref.Rng(seed + k).normal((1, C, h, w)) for k in range(B)]).to(torch.float64)
    s = sampler_for(model, kind, steps)
    x = init * s.init_noise_sigma
    traj = []
    with torch.no_grad():
        for i, t in enumerate(s.timesteps):
            xin = s.scale_model_input(torch.cat([x, x]), i)
            out = model.unet(xin, torch.full((2 * B,), float(t)), ctx)
            u, c = out.chunk(2)
            x = s.step(u + g * (c - u), i, x, None)
            traj.append(x.clone())
        image = model.decode(x)
    u8 = torch.stack([torch.from_numpy(vaeref.postprocess(im.to(torch.float32)).astype(np.float64))
                      for im in image])
    return dict(init=init, t=s.timesteps.to(torch.float64), traj=torch.stack(traj), latents=x, image=image, u8=u8)


def write_pixel_parts(folder, vocab_size):
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(PIXEL_INDEX, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(PIXEL_SCHEDULER, f, indent=2, sort_keys=True)
        f.write("\n")
    cfg = dict(PIXEL_TEXT, vocab_size=vocab_size)
    clipref.GEN = torch.Generator().manual_seed(20240811)   # make_params draws from the module's GEN
    params = {k: clipref.f16(v) for k, v in clipref.make_params(cfg).items()}
    return clipref.write_text_encoder(os.path.join(folder, "text_encoder"), cfg, params, "F16", False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/pipeline)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pixel_dir = os.path.join(args.out, "pixel")
    vocab = max(tokref.Reference(os.path.join(TINY, "tokenizer")).vocab.values()) + 1
    size = write_pixel_parts(pixel_dir, vocab)

    models = {
        "tiny": Model(os.path.join(TINY, "unet"), os.path.join(TINY, "text_encoder"), os.path.join(TINY, "tokenizer"),
                      os.path.join(TINY, "scheduler", "scheduler_config.json"), os.path.join(TINY, "vae")),
        "pixel": Model(PIXEL_UNET, os.path.join(pixel_dir, "text_encoder"), os.path.join(TINY, "tokenizer"),
                       os.path.join(pixel_dir, "scheduler", "scheduler_config.json")),
    }
    golden = {}
    ids, hidden = models["tiny"].encode([NEGATIVE, PROMPT])
    golden["ctx.ids"] = ids.to(torch.float64)
    golden["ctx.hidden"] = hidden
    for name, mname, kind, B, seed, steps, g, width, height in RUNS:
        r = txt2img(models[mname], kind, B, seed, steps, g, width, height)
        for k, v in r.items():
            golden[f"{name}.{k}"] = v
        traj = r["traj"]
        print(f"{name}: t {r['t'].tolist()}, |latents| max per step "
              f"{[round(float(s.abs().max()), 3) for s in traj]}, image range "
              f"[{float(r['image'].min()):.3f}, {float(r['image'].max()):.3f}]", file=sys.stderr)
    for k, v in golden.items():
        assert torch.isfinite(v).all(), k
    meta = {"generator": "tests/reference/gen_pipeline_golden.py", "prompt": PROMPT, "negative_prompt": NEGATIVE,
            "runs": ";".join(",".join(str(x) for x in r) for r in RUNS)}
    size += sampref.write_safetensors(os.path.join(args.out, "golden.safetensors"), golden, meta)
    print(f"wrote {args.out}: {size} bytes of safetensors", file=sys.stderr)


if __name__ == "__main__":
    main()
