#!/usr/bin/python3
"""Golden values for tests/test_train.c: one spectral-shift training step of the tiny Stable
Diffusion model (tests/fixtures/tiny-sd/diffusers) with prior preservation and text-encoder shifts,
then five AdamW steps, computed in float64 with PyTorch autograd.

The model is the torch re-implementation of gen_unet_golden.py (UNet) and gen_clip_golden.py (text
encoder), imported, not copied, with the weights read from the fixture folder. What is trained,
as src/train/trainer.c does it:
  - every UNet conv / linear in the training form without the base, W_eff = U diag(relu(S + delta)) Vh,
    from the float32-rounded thin SVD of the stored weight (the factors are written to the fixture
    and the C test installs them with weight_make_spectral_from, so both sides use the same ones);
  - a per-element shift of every UNet GroupNorm / LayerNorm gain (gain = gamma + delta);
  - the text encoder's token and position embeddings and q / k / v / out_proj / fc1 / fc2 the same
    way (no text-encoder norm shifts).
Inputs are fixed and stored (the C test bypasses data loading and the RNG): clean latents x0, noise
eps, integer timesteps and token ids for 2 instance rows and 2 class rows. The step:
  x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps  (a = diffusers' float32 alphas_cumprod), target eps;
  pred = UNet(x_t, t, CLIP(ids));  loss = MSE(pred[:2], eps[:2]) + W * MSE(pred[2:], eps[2:]);
  clip_grad_norm_(all shifts, 1.0); AdamW groups [deltas: LR], [norm shifts: LR_1D], betas
  (0.9, 0.999), eps 1e-8, weight decay 1e-2; the same inputs at every step.
LR and LR_1D are larger than the training defaults so that five steps move the loss well beyond
the test's tolerance (the test must be able to fail).

Writes tests/fixtures/train/golden.safetensors (F32 unless noted):
  x0, eps [4, 4, 8, 8]; timesteps [4] (I64); ids [4, 77] (I64)
  svd/<name>.U / .S / .Vt      factors; <name> is the C trainer's parameter name ("unet/<module
                               path>", "te/<module path>")
  <name>.grad                  d loss / d shift at zero shifts (before clipping)
  <name>.final                 the shift after five AdamW steps
  losses [6]                   loss before each of the five updates and after the last
  loss_parts [2]               instance and prior MSE of the first step
metadata: n_inst, n_class, prior_loss_weight, lr, lr_1d, max_grad_norm, steps.
Also tests/fixtures/train/images/: two small PNGs (20 x 24 and 16 x 16) and a caption file for the
second, the instance folder of the `svdiff train` command-line test in CMakeLists.txt.
"""
import argparse
import json
import math
import os
import struct
import sys
import zlib

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_clip_golden as clipref  # noqa: E402
import gen_unet_golden as unetref  # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

N_INST, N_CLASS = 2, 2
PRIOR_W = 0.75
LR, LR_1D = 2e-2, 5e-3
MAX_GRAD_NORM = 1.0
STEPS = 5
T_TOKENS = 77
TIMESTEPS = [17, 503, 999, 250]
SEED = 4242


def f32(x):
    return x.detach().to(torch.float32).to(torch.float64)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    dts = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=dts[info["dtype"]]).reshape(info["shape"])
        out[name] = t.to(torch.float64) if t.is_floating_point() else t
    return out


def load_model_folder(root):
    unet_cfg = json.load(open(os.path.join(root, "unet", "config.json")))
    unet_w = read_safetensors(os.path.join(root, "unet", "diffusion_pytorch_model.safetensors"))
    te_cfg = json.load(open(os.path.join(root, "text_encoder", "config.json")))
    index = json.load(open(os.path.join(root, "text_encoder", "model.safetensors.index.json")))
    te_w = {}
    for shard in sorted(set(index["weight_map"].values())):
        te_w.update(read_safetensors(os.path.join(root, "text_encoder", shard)))
    vocab = json.load(open(os.path.join(root, "tokenizer", "vocab.json")))
    sched = json.load(open(os.path.join(root, "scheduler", "scheduler_config.json")))
    return unet_cfg, unet_w, te_cfg, te_w, vocab, sched


