"""The package: `pip install ./python` offline (no index) gives an importable svdiff that finds
the library; the ctypes structs agree with the header (the defaults the library fills in land in
the fields its header documents)."""
import os
import subprocess
import sys
import unittest

import svdiff
from svdiff import _api, _lib
from common import HERE, MODEL, SOURCE, scratch

SHIFTS_FILE = os.path.join(SOURCE, "tests", "fixtures", "toolbox", "a.safetensors")


class Package(unittest.TestCase):
    def test_pip_install_offline(self):
        import importlib.util
        if importlib.util.find_spec("pip") is None:
            self.skipTest("no pip for %s (Debian: python3-pip)" % sys.executable)
        target = scratch("pip-target")
        p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir",
                            "--disable-pip-version-check", "--target", target, os.path.dirname(HERE)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        self.assertTrue(os.path.isfile(os.path.join(target, "svdiff", "__init__.py")))
        # installed outside the checkout and without SVDIFF_LIB: the system loader finds the library
        code = ("import svdiff, sys; print(svdiff.__file__); print(svdiff.version()); print(svdiff.library_path()); "
                "print(svdiff.Model(sys.argv[1]).info()['family'])")
        env = dict(os.environ, PYTHONPATH=target, LD_LIBRARY_PATH=os.path.dirname(_lib.path()))
        env.pop("SVDIFF_LIB", None)
        p = subprocess.run([sys.executable, "-c", code, MODEL], env=env, cwd=target,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, out)
        lines = out.split("\n")
        self.assertTrue(lines[0].startswith(target), out)
        self.assertEqual(lines[1], svdiff.version())
        self.assertEqual(os.path.realpath(lines[2]), os.path.realpath(_lib.path()))

    def test_struct_layout(self):
        lib = _lib.load()
        g = lib.svdiff_generate_default_params()
        self.assertEqual((g.steps, g.cfg, g.eta, g.seed, g.num_images, g.batch), (20, 7.5, 0.0, 42, 1, 1))
        self.assertEqual(lib.svdiff_sampler_name(g.sampler), b"ddim")
        self.assertFalse(g.callbacks.progress or g.callbacks.cancel or g.callbacks.image)
        e = lib.svdiff_edit_default_params()
        self.assertEqual((e.steps, e.seed), (50, 42))
        self.assertAlmostEqual(e.cfg, 3.0)
        self.assertAlmostEqual(e.eta, 0.1, places=6)
        t = lib.svdiff_train_default_params()
        self.assertGreater(t.steps, 0)
        self.assertEqual(t.batch_size, 1)
        self.assertGreater(t.lr, 0)
        self.assertEqual(t.n_settings, 0)
        self.assertFalse(t.callbacks.progress or t.callbacks.cancel)
        m = lib.svdiff_model_default_params()
        self.assertEqual((m.threads, m.compute, m.force), (0, 0, 0))
        pt = lib.svdiff_pretrain_default_params()
        self.assertEqual(pt.mode, _api.TRAIN_MODES["full"])
        self.assertGreater(pt.steps, 0)
        self.assertGreater(pt.lr, 0)
        self.assertEqual((pt.n_settings, pt.instance_dir, pt.out_dir), (0, None, None))
        self.assertFalse(pt.callbacks.progress or pt.callbacks.cancel)
        c = lib.svdiff_convert_default_params()
        self.assertEqual((c.fp16, c.format, c.model, c.force, c.user_data), (0, None, None, 0, None))
        self.assertFalse(c.fit)
        lo = lib.svdiff_lora_default_params()
        self.assertEqual((lo.format, lo.max_rank, lo.dtype, lo.no_norms, lo.no_embeddings, lo.force, lo.check),
                         (_api.LORA_FORMATS["kohya"], 0, _api.DTYPES["f16"], 0, 0, 0, 0))
        self.assertAlmostEqual(lo.energy, 0.99, places=12)
        self.assertIsNone(lo.svd_cache_dir)

    def test_shifts_part_layout(self):
        """svdiff_shifts_part_t's fields (ints, longs and pointers mixed) land where the header puts them:
        the counts agree with the entries read one by one."""
        import ctypes
        lib = _lib.load()
        s = svdiff.Shifts.load(SHIFTS_FILE)
        self.addCleanup(s.close)
        info = _api.ShiftsPart()
        self.assertEqual(lib.svdiff_shifts_part(s.handle, 0, ctypes.byref(info)), 0)
        self.assertEqual((info.present, info.folder, info.entries), (1, 0, len(s)))
        self.assertEqual(os.path.realpath(info.file.decode()), os.path.realpath(SHIFTS_FILE))
        self.assertEqual(info.values, sum(len(v) for _, v in s))
        self.assertEqual(info.matrices + info.norms, info.entries)
        self.assertIn((info.dtype, info.dtype_bytes), [(b"F32", 4), (b"F16", 2)])
        self.assertEqual((info.kept, info.taken), (-1, -1))
        self.assertGreater(info.n_meta, 0)
        self.assertEqual(lib.svdiff_shifts_part(s.handle, 1, ctypes.byref(info)), 0)
        self.assertEqual((info.present, info.entries, info.values), (0, 0, 0))

    def test_prototypes_match_the_header(self):
        """Every SVDIFF_API function of include/svdiff.h has a ctypes prototype, and no other."""
        import re
        from svdiff import _api
        header = os.path.join(SOURCE, "include", "svdiff.h")
        with open(header, encoding="utf-8") as f:
            names = set(re.findall(r"SVDIFF_API[^;(]*?\b(svdiff_[a-z0-9_]+)\(", f.read()))
        self.assertGreater(len(names), 30)
        self.assertEqual(sorted(names - set(_api.PROTOTYPES)), [], "functions of svdiff.h without a prototype")
        self.assertEqual(sorted(set(_api.PROTOTYPES) - names), [], "prototypes of functions svdiff.h lacks")

    def test_library_from_a_folder(self):
        """SVDIFF_LIB may name the folder that holds the library."""
        folder = os.path.dirname(_lib.path())
        code = "import svdiff; print(svdiff.library_path())"
        env = dict(os.environ, SVDIFF_LIB=folder)
        p = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(HERE),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        self.assertEqual(os.path.dirname(p.stdout.decode().strip()), folder)

    def test_version_and_samplers(self):
        self.assertRegex(svdiff.version(), r"^\d+\.\d+\.\d+$")
        lib = _lib.load()
        for k, name in enumerate(svdiff.SAMPLERS):
            self.assertEqual(lib.svdiff_sampler_name(k).decode(), name)


if __name__ == "__main__":
    unittest.main()
