#!/usr/bin/python3
"""PyTorch .ckpt fixtures for the restricted checkpoint reader (src/io/ckpt.c, src/io/pickle.c),
checked by tests/test_ckpt.c and the cli.ckpt_* tests:

  fp32.ckpt, fp16.ckpt    torch.save of state dicts (fp32 + int64; fp16 + bf16 + bool)
  nested.ckpt             {"state_dict": ..., "global_step", "epoch", "optimizer_states" (Adam state
                          with its own tensors), "hyper_parameters" (an argparse.Namespace: a class
                          the reader keeps opaque)}, as PyTorch Lightning writes
  views.ckpt              tensors sharing storages: a base, its transpose, a row slice, a column,
                          every other element, an fp16 slice at an offset, an expanded (stride 0) view
  proto4.ckpt             torch.save(pickle_protocol=4): FRAME, SHORT_BINUNICODE, MEMOIZE, ...
  little.ckpt, big.ckpt   fp32.ckpt with a byteorder entry "little" / "big" (PyTorch >= 2.1 writes one)
  expected.safetensors    golden values: "<fixture>/<name>" -> the tensor, contiguous, same dtype
  bad/*.ckpt              hostile or broken files, each refused with its own message (table below)
  ../tiny-sd/sd1.ckpt     the tiny SD 1.x single file (tiny-sd/sd1.safetensors) nested under
                          "state_dict" with training state beside it, plus an EMA copy of one
                          weight (model_ema.*), for `svdiff generate`
  fuzz/corpus/pickle/     seeds of fuzz/fuzz_pickle.c (--corpus): data.pkl files and archives

The hostile pickles that would run a command run `touch "$SVDIFF_PWNED"`; this script checks
that Python's own unpickler does run them (the file appears), so the tests' check that svdiff
leaves no such file means something. Output is byte-for-byte deterministic (zip entries dated
1980-01-01; torch 1.13 writes no random serialization id).
"""
import argparse
import collections
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import torch

import st_io  # noqa: E402  (tests/reference/st_io.py)

PAYLOAD = 'touch "${SVDIFF_PWNED:-/tmp/svdiff-pwned}"'
DT = {torch.float32: ("F32", torch.float32), torch.float16: ("F16", torch.float16),
      torch.bfloat16: ("BF16", torch.bfloat16), torch.int64: ("I64", torch.int64), torch.bool: ("BOOL", torch.bool)}


