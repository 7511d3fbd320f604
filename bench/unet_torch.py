#!/usr/bin/python3
"""PyTorch CPU side of the UNet benchmark (bench/unet.c): the same weights (SD 1.5 or SDXL), loaded into
the torch re-implementation of diffusers' UNet2DConditionModel in tests/reference/gen_unet_golden.py
(SDXL's addition_embed_type "text_time": gen_sdxl_golden.SDXLUNet, with a random pooled embedding and
the time ids of a square uncropped image) (float32, torch.no_grad), the same forwards (batch 2, 77
context tokens, NxN latents: --case fwd32,fwd64,fwd128),
timed the same way (median of N runs after one warm-up), with peak RSS from getrusage. Prints
RESULT lines that bench/run_unet.sh reads. Attention there is the plain materialised
softmax(QK^T)V (torch 1.13 has no fused CPU kernel). Run with Debian's torch:

    /usr/bin/python3 bench/unet_torch.py --model DIR [--case fwd32,fwd64] [--reps 3] [--reps64 1]
        [--reps128 1] [--threads N] [--check FILE (inputs + output saved by bench_unet --save)]
        [--check-case fwd32 (the case whose inputs --check holds)]

The weights are read tensor by tensor (seek + read, not mmap), so peak RSS is the float32 model
plus activations, not the file too. Each process reports the peak of its whole life
(ru_maxrss cannot be reset): run one case per process to compare per-case peaks.
"""
import argparse
import json
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import gen_unet_golden as g  # noqa: E402
import st_io  # noqa: E402

try:  # SDXL's UNet (text_time); gen_sdxl_golden sets float64 and 1 thread: both are reset below
    import gen_sdxl_golden as gx  # noqa: E402
except ImportError:
    gx = None

# gen_unet_golden works in float64 on one thread (deterministic fixtures); a benchmark wants
# float32 and the machine's threads.
torch.set_default_dtype(torch.float32)
_features = g.timestep_features
g.timestep_features = lambda *a, **k: _features(*a, **k).to(torch.float32)  # it returns float64


def read_safetensors(path, want=None):
    """{name: float32 tensor} from a safetensors file, read one tensor at a time."""
    return {k: torch.from_numpy(v) for k, v in st_io.read_arrays(path, want).items()}


def load_unet(model_dir):
    with open(os.path.join(model_dir, "unet", "config.json")) as f:
        cfg = json.load(f)
    cfg.setdefault("use_linear_projection", False)
    if cfg.get("addition_embed_type") == "text_time":
        assert gx is not None, "tests/reference/gen_sdxl_golden.py is needed for an SDXL UNet"
        model = gx.SDXLUNet(cfg)
    else:
        assert not cfg.get("addition_embed_type"), f"addition_embed_type {cfg['addition_embed_type']} not supported"
        model = g.UNet2DConditionModel(cfg)
    params = dict(model.named_parameters())
    path = os.path.join(model_dir, "unet", "diffusion_pytorch_model.safetensors")
    with open(path, "rb") as f:  # header first: which names to read
        n = struct.unpack("<Q", f.read(8))[0]
        names = [k for k in json.loads(f.read(n)) if k != "__metadata__"]
    missing = set(params) - set(names)
    assert not missing, f"tensors missing from {path}: {sorted(missing)[:5]}"
    with torch.no_grad():  # in chunks of names, so only a few tensors are in flight
        for i in range(0, len(names), 32):
            for k, v in read_safetensors(path, set(names[i:i + 32])).items():
                if k in params:
                    params[k].copy_(v.reshape(params[k].shape))
    model.eval()
    return model, cfg, sum(p.numel() for p in model.parameters())


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def sgemm_rate():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * 2048**3 / statistics.median(ts) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--case", default="fwd32,fwd64")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reps64", type=int, default=1)
    ap.add_argument("--reps128", type=int, default=1, help="timed forwards above 64x64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--check", help="bench_unet --save output: run its inputs, compare its output")
    ap.add_argument("--check-case", default="fwd32", help="the case whose inputs --check holds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__} CPU, {torch.get_num_threads()} threads, "
          f"oneDNN {torch.backends.mkldnn.is_available()}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    sgemm = sgemm_rate()
    print(f"torch.mm 2048^3: {sgemm:.1f} GFLOP/s")
    t0 = time.perf_counter()
    model, cfg, n_params = load_unet(args.model)
    print(f"loaded in {time.perf_counter() - t0:.1f} s: {n_params} parameters (float32), "
          f"peak RSS {peak_rss_mb():.0f} MB", flush=True)
    sd15 = {32: 180.1e9, 64: 803.3e9}  # per sample, 77 tokens (bench_unet counts them from the config)
    xl = cfg.get("addition_embed_type") == "text_time"
    T, B = 77, args.batch
    for case in args.case.split(","):
        hw = int(case[3:])
        reps = args.reps if hw <= 32 else args.reps64 if hw <= 64 else args.reps128
        check = args.check and case == args.check_case
        text_embeds = time_ids = None
        if check:
            ref = read_safetensors(args.check)
            sample, ctx, ts = ref["sample"], ref["ctx"], ref["timesteps"]
            if xl:
                text_embeds, time_ids = ref["text_embeds"], ref["time_ids"]
        else:
            sample = torch.randn(B, cfg["in_channels"], hw, hw)
            ctx = torch.randn(B, T, cfg["cross_attention_dim"])
            ts = torch.tensor([981.0 - 100.0 * b for b in range(B)])
            if xl:
                dt = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
                text_embeds = torch.randn(B, dt)
                time_ids = torch.tensor([[8.0 * hw, 8.0 * hw, 0.0, 0.0, 8.0 * hw, 8.0 * hw]] * B)
        extra_in = (text_embeds, time_ids) if xl else ()
        times = []
        with torch.no_grad():
            for r in range(-(0 if args.no_warmup else 1), reps):
                t0 = time.perf_counter()
                out = model(sample, ts, ctx, *extra_in)
                dt = time.perf_counter() - t0
                if r >= 0:
                    times.append(dt)
                print(f"  {case} {'warm-up' if r < 0 else 'rep ' + str(r + 1)}: {dt:.2f} s", file=sys.stderr, flush=True)
        med = statistics.median(times)
        extra = ""
        if not xl and hw in sd15:  # SDXL: the runner takes bench_unet's count
            gflop = sd15[hw] * B / 1e9
            extra += f" gflop={gflop:.1f} gflops={gflop / med:.1f}"
        if check:
            d = (out - ref["out"]).abs()
            extra += (f" check_maxabs={d.max().item():.3g} check_rel={(d.max() / ref['out'].abs().max()).item():.3g}")
        print(f"RESULT side=torch case={case} B={B} H={hw} T={T} reps={reps} median_s={med:.3f} "
              f"times={','.join(f'{t:.3f}' for t in times)} "
              f"peak_rss_mb={peak_rss_mb():.0f} sgemm_gflops={sgemm:.1f} out_maxabs={out.abs().max().item():.4g}"
              f"{extra}", flush=True)


if __name__ == "__main__":
    main()
