"""The one safetensors writer of the reference scripts (and a reader for the benchmarks): header in insertion order (JSON,
compact, padded with spaces to a multiple of 8), then the tensors' bytes back to back, written
to a temporary file and renamed. Each generator turns its tensors into (name, dtype, shape,
bytes) entries; where "__metadata__" goes is part of each fixture's bytes, so it is a
parameter."""
import json
import os
import struct


def write_raw(path, entries, metadata=None, metadata_first=False, keep_empty_metadata=False):
    """entries: iterable of (name, dtype name, shape list, little-endian bytes).
    metadata goes first or last; it is left out when falsy unless keep_empty_metadata (then
    even None is written, as JSON null). Returns the file size."""
    header, blobs, off = {}, [], 0
    with_meta = keep_empty_metadata or bool(metadata)
    if with_meta and metadata_first:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if with_meta and not metadata_first:
        header["__metadata__"] = metadata
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return 8 + len(hb) + off


def read_arrays(path, want=None):
    """{name: numpy array} of a safetensors file, read one tensor at a time (names in `want`
    only, when given): F16 / BF16 / F32 as float32 (bf16 is the top half of a float32), I32 / I64
    as they are. Needs numpy (the writer above does not)."""
    import numpy as np
    kinds = {"F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64}
    out = {}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__" or (want is not None and name not in want):
                continue
            b, e = info["data_offsets"]
            f.seek(base + b)
            raw = f.read(e - b)
            if info["dtype"] == "BF16":
                a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(raw, dtype=kinds[info["dtype"]])
                if a.dtype.kind == "f":
                    a = a.astype(np.float32)
            out[name] = a.reshape(info["shape"]).copy()
    return out
