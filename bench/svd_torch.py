"""PyTorch side of bench/run_svd.sh: torch.linalg.svd(full_matrices=False) in fp32 of the
UNet matrices named in a file (one per line, as bench_svd prints them), read from the same
safetensors, conv kernels reshaped to [out, in*k*k]. Prints MAT and RESULT lines like bench_svd."""
import argparse
import json
import os
import struct
import time

import numpy as np
import torch

DT = {"F32": np.float32, "F16": np.float16, "BF16": None}


def read_tensors(path, names):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name in names:
            h = header[name + ".weight"]
            a, b = h["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            if h["dtype"] == "BF16":
                t = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float()
            else:
                t = torch.from_numpy(np.frombuffer(raw, dtype=DT[h["dtype"]]).astype(np.float32))
            shape = h["shape"]
            out[name] = t.reshape(shape[0], -1).contiguous()
        return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--names", required=True)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    names = [l.split()[0] for l in open(a.names) if l.strip()]
    mats = read_tensors(os.path.join(a.model, "unet", "diffusion_pytorch_model.safetensors"), names)
    print(f"PyTorch {torch.__version__} SVD benchmark: {torch.get_num_threads()} threads, {len(names)} matrices",
          flush=True)
    t0 = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        torch.linalg.svd(mats[name], full_matrices=False)
        w = mats[name]
        print(f"MAT {name} {w.shape[0]} {w.shape[1]} {time.perf_counter() - t:.4f}", flush=True)
    print(f"RESULT side=torch matrices={len(names)} total_s={time.perf_counter() - t0:.3f} "
          f"threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
