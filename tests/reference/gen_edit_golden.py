#!/usr/bin/python3
"""Golden data for tests/test_edit.c: the single-image editing chain of `svdiff edit`
(src/pipeline/edit.h) on the tiny latent model tests/fixtures/tiny-sd/diffusers and on the
pixel-space model of tests/fixtures/pipeline/pixel (+ tests/fixtures/unet/pixel/unet), reusing the
PyTorch reference modules that gen_pipeline_golden.py assembles (gen_pipeline_golden.Model,
sampler_for: the UNet, text encoder, tokenizer, VAE and the DDIM / DDIM-inverse steps of
gen_sampler_golden.Sampler, float64 math on the stored weights):

  1. x0: a fixed uint8 image -> VaeImageProcessor.preprocess ([-1, 1]) -> AutoencoderKL encode ->
     the posterior's mode (mean - shift) * scaling_factor (the pixels themselves without a VAE);
  2. DDIM inversion (diffusers' DDIMInverseScheduler, as StableDiffusionPix2PixZeroPipeline.invert /
     StableDiffusionDiffEditPipeline.invert use it) of x0, guidance 1, conditioned on PROMPT:
     per step the UNet at the step's (target) timestep on the current latent, then the inverse
     step; every step's latent is stored;
  3. DDIM sampling (eta 0) of PROMPT back from the inverted latent with guidance 1 (the
     reconstruction), and of EDIT with guidance 3 against the empty prompt (an edit).

Writes --out/golden.safetensors (tests/fixtures/edit/), keys "<run>.<tensor>" (F32):
  <run>.image   [H, W, 3]          the input image (uint8 values stored as floats)
  <run>.x0      [1, C, h, w]       its clean latents
  <run>.t       [steps]            the inverse timesteps (ascending)
  <run>.traj    [steps, 1, C, h, w] the latent after each inversion step
  <run>.recon   [1, C, h, w]       PROMPT sampled back, guidance 1 (final latents)
  <run>.edit    [1, C, h, w]       EDIT sampled from the inverted latent, guidance 3 (final latents)
"""
import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_pipeline_golden as pipe      # noqa: E402  (sets the default dtype to float64)
import gen_sampler_golden as sampref    # noqa: E402
import gen_vae_golden as vaeref         # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order: byte-identical output on every run

PROMPT = "an emoji of grinning face"
EDIT = "an emoji of grinning face with heart eyes"
EDIT_CFG = 3.0

# (name, model, resolution, steps, image seed); the C test has this table.
RUNS = [
    ("tiny", "tiny", 16, 5, 11),
    ("pixel", "pixel", 8, 4, 12),
]


def clean_latents(model, u8):
    x = vaeref.preprocess(u8[None]).to(torch.float64)    # float32 preprocessing, as the C side
    if model.vae is None:
        return x
    mean, logvar = vaeref.encode(x, model.vae, model.vae_cfg)
    return vaeref.latents_of(mean, logvar, torch.zeros_like(mean), model.vae_cfg)


def sample(model, x, prompt, steps, g):
    """StableDiffusionPipeline's loop with DDIM (eta 0) from latents x; guidance g against ""."""
    s = pipe.sampler_for(model, "ddim", steps)
    _, ctx2 = model.encode(["", prompt])
    with torch.no_grad():
        for i, t in enumerate(s.timesteps):
            if g > 1:
                out = model.unet(torch.cat([x, x]), torch.full((2,), float(t)), ctx2)
                u, c = out.chunk(2)
                out = u + g * (c - u)
            else:
                out = model.unet(x, torch.full((1,), float(t)), ctx2[1:])
            x = s.step(out, i, x, None)
    return x


def run(model, res, steps, image_seed):
    gen = torch.Generator().manual_seed(image_seed)
    u8 = torch.randint(0, 256, (res, res, 3), generator=gen, dtype=torch.int64).numpy().astype(np.uint8)
    x0 = clean_latents(model, u8)
    s = pipe.sampler_for(model, "ddim_inverse", steps)
    _, ctx = model.encode([PROMPT])
    x, traj = x0.clone(), []
    with torch.no_grad():
        for i, t in enumerate(s.timesteps):
            out = model.unet(x, torch.full((1,), float(t)), ctx)
            x = s.step(out, i, x, None)
            traj.append(x.clone())
    return dict(image=torch.from_numpy(u8.astype(np.float64)), x0=x0, t=s.timesteps.to(torch.float64),
                traj=torch.stack(traj), recon=sample(model, x.clone(), PROMPT, steps, 1.0),
                edit=sample(model, x.clone(), EDIT, steps, EDIT_CFG))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/edit)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tiny, pixel_dir = pipe.TINY, os.path.join(pipe.ROOT, "tests", "fixtures", "pipeline", "pixel")
    models = {
        "tiny": pipe.Model(os.path.join(tiny, "unet"), os.path.join(tiny, "text_encoder"),
                           os.path.join(tiny, "tokenizer"), os.path.join(tiny, "scheduler", "scheduler_config.json"),
                           os.path.join(tiny, "vae")),
        "pixel": pipe.Model(pipe.PIXEL_UNET, os.path.join(pixel_dir, "text_encoder"), os.path.join(tiny, "tokenizer"),
                            os.path.join(pixel_dir, "scheduler", "scheduler_config.json")),
    }
    golden = {}
    for name, mname, res, steps, seed in RUNS:
        r = run(models[mname], res, steps, seed)
        for k, v in r.items():
            assert torch.isfinite(v).all(), (name, k)
            golden[f"{name}.{k}"] = v
        err = float((r["recon"] - r["x0"]).abs().max() / r["x0"].abs().max())
        print(f"{name}: t {r['t'].tolist()}, |traj| max per step {[round(float(s.abs().max()), 3) for s in r['traj']]}, "
              f"reconstruction rel error {err:.3e}", file=sys.stderr)
    meta = {"generator": "tests/reference/gen_edit_golden.py", "prompt": PROMPT, "edit": EDIT,
            "edit_cfg": str(EDIT_CFG), "runs": ";".join(",".join(str(x) for x in r) for r in RUNS)}
    size = sampref.write_safetensors(os.path.join(args.out, "golden.safetensors"), golden, meta)
    print(f"wrote {args.out}: {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
