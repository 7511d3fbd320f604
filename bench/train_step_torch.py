#!/usr/bin/python3
"""PyTorch CPU side of the training-step benchmark (bench/train_step.c): one SVDiff step in the
svdiff-pytorch formulation on the same SD 1.5 weights. The weights go into the torch
re-implementation of diffusers' UNet2DConditionModel in tests/reference/gen_unet_golden.py
(float32, loaded by bench/unet_torch.py's load_unet); every Conv2d / Linear gets U, S, Vh from one
torch.linalg.svd of its [out, in*k*k] matrix (timed: PyTorch's one-time SVD) and a zero delta,
and its forward rebuilds W = U @ diag(relu(S + delta)) @ Vh every call, as svdiff-pytorch's
SVDConv2d / SVDLinear do (the dense weight stays in memory there too; --drop-dense frees it).
Every GroupNorm / LayerNorm gain gets a per-element shift (gain = gamma + delta), as svdiff's
step. Loss = MSE(UNet(noisy latents), noise); autograd to the deltas and shifts; gradients
clipped to norm 1; torch.optim.AdamW (1e-3 deltas, 1e-6 norm shifts, decay 1e-2).

    /usr/bin/python3 bench/train_step_torch.py --model DIR [--hw 32] [--reps N] [--threads N]
        [--random-factors (random orthonormal U, Vh instead of the SVD: timing only)] [--drop-dense]
        [--full (plain full fine-tune for scale: no factors, gradients of every weight, no optimizer;
                 RESULT case=full32 / full64)]

Peak RSS: VmHWM of /proc/self/status, reset (clear_refs) just before the first step like the C
side, so "step peak" excludes the set-up; the set-up peak and getrusage's whole-life peak are
printed too. Prints a RESULT line that bench/run_train_step.sh reads.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
sys.path.insert(0, HERE)
import gen_unet_golden as g  # noqa: E402
import unet_torch  # noqa: E402  (float32 default dtype, float32 timestep features, load_unet)


def status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return -1.0


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def svdiff_pytorch_weight(self):
    """svdiff-pytorch's SVDLinear / SVDConv2d forward: U @ diag(relu(S + scale * delta)) @ Vh."""
    U, S, Vh = self.svd_U, self.svd_S, self.svd_Vh
    W = U @ torch.diag(F.relu(S + self.delta)) @ Vh
    return W.reshape(self.w_shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--reps", type=int, default=0, help="timed steps (default 2 at 32x32, else 1)")
    ap.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default 1 at 32x32, else 0)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--random-factors", action="store_true",
                    help="random orthonormal U, Vh and random S instead of the SVD (same shapes and cost per step)")
    ap.add_argument("--drop-dense", action="store_true", help="free the dense weights (svdiff-pytorch keeps them)")
    ap.add_argument("--full", action="store_true",
                    help="plain full fine-tune forward + backward (dense weights, every gradient, no optimizer step)")
    args = ap.parse_args()
    reps = args.reps or (2 if args.hw == 32 else 1)
    warmup = args.warmup if args.warmup >= 0 else (1 if args.hw == 32 else 0)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"PyTorch {torch.__version__} CPU, {torch.get_num_threads()} threads, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, {args.hw}x{args.hw} latents, batch 1", flush=True)

    t0 = time.perf_counter()
    model, cfg, n_params = unet_torch.load_unet(args.model)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"loaded in {time.perf_counter() - t0:.1f} s: {n_params} parameters (float32), RSS {status_mb('VmRSS'):.0f} MB",
          flush=True)

    # ---- one-time factorisation ----
    if not args.full:
        g.SpectralMixin.effective_weight = svdiff_pytorch_weight   # Linear and Conv2d inherit it
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (g.Linear, g.Conv2d))]
    if args.full:   # no factors: the plain fine-tune trains the dense weights themselves
        layers = []
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, (g.GroupNorm, g.LayerNorm))]
    deltas, shifts = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, (name, m) in enumerate(layers):
            W2 = m.weight.reshape(m.weight.shape[0], -1)
            rows, cols = W2.shape
            if args.random_factors:
                r = min(rows, cols)
                U = torch.linalg.qr(torch.randn(rows, r))[0]
                Vh = torch.linalg.qr(torch.randn(cols, r))[0].T.contiguous()
                S = torch.sort(torch.rand(r) * W2.norm() / math.sqrt(r), descending=True)[0]
            else:
                U, S, Vh = torch.linalg.svd(W2, full_matrices=False)
            m.svd_U, m.svd_S, m.svd_Vh = U, S, Vh
            m.w_shape = tuple(m.weight.shape)
            m.delta = torch.nn.Parameter(torch.zeros_like(S))
            deltas.append(m.delta)
            if args.drop_dense:
                m.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
            if (i + 1) % 50 == 0 or i + 1 == len(layers):
                print(f"  factored {i + 1}/{len(layers)} layers, {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                      flush=True)
    t_svd = time.perf_counter() - t0
    for name, m in norms:
        if args.full:
            break
        d = torch.nn.Parameter(torch.zeros(m.weight.shape[0]))
        m.shift = (d, 1.0, "element")
        shifts.append(d)
    if args.full:
        for p in model.parameters():
            p.requires_grad_(True)
        deltas = list(model.parameters())
    n_delta = sum(d.numel() for d in deltas)
    factors_mb = sum(m.svd_U.numel() + m.svd_S.numel() + m.svd_Vh.numel() for _, m in layers) * 4 / 1048576
    print(f"{'random factors' if args.random_factors else 'SVD'} of {len(layers)} layers in {t_svd:.1f} s; "
          f"factors {factors_mb:.0f} MB; {n_delta} deltas, {len(norms)} norm shifts; dense weights "
          f"{'dropped' if args.drop_dense else 'kept (as svdiff-pytorch)'}", flush=True)

    opt = None if args.full else torch.optim.AdamW([{"params": deltas, "lr": 1e-3}, {"params": shifts, "lr": 1e-6}],
                                                   lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    with open(os.path.join(args.model, "scheduler", "scheduler_config.json")) as f:
        sc = json.load(f)
    Tn = sc.get("num_train_timesteps", 1000)
    if sc.get("beta_schedule") == "scaled_linear":
        betas = torch.linspace(sc["beta_start"] ** 0.5, sc["beta_end"] ** 0.5, Tn) ** 2
    else:
        betas = torch.linspace(sc["beta_start"], sc["beta_end"], Tn)
    abar = torch.cumprod(1 - betas, 0)

    T, hw = 77, args.hw
    rss_before, setup_peak = status_mb("VmRSS"), status_mb("VmHWM")
    print(f"before the step: RSS {rss_before:.0f} MB, set-up peak {setup_peak:.0f} MB", flush=True)
    reset_hwm()
    tf, tb, to, tt = [], [], [], []
    loss_v = gnorm = first = 0.0
    for k in range(warmup + reps):
        x0 = torch.randn(1, cfg["in_channels"], hw, hw)
        eps = torch.randn_like(x0)
        ctx = torch.randn(1, T, cfg["cross_attention_dim"])
        t = torch.randint(0, Tn, (1,))
        a0 = time.perf_counter()
        a = abar[t].reshape(1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        out = model(xt, t.to(torch.float32), ctx)
        loss = F.mse_loss(out, eps)
        a1 = time.perf_counter()
        loss.backward()
        a2 = time.perf_counter()
        if opt:
            gnorm = torch.nn.utils.clip_grad_norm_(deltas + shifts, 1.0).item()
            opt.step()
            opt.zero_grad()
        else:   # full fine-tune: forward + backward only (the gradients are dropped)
            for p in deltas:
                p.grad = None
        a3 = time.perf_counter()
        loss_v = loss.item()
        del out, loss
        first = first or a3 - a0
        if k >= warmup:
            tf.append(a1 - a0), tb.append(a2 - a1), to.append(a3 - a2), tt.append(a3 - a0)
        print(f"  step {k + 1}{' (warm-up)' if k < warmup else ''} (t={t.item()}): forward {a1 - a0:.2f} s, "
              f"backward {a2 - a1:.2f} s, AdamW {a3 - a2:.3f} s, "
              f"loss {loss_v:.5g}, grad norm {gnorm:.4g}", file=sys.stderr, flush=True)
    dmax = max(d.abs().max().item() for d in deltas)
    med = statistics.median
    print(f"RESULT side=torch case={'full' if args.full else 'train'}{hw} B=1 H={hw} T={T} reps={reps} warmup={warmup} first_s={first:.3f} "
          f"median_s={med(tt):.3f} "
          f"times={','.join(f'{x:.3f}' for x in tt)} fwd_s={med(tf):.3f} bwd_s={med(tb):.3f} opt_s={med(to):.4f} "
          f"peak_rss_mb={status_mb('VmHWM'):.0f} setup_peak_mb={setup_peak:.0f} rss_before_mb={rss_before:.0f} "
          f"life_peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} factors_mb={factors_mb:.0f} "
          f"svd_s={t_svd:.1f} random_factors={int(args.random_factors)} dense_kept={int(not args.drop_dense)} "
          f"loss={loss_v:.5g} grad_norm={gnorm:.4g} max_delta={dmax:.3g}", flush=True)


if __name__ == "__main__":
    main()