def raw(t):
    """Little-endian bytes of a tensor, contiguous (bf16 through int16: numpy has no bf16)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def gen_good(out, golden):
    g = torch.Generator().manual_seed(20)

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    fp32 = collections.OrderedDict([("layer.weight", rnd(3, 5)), ("layer.bias", rnd(3)), ("scalar", rnd(())),
                                    ("empty", torch.zeros(0, 4)), ("steps", torch.arange(6, dtype=torch.int64) * 7 - 9)])
    fp16 = collections.OrderedDict([("conv.weight", rnd(4, 2, 3, 3, dtype=torch.float16)),
                                    ("norm.weight", rnd(4, dtype=torch.float16)),
                                    ("emb.weight", rnd(6, 4, dtype=torch.bfloat16)),
                                    ("mask", torch.tensor([True, False, True]))])
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(rnd(3, 4))
        model.bias.copy_(rnd(3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(rnd(2, 4)).sum().backward()
    opt.step()
    import argparse as ap_mod
    nested = {"epoch": 2, "global_step": 7, "pytorch-lightning_version": "1.9.0",
              "state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
              "lr_schedulers": [], "hyper_parameters": ap_mod.Namespace(lr=1e-4, name="tiny")}
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 4 - 2
    half = (torch.arange(10, dtype=torch.float32) / 3).to(torch.float16)
    views = collections.OrderedDict([("base", base), ("transposed", base.t()), ("rows", base[1:3]),
                                     ("column", base[:, 2]), ("every_other", base.view(-1)[1::2]),
                                     ("block", base[1:4, 2:5]), ("half_tail", half[4:]), ("half", half),
                                     ("expanded", torch.tensor([[1.5], [-2.0], [3.25]]).expand(3, 4))])
    files = {"fp32": fp32, "fp16": fp16, "nested": nested, "views": views}
    for name, obj in files.items():
        torch.save(obj, os.path.join(out, name + ".ckpt"))
    torch.save(fp32, os.path.join(out, "proto4.ckpt"), pickle_protocol=4)
    sd_of = {"fp32": fp32, "fp16": fp16, "nested": nested["state_dict"], "views": views, "proto4": fp32}
    for fx, sd in sd_of.items():
        for k, t in sd.items():
            golden.append((f"{fx}/{k}", DT[t.dtype][0], list(t.shape), raw(t)))
    # byteorder entries (written by PyTorch >= 2.1), added to a copy of fp32.ckpt
    for order in ("little", "big"):
        rezip(os.path.join(out, "fp32.ckpt"), os.path.join(out, order + ".ckpt"), {"fp32/byteorder": order.encode()},
              rename=("fp32/", order + "/"))
    for k, t in fp32.items():
        golden.append((f"little/{k}", DT[t.dtype][0], list(t.shape), raw(t)))


def rezip(src, dst, extra, rename=None, drop=()):
    """Copies a zip's entries (stored, dated 1980) with `extra` entries added and `drop` left out."""
    with zipfile.ZipFile(src) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    entries += list(extra.items())
    write_zip(dst, [(n.replace(*rename) if rename else n, b) for n, b in entries if n not in drop])


def write_zip(path, entries, deflate=()):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(zi, data)


# ---- hand-made pickles ---------------------------------------------------------------------

def u(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i32(v):
    return b"J" + struct.pack("<i", v)


def i64(v):
    """LONG1 with 8 bytes: any int64."""
    return b"\x8a\x08" + struct.pack("<q", v)


def tensor_op(key, numel, offset, size, stride, storage="FloatStorage"):
    """The opcodes torch.save writes for one tensor: _rebuild_tensor_v2(persistent storage, offset,
    size, stride, requires_grad, OrderedDict())."""
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + b"(" + u("storage") + b"ctorch\n" + storage.encode() + b"\n" +
            u(key) + u("cpu") + i64(numel) + b"tQ" + i64(offset) + b"(" + b"".join(i64(s) for s in size) + b"t" +
            b"(" + b"".join(i64(s) for s in stride) + b"t" + b"\x89ccollections\nOrderedDict\n)R" + b"tR")


def state_dict_pickle(tensors, extra=b""):
    """{name: tensor, ...} as a protocol 2 pickle, after the raw key/value opcodes `extra` (first,
    so that Python runs a payload there before it meets the persistent ids it cannot load)."""
    body = b"".join(u(name) + tensor_op(*spec) for name, spec in tensors)
    return b"\x80\x02}(" + extra + body + b"u."


def ckpt(path, pkl, storages=(), prefix="archive", deflate=()):
    entries = [(f"{prefix}/data.pkl", pkl)] + [(f"{prefix}/data/{k}", v) for k, v in storages]
    write_zip(path, entries, deflate=[f"{prefix}/{d}" for d in deflate])


def call(module, name, arg):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n" + u(arg) + b"\x85R"


def stack_global(module, name, arg):
    return b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode() + \
        b"\x93" + u(arg) + b"\x85R"


