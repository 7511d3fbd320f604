#!/usr/bin/python3
"""Shift files for the tiny test model (tests/fixtures/tiny-sd/diffusers), for the CLI checks of
`svdiff generate --shifts` (CMakeLists.txt, cli.shifts_*):

  zero/spectral_shifts.safetensors     every UNet conv / linear ("<module>.delta" [rank]) and norm
                                       (per element, [C]) with all-zero shifts
  zero/spectral_shifts_te.safetensors  the same for the text encoder (embeddings, q/k/v/out_proj,
                                       fc1, fc2, LayerNorms), scalar norm shifts [1] as svdiff-pytorch
  otherbase.safetensors                one zero shift whose metadata names another base model

No base_model_hash in the zero files (like svdiff-pytorch's files): generate warns and applies.
Pure Python (no torch); output is byte-for-byte deterministic.
"""
import argparse
import json
import os
import struct

import st_io  # noqa: E402  (tests/reference/st_io.py)


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def write_safetensors(path, tensors, metadata=None):
    """tensors: [(name, n)] of F32 zeros, in that order (st_io.write_raw; metadata first)."""
    return st_io.write_raw(path, [(name, "F32", [n], b"\0" * (4 * n)) for name, n in tensors], metadata,
                           metadata_first=True)


def shifts_of(headers, scalar_norms):
    """(module path, shift length) for every weight ("<module>.weight") of the given headers."""
    out = []
    for h in headers:
        for key, t in sorted(h.items()):
            if not key.endswith(".weight") or t["dtype"] not in ("F16", "F32", "BF16"):
                continue
            shape, path = t["shape"], key[: -len(".weight")]
            if len(shape) == 1:  # a norm gain
                out.append((path + ".delta", 1 if scalar_norms else shape[0]))
            else:
                cols = 1
                for d in shape[1:]:
                    cols *= d
                out.append((path + ".delta", min(shape[0], cols)))
    return sorted(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-sd", "diffusers"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    unet = read_header(os.path.join(a.model, "unet", "diffusion_pytorch_model.safetensors"))
    te_dir = os.path.join(a.model, "text_encoder")
    te = [read_header(os.path.join(te_dir, f)) for f in sorted(os.listdir(te_dir)) if f.endswith(".safetensors")]
    os.makedirs(os.path.join(a.out, "zero"), exist_ok=True)
    meta = {"format": "svdiff shifts (test fixture)", "norm_shift": "element"}
    write_safetensors(os.path.join(a.out, "zero", "spectral_shifts.safetensors"), shifts_of([unet], False), meta)
    write_safetensors(os.path.join(a.out, "zero", "spectral_shifts_te.safetensors"), shifts_of(te, True),
                      dict(meta, norm_shift="scalar"))
    write_safetensors(os.path.join(a.out, "otherbase.safetensors"), [("conv_in.delta", 4)],
                      {"base_model_hash": "0123456789abcdef"})


if __name__ == "__main__":
    main()
