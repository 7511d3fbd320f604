"""Shifts.describe / parts / convert / to_lora against `svdiff shifts info --json / convert /
to-lora`: the same JSON, the same counts, the same file bytes."""
import json
import os
import unittest

import svdiff
from common import SOURCE, TINY, cli, expect_error, read, same_file, scratch

A = os.path.join(SOURCE, "tests", "fixtures", "toolbox", "a.safetensors")
B = os.path.join(SOURCE, "tests", "fixtures", "toolbox", "b.safetensors")
ZERO = os.path.join(SOURCE, "tests", "fixtures", "shifts", "zero")
OTHERBASE = os.path.join(SOURCE, "tests", "fixtures", "shifts", "otherbase.safetensors")


def cli_json(*args):
    return json.loads(cli(*args).stdout.decode())


class ShiftsTools(unittest.TestCase):
    def test_describe_equals_cli_json(self):
        for path in (A, ZERO):
            with svdiff.Shifts.load(path) as s:
                self.assertEqual(s.describe(), cli_json("shifts", "info", path, "--json"), path)
        got = svdiff.Shifts.describe(A, top=3)            # by path, without loading
        self.assertEqual(got, cli_json("shifts", "info", A, "--json", "--top", "3"))
        self.assertEqual(len(got["files"][0]["largest_shifts"]), 3)
        self.assertEqual(len(svdiff.Shifts.describe(ZERO)["files"]), 2)
        with svdiff.Shifts.load(A) as s, s.scale(2) as t:
            expect_error(self, t.describe, svdiff.ERR_ARG, "not loaded from a file")
        expect_error(self, lambda: svdiff.Shifts.describe(A, top=0), svdiff.ERR_ARG)
        expect_error(self, lambda: svdiff.Shifts.describe(os.path.join(SOURCE, "no-such.safetensors")), svdiff.ERR_IO,
                     "no-such.safetensors")

    def test_parts_agree_with_describe(self):
        for path, n in ((A, 1), (ZERO, 2)):
            with svdiff.Shifts.load(path) as s:
                parts, files = s.parts(), s.describe()["files"]
                self.assertEqual(len(parts), n)
                self.assertEqual(sum(p["entries"] for p in parts), len(s))
                self.assertEqual(sum(p["values"] for p in parts), sum(len(v) for _, v in s))
                for p, f in zip(parts, files):
                    self.assertEqual(p["folder"], path == ZERO)
                    self.assertEqual(os.path.realpath(p["file"]), os.path.realpath(f["file"]))
                    self.assertEqual((p["entries"], p["matrices"], p["norms"], p["values"], p["dtype"]),
                                     (f["layers"], f["matrices"], f["norms"], f["shifts"], f["dtype"]))
                    self.assertEqual(p["metadata"], f["metadata"])
                    self.assertEqual(list(p["metadata"]), list(f["metadata"]))   # file order
                    self.assertEqual((p["kept"], p["taken"]), (None, None))
                self.assertEqual([p["part"] for p in parts], list(range(n)))
        with svdiff.Shifts.load(A) as a, svdiff.Shifts.load(B) as b:
            with a.limit_rank(1) as low:
                (p,) = low.parts()
                self.assertEqual((p["file"], p["kept"]), (None, low.kept_values))
            with svdiff.Shifts.mix(a, b, ["res:16x16"], levels=3, latent=32) as m:
                self.assertEqual(m.parts()[0]["taken"], m.n_from)

    def test_convert_equals_cli(self):
        out = scratch("convert")
        for dtype in ("fp16", "fp32"):
            cli_out = os.path.join(out, "cli-%s.safetensors" % dtype)
            cli("shifts", "convert", A, "--dtype", dtype, "-o", cli_out)
            with svdiff.Shifts.load(A) as s, s.convert(dtype) as c:
                self.assertEqual(c.parts()[0]["dtype"], "F16" if dtype == "fp16" else "F32")
                self.assertFalse(c.convert_stats["lossy"])
                c.add_history("convert to %s" % dtype).save(os.path.join(out, "py-%s.safetensors" % dtype))
            same_file(self, os.path.join(out, "py-%s.safetensors" % dtype), cli_out)
        # the scalar form of svdiff-pytorch against the base model: the fit callback sees each norm
        cli_out = os.path.join(out, "cli-pt")
        p = cli("shifts", "convert", ZERO, "--dtype", "fp32", "--format", "svdiff-pytorch", "--model", TINY, "-o", cli_out)
        fits = []
        with svdiff.Shifts.load(ZERO) as s:
            with s.convert("fp32", format="svdiff-pytorch", model=TINY, fit=lambda *a: fits.append(a)) as c:
                with svdiff.Shifts.load(cli_out) as want:
                    self.assertEqual(c.names(), want.names())
                    for (n1, v1), (n2, v2) in zip(c, want):
                        self.assertEqual([float(x) for x in v1], [float(x) for x in v2], n1)
                st = c.convert_stats
        fitted = [f for f in fits if f[1] is not None]
        self.assertGreater(len(fitted), 0)
        self.assertEqual(st["n_fitted"], len(fitted))
        self.assertEqual(sum(1 for f in fits if f[1] is None), 2)   # each part announced
        for _, path, lost, err in fitted:
            self.assertIn(path, p.stdout.decode())
        self.assertGreaterEqual(st["lost"], 0.0)
        with svdiff.Shifts.load(ZERO) as s:
            expect_error(self, lambda: s.convert("fp32", format="svdiff-pytorch"), svdiff.ERR_ARG)
            expect_error(self, lambda: s.convert("fp32", format="onnx"), svdiff.ERR_ARG, "onnx")

            def boom(*a):
                raise RuntimeError("stop here")
            with self.assertRaisesRegex(RuntimeError, "stop here"):
                s.convert("fp32", format="svdiff-pytorch", model=TINY, fit=boom)

    def test_to_lora_equals_cli(self):
        out = scratch("to-lora")
        for extra, kw in (([], {}), (["--format", "diffusers", "--no-norms", "--dtype", "fp32", "--rank", "2"],
                                     {"format": "diffusers", "no_norms": True, "dtype": "fp32", "rank": 2})):
            cli_out, py_out = os.path.join(out, "cli.safetensors"), os.path.join(out, "py.safetensors")
            # the toolbox fixture fits the tiny model's modules but names another base model: force
            p = cli("shifts", "to-lora", A, "--model", TINY, "--svd-cache", "none", "--force", "--check", *extra,
                    "-o", cli_out)
            with svdiff.Shifts.load(A) as s:
                st = s.to_lora(TINY, py_out, svd_cache_dir="", force=True, check=True, **kw)
            same_file(self, py_out, cli_out)
            self.assertEqual(len(st), 2)
            u = st[0]
            self.assertGreater(u["layers"], 0)
            self.assertLessEqual(u["rank_max"], 2 if kw else 10 ** 6)
            self.assertLessEqual(u["energy_kept"], u["energy_total"] * (1 + 1e-12))
            # the CLI's line, from the same figures
            line = "unet          %d layers, rank %d-%d, kept energy %.6f of ||dW||^2, %d norm diffs, %.1f KiB" % (
                u["layers"], u["rank_min"], u["rank_max"], u["energy_kept"] / u["energy_total"], u["norms"],
                u["bytes"] / 1024.0)
            self.assertIn(line, p.stdout.decode())
            self.assertIn("= %.3g" % ((u["err2"] / u["ref2"]) ** 0.5 if u["ref2"] > 0 else 0.0), p.stdout.decode())
            self.assertGreater(len(read(py_out)), 0)
        with svdiff.Shifts.load(OTHERBASE) as s:
            expect_error(self, lambda: s.to_lora(TINY, os.path.join(out, "x.safetensors"), svd_cache_dir=""),
                         svdiff.ERR_ARG)
        self.assertFalse(os.path.exists(os.path.join(out, "x.safetensors")))
        with svdiff.Shifts.load(ZERO) as s:
            expect_error(self, lambda: s.to_lora(TINY, os.path.join(out, "z.safetensors"), svd_cache_dir=""),
                         svdiff.ERR_ARG, "nothing to export")
            expect_error(self, lambda: s.to_lora(TINY, os.path.join(out, "y.safetensors"), energy=1.5), svdiff.ERR_ARG,
                         "energy")
            with self.assertRaises(ValueError):
                s.to_lora(TINY, os.path.join(out, "y.safetensors"), format="comfy")


if __name__ == "__main__":
    unittest.main()