def patch_size(path, entry, size):
    """Rewrites the uncompressed size an entry declares, in its local header and the central
    directory (what a zip bomb lies about)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(entry)
    b = bytearray(open(path, "rb").read())
    struct.pack_into("<I", b, info.header_offset + 22, size)           # local header
    cd = b.find(b"PK\x01\x02")
    name = entry.encode()
    while cd >= 0:
        n = struct.unpack_from("<H", b, cd + 28)[0]
        if b[cd + 46:cd + 46 + n] == name:
            struct.pack_into("<I", b, cd + 24, size)                    # central directory
            break
        cd = b.find(b"PK\x01\x02", cd + 4)
    open(path, "wb").write(bytes(b))


def runs_in_python(pkl):
    """Whether Python's pickle.loads of `pkl` runs the payload (creates $SVDIFF_PWNED)."""
    with tempfile.TemporaryDirectory() as d:
        flag = os.path.join(d, "pwned")
        code = "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"
        subprocess.run([sys.executable, "-c", code], input=pkl, env=dict(os.environ, SVDIFF_PWNED=flag),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return os.path.exists(flag)


def gen_bad(out):
    w4 = struct.pack("<4f", 1, 2, 3, 4)
    good = [("w", ("0", 4, 0, [4], [1]))]
    bad = {}
    # code execution attempts
    bad["os_system"] = (state_dict_pickle(good, u("hook") + call("os", "system", PAYLOAD)), True)
    bad["posix_system"] = (b"\x80\x02" + call("posix", "system", PAYLOAD) + b".", True)
    bad["builtins_eval"] = (b"\x80\x02" + call("builtins", "eval", f"__import__('os').system('{PAYLOAD}')") + b".", True)
    bad["stack_global_exec"] = (b"\x80\x04" + stack_global("builtins", "exec", f"import os; os.system('{PAYLOAD}')") + b".",
                                True)
    bad["subprocess_getoutput"] = (b"\x80\x02" + call("subprocess", "getoutput", PAYLOAD) + b".", True)
    # a global that is not refused (numpy's test helper runs a string): kept opaque, never called;
    # at the top it is no state dict; beside one it loads, and runs nothing (test_ckpt, cli.ckpt_hostile)
    runstring = call("numpy.testing._private.utils", "runstring", f"import os; os.system('{PAYLOAD}')")
    runstring = runstring[:-2] + b"}\x86R"   # runstring(code, globals)
    bad["opaque_top"] = (b"\x80\x02" + runstring + b".", True)
    bad["opaque_nested"] = (state_dict_pickle(good, u("hook") + runstring), True)
    # malformed pickles
    bad["unknown_opcode"] = (b"\x80\x02}q\x00\xff.", False)
    bad["inst_opcode"] = (b"\x80\x02(" + u(PAYLOAD) + b"ios\nsystem\n.", True)   # os.system(payload), protocol 0 style
    bad["truncated"] = (state_dict_pickle(good)[:70], False)
    bad["no_stop"] = (b"\x80\x02}", False)
    bad["memo_out_of_range"] = (b"\x80\x02}q\x00h\x07.", False)
    bad["deep_marks"] = (b"\x80\x02" + b"(" * 100000 + b".", False)
    bad["not_a_dict"] = (b"\x80\x02]q\x00.", False)
    # tensor views that do not fit their storage
    bad["offset_past_storage"] = (state_dict_pickle([("w", ("0", 4, 100, [4], [1]))]), False)
    bad["extent_past_storage"] = (state_dict_pickle([("w", ("0", 4, 0, [2, 3], [3, 1]))]), False)
    bad["negative_size"] = (state_dict_pickle([("w", ("0", 4, 0, [-1, 4], [4, 1]))]), False)
    bad["huge_size"] = (state_dict_pickle([("w", ("0", 4, 0, [1 << 40, 1 << 40], [0, 0]))]), False)
    bad["stride_bomb"] = (state_dict_pickle([("w", ("0", 4, 0, [1 << 31, 1 << 20], [0, 0]))]), False)
    bad["size_mismatch"] = (state_dict_pickle([("w", ("0", 5, 0, [4], [1]))]), False)
    bad["storage_missing"] = (state_dict_pickle([("w", ("7", 4, 0, [4], [1]))]), False)
    for name, (pkl, would_run) in bad.items():
        if would_run:
            assert runs_in_python(pkl), f"{name}: Python's unpickler does not run the payload"
        ckpt(os.path.join(out, name + ".ckpt"), pkl, [("0", w4)], deflate=["data.pkl"] if len(pkl) > 4096 else [])
    # archives
    write_zip(os.path.join(out, "no_data_pkl.ckpt"), [("archive/data/0", w4), ("archive/version", b"3\n")])
    # zip bombs: entries whose declared size their compressed bytes cannot hold
    ckpt(os.path.join(out, "bomb_pickle.ckpt"), state_dict_pickle(good), [("0", w4)], deflate=["data.pkl"])
    patch_size(os.path.join(out, "bomb_pickle.ckpt"), "archive/data.pkl", 0xFFFFFFF0)
    big = 1 << 29   # 2 GiB of floats declared by the pickle and by the entry
    ckpt(os.path.join(out, "bomb_storage.ckpt"), state_dict_pickle([("w", ("0", big, 0, [big], [1]))]),
         [("0", b"\0" * 4096)], deflate=["data/0"])
    patch_size(os.path.join(out, "bomb_storage.ckpt"), "archive/data/0", big * 4)
    # a bare pickle, as torch.save wrote before PyTorch 1.6 (not a zip)
    with open(os.path.join(out, "not_zip.ckpt"), "wb") as f:
        f.write(b"\x80\x02}q\x00.")


def gen_tiny_sd(src, dst):
    """tiny-sd/sd1.safetensors as a Lightning-style .ckpt (weights under "state_dict")."""
    kinds = {"F16": torch.float16, "F32": torch.float32, "I64": torch.int64}
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    sd = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        sd[name] = torch.frombuffer(bytearray(data[b:e]), dtype=kinds[info["dtype"]]).reshape(info["shape"]).clone()
    # an EMA copy of one UNet weight and the EMA's counters, as full SD 1.x checkpoints carry
    # (model_ema.*, names flattened): the model loader ignores them and never reads their storages
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(3, dtype=torch.int32)
    sd["model_ema.diffusion_modelout2weight"] = sd["model.diffusion_model.out.2.weight"].clone()
    torch.save({"epoch": 0, "global_step": 3, "state_dict": sd,
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-4}]}]}, dst)


