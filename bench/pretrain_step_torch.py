#!/usr/bin/env python3
"""One full-weight pretraining step of the default model in PyTorch on the CPU, the reference
side of bench/run_pretrain_step.sh: the same architecture as `svdiff init --config CONFIG`
(bench/recipe_sweep.py's build_model: the repository's reference UNet and CLIP text encoder),
batch B of random 32x32 images in [-1, 1], random token ids filling the whole context, random
timesteps and noise, v-prediction MSE, backward through every weight, grad-norm clip 1, AdamW,
and the EMA update of every weight (what `svdiff pretrain --ema-decay` does per step).

    /usr/bin/python3 bench/pretrain_step_torch.py [--config configs/default-model.json]
        [--batch 32] [--reps 5] [--threads N]

Prints one line per timed step and a final
    RESULT side=torch case=pretrain_step batch=B ctx=T threads=N median_s=S peak_rss_mb=M
(median of --reps steps after one untimed warm-up step; peak RSS of the whole process).
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "default-model.json"))
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "emoji-32", "tokenizer"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    import torch
    sys.path.insert(0, HERE)
    import recipe_sweep as rs
    rs.MODEL_CONFIG = os.path.abspath(args.config)   # build_model reads the architecture from here
    with open(os.path.join(args.tokenizer, "vocab.json")) as f:
        vocab = len(json.load(f))
    torch.manual_seed(args.seed)
    model = rs.build_model(vocab, seed=args.seed)
    torch.set_num_threads(args.threads)   # after build_model: the references reset it on import
    with open(args.config) as f:
        cfg = json.load(f)
    T = int(cfg["text_encoder"]["max_position_embeddings"])
    res = int(cfg["unet"]["sample_size"])
    B = args.batch

    ac = torch.from_numpy(rs.alphas_cumprod_f32())
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    ema = [q.detach().clone() for q in params]
    g = torch.Generator().manual_seed(args.seed)

    def step():
        x0 = torch.rand(B, 3, res, res, generator=g) * 2 - 1
        ids = torch.randint(0, vocab, (B, T), generator=g)
        t = torch.randint(0, 1000, (B,), generator=g)
        noise = torch.randn(B, 3, res, res, generator=g)
        sa = ac[t].sqrt().view(-1, 1, 1, 1)
        sb = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
        xt = sa * x0 + sb * noise
        target = sa * noise - sb * x0
        t0 = time.perf_counter()
        loss = (model(xt, t.float(), ids) - target).pow(2).mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(ema, 0.999)
            torch._foreach_add_(ema, [q.detach() for q in params], alpha=0.001)
        return time.perf_counter() - t0, float(loss)

    n_params = sum(q.numel() for q in params)
    print(f"torch {torch.__version__}, {args.threads} threads, {n_params:,} parameters, batch {B}, "
          f"{res}x{res}, context {T}", flush=True)
    step()  # warm-up (allocator, first-touch)
    times = []
    for i in range(args.reps):
        s, loss = step()
        times.append(s)
        print(f"step {i + 1}: {s:.3f} s, loss {loss:.4f}", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"RESULT side=torch case=pretrain_step batch={B} ctx={T} threads={args.threads} "
          f"median_s={statistics.median(times):.3f} peak_rss_mb={peak_mb:.0f}", flush=True)


if __name__ == "__main__":
    main()