def effective_weight_nobase(self):
    """The training form: U diag(relu(S + s delta)) Vh, the dense base not used."""
    if self.sp is None:
        return self.weight
    U, S, Vh, delta, s = self.sp
    return ((U * F.relu(S + s * delta)) @ Vh).reshape(self.weight.shape)


def svd_f32(W2d):
    U, S, Vh = torch.linalg.svd(W2d, full_matrices=False)
    return f32(U), f32(S), f32(Vh)


def alphas_cumprod(sched):
    """diffusers DDPM-family schedule, float32 as diffusers builds it."""
    T = sched["num_train_timesteps"]
    assert sched["beta_schedule"] == "scaled_linear"
    betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, T, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def write_png(path, w, h, gen):
    """An 8-bit RGB PNG (no PIL needed): smooth gradients plus noise, fixed zlib level."""
    y = torch.arange(h, dtype=torch.float64)[:, None, None]
    x = torch.arange(w, dtype=torch.float64)[None, :, None]
    k = torch.arange(3, dtype=torch.float64)[None, None, :]
    a, b = torch.rand(2, generator=gen).tolist()
    v = 127.5 + 100 * torch.sin(6 * a * x / w + 5 * b * y / h + 2 * k) + 20 * (torch.rand(h, w, 3, generator=gen) - 0.5)
    px = v.clamp(0, 255).to(torch.uint8)
    raw = b"".join(b"\x00" + bytes(px[r].reshape(-1).tolist()) for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="tests/fixtures/tiny-sd/diffusers")
    ap.add_argument("--out", required=True, help="output folder (tests/fixtures/train)")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(SEED)
    unet_cfg, unet_w, te_cfg, te_w, vocab, sched = load_model_folder(args.model)

    # ---- UNet in the training form
    unetref.SpectralMixin.effective_weight = effective_weight_nobase
    unet = unetref.UNet2DConditionModel(unet_cfg)
    unet.load_state_dict(unet_w, strict=True)
    for p in unet.parameters():
        p.requires_grad_(False)
    svd = {}        # name -> (U, S, Vh)
    deltas = []     # (name, tensor, group)
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.Linear, unetref.Conv2d)):
            U, S, Vh = svd_f32(mod.weight.reshape(mod.weight.shape[0], -1))
            d = torch.zeros(S.numel(), requires_grad=True)
            mod.sp = (U, S, Vh, d, 1.0)
            svd["unet/" + path] = (U, S, Vh)
            deltas.append(("unet/" + path, d, 0))
    for path, mod in unet.named_modules():
        if isinstance(mod, (unetref.GroupNorm, unetref.LayerNorm)):
            d = torch.zeros(mod.weight.numel(), requires_grad=True)
            mod.shift = (d, 1.0, "element")
            deltas.append(("unet/" + path, d, 1))

    # ---- text encoder in the training form (linears and embeddings)
    te_paths = ["text_model.embeddings.token_embedding", "text_model.embeddings.position_embedding"]
    for i in range(te_cfg["num_hidden_layers"]):
        for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                    "mlp.fc2"):
            te_paths.append(f"text_model.encoder.layers.{i}.{lin}")
    te_deltas = {}
    for path in te_paths:
        U, S, Vh = svd_f32(te_w[path + ".weight"])
        d = torch.zeros(S.numel(), requires_grad=True)
        svd["te/" + path] = (U, S, Vh)
        te_deltas[path] = d
        deltas.append(("te/" + path + ".weight", d, 0))

    def te_params():
        p = dict(te_w)
        for path, d in te_deltas.items():
            U, S, Vh = svd["te/" + path]
            p[path + ".weight"] = (U * F.relu(S + d)) @ Vh
        return p

    # ---- fixed inputs
    rows = N_INST + N_CLASS
    C, H = unet_cfg["in_channels"], 8
    x0 = f32(0.8 * torch.randn(rows, C, H, H, generator=gen))
    eps = f32(torch.randn(rows, C, H, H, generator=gen))
    ts = torch.tensor(TIMESTEPS, dtype=torch.int64)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    ids = []
    for r, n in enumerate([5, 7, 4, 4]):
        body = torch.randint(0, 256 + 300, (n,), generator=gen).tolist()
        if r == 3:
            body = ids[2][1:1 + n]          # the two class rows share a prompt
        row = [bos] + body + [eos]
        ids.append(row + [eos] * (T_TOKENS - len(row)))
    ids = torch.tensor(ids, dtype=torch.int64)
    ac = alphas_cumprod(sched).to(torch.float64)[ts]
    xt = ac.sqrt()[:, None, None, None] * x0 + (1 - ac).sqrt()[:, None, None, None] * eps
    assert sched.get("prediction_type", "epsilon") == "epsilon"

    def loss_fn():
        p = te_params()
        hidden = clipref.encoder(p, te_cfg, clipref.embed(p, ids))
        pred = unet(xt, ts.to(torch.float64), hidden)
        li = F.mse_loss(pred[:N_INST], eps[:N_INST])
        lc = F.mse_loss(pred[N_INST:], eps[N_INST:])
        return li + PRIOR_W * lc, li, lc

    params = [d for _, d, _ in deltas]
    loss, li, lc = loss_fn()
    grads = torch.autograd.grad(loss, params)
    golden = {"x0": ("F32", x0), "eps": ("F32", eps), "timesteps": ("I64", ts), "ids": ("I64", ids)}
    for name, (U, S, Vh) in svd.items():
        golden[f"svd/{name}.U"] = ("F32", U)
        golden[f"svd/{name}.S"] = ("F32", S)
        golden[f"svd/{name}.Vt"] = ("F32", Vh)
    for (name, _, _), g in zip(deltas, grads):
        assert torch.isfinite(g).all(), name
        golden[name + ".grad"] = ("F32", g)
    golden["loss_parts"] = ("F32", torch.tensor([li.item(), lc.item()]))

    opt = torch.optim.AdamW([{"params": [d for _, d, g in deltas if g == 0], "lr": LR},
                             {"params": [d for _, d, g in deltas if g == 1], "lr": LR_1D}],
                            betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, foreach=False)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss, _, _ = loss_fn()
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
    with torch.no_grad():
        losses.append(loss_fn()[0].item())
    golden["losses"] = ("F32", torch.tensor(losses))
    for name, d, _ in deltas:
        golden[name + ".final"] = ("F32", d.detach())

    os.makedirs(args.out, exist_ok=True)
    meta = {"generator": "tests/reference/gen_train_golden.py", "n_inst": str(N_INST), "n_class": str(N_CLASS),
            "prior_loss_weight": repr(PRIOR_W), "lr": repr(LR), "lr_1d": repr(LR_1D),
            "max_grad_norm": repr(MAX_GRAD_NORM), "steps": str(STEPS), "n_params": str(len(deltas))}
    size = clipref.write_safetensors(os.path.join(args.out, "golden.safetensors"), golden, meta)
    images = os.path.join(args.out, "images")
    os.makedirs(images, exist_ok=True)
    img_gen = torch.Generator().manual_seed(SEED + 1)
    write_png(os.path.join(images, "dog1.png"), 20, 24, img_gen)
    write_png(os.path.join(images, "dog2.png"), 16, 16, img_gen)
    with open(os.path.join(images, "dog2.txt"), "w") as f:
        f.write("a photo of sks dog on the grass\n")
    print(f"wrote {args.out}/golden.safetensors: {size} bytes, {len(deltas)} shift arrays, "
          f"losses {' '.join('%.6f' % l for l in losses)}")


if __name__ == "__main__":
    main()
