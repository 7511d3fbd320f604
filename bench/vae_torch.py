#!/usr/bin/python3
"""PyTorch CPU side of the VAE decode benchmark (bench/vae.c --model): the VAE of a model folder
(the random SD 1.5 of bench/run_all.sh) in the torch re-implementation of diffusers' AutoencoderKL
in tests/reference/gen_vae_golden.py, float32, torch.no_grad, one latent [1, 4, h, w] (64x64 =
512 px) decoded --reps times (no warm-up, as the C side); median time, peak RSS (ru_maxrss:
the whole process) and the FLOP count of the decode (convolutions, attention, linears; the C
side is timed against the same count). Prints a RESULT line that bench/run_all.sh reads.

    /usr/bin/python3 bench/vae_torch.py --model DIR [--latent 64] [--reps 1] [--threads N]
"""
import argparse
import json
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
import gen_vae_golden as g  # noqa: E402
import unet_torch  # noqa: E402  (read_safetensors)

torch.set_default_dtype(torch.float32)   # gen_vae_golden sets float64 and one thread for its fixtures

FLOPS = [0.0]
_conv = g.conv


def counting_conv(x, p, name, stride=1, padding=1):
    y = _conv(x, p, name, stride=stride, padding=padding)
    w = p[name + ".weight"]
    FLOPS[0] += 2.0 * y.numel() * w.shape[1] * w.shape[2] * w.shape[3]
    return y


_attention = g.attention


def counting_attention(x, p, name, G):
    b, c, h, w = x.shape
    t = h * w
    FLOPS[0] += 2.0 * b * t * c * c * 4 + 2.0 * b * t * t * c * 2   # q, k, v, out projections; QK^T, PV
    return _attention(x, p, name, G)


g.conv = counting_conv
g.attention = counting_attention


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(os.path.join(args.model, "vae", "config.json")) as f:
        cfg = json.load(f)
    files = [os.path.join(args.model, "vae", f"diffusion_pytorch_model{v}.safetensors") for v in ("", ".fp16")]
    p = unet_torch.read_safetensors(next((f for f in files if os.path.exists(f)), files[0]))
    p = {k: v for k, v in p.items() if k.startswith(("decoder.", "post_quant_conv."))}
    torch.manual_seed(1)
    lat = torch.rand(1, cfg.get("latent_channels", 4), args.latent, args.latent) * 2 - 1
    times = []
    with torch.no_grad():
        for _ in range(args.reps):
            FLOPS[0] = 0.0
            t0 = time.perf_counter()
            img = g.decode(lat, p, cfg)
            times.append(time.perf_counter() - t0)
    H = img.shape[-1]
    med = statistics.median(times)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads: VAE decode {args.latent}x{args.latent} -> "
          f"{H}x{H} in {med:.2f} s (median of {args.reps}), {FLOPS[0] / 1e9:.1f} GFLOP", flush=True)
    print(f"RESULT side=torch case=vae{H} reps={args.reps} median_s={med:.3f} times={','.join(f'{t:.3f}' for t in times)} "
          f"gflop={FLOPS[0] / 1e9:.1f} peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
          flush=True)


if __name__ == "__main__":
    main()