def gen_corpus(fixtures, corpus):
    """Seeds of fuzz/fuzz_pickle.c: the data.pkl of each torch.save fixture, two whole archives
    and a few hostile pickles."""
    os.makedirs(corpus, exist_ok=True)
    for name in ("fp32", "fp16", "nested", "views", "proto4"):
        with zipfile.ZipFile(os.path.join(fixtures, name + ".ckpt")) as z:
            with open(os.path.join(corpus, f"{name}.pkl"), "wb") as f:
                f.write(z.read(f"{name}/data.pkl"))
    for name in ("views", "little"):
        with open(os.path.join(fixtures, name + ".ckpt"), "rb") as src, open(os.path.join(corpus, name + ".ckpt"), "wb") as f:
            f.write(src.read())
    for name in ("os_system", "opaque_nested", "stack_global_exec", "offset_past_storage"):
        with zipfile.ZipFile(os.path.join(fixtures, "bad", name + ".ckpt")) as z:
            with open(os.path.join(corpus, f"bad_{name}.pkl"), "wb") as f:
                f.write(z.read("archive/data.pkl"))


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures", "ckpt"))
    ap.add_argument("--corpus", default=os.path.join(here, "..", "..", "fuzz", "corpus", "pickle"))
    a = ap.parse_args()
    torch.manual_seed(0)
    os.makedirs(os.path.join(a.out, "bad"), exist_ok=True)
    golden = []
    gen_good(a.out, golden)
    st_io.write_raw(os.path.join(a.out, "expected.safetensors"), golden)
    gen_bad(os.path.join(a.out, "bad"))
    tiny = os.path.join(a.out, "..", "tiny-sd")
    gen_tiny_sd(os.path.join(tiny, "sd1.safetensors"), os.path.join(tiny, "sd1.ckpt"))
    gen_corpus(a.out, a.corpus)


if __name__ == "__main__":
    main()
