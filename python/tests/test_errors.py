"""Errors: a failed call raises svdiff.Error(code, message) with the library's message; the
library not found raises svdiff.LibraryNotFound naming what was tried."""
import os
import subprocess
import sys
import unittest

import svdiff
from common import HERE, MODEL, SOURCE, scratch


class Errors(unittest.TestCase):
    def test_missing_model(self):
        with self.assertRaises(svdiff.Error) as cm:
            svdiff.Model("/no/such/model")
        e = cm.exception
        self.assertLess(e.code, 0)
        self.assertIn("/no/such/model", e.message)
        self.assertEqual(str(e), e.message)
        self.assertTrue(e.name.startswith("SVDIFF_ERR_"))

    def test_bad_arguments(self):
        with svdiff.Model(MODEL, threads=2) as m:
            with self.assertRaises(svdiff.Error) as cm:
                m.generate("a cat", sampler="no_such_sampler")
            self.assertEqual(cm.exception.code, svdiff.ERR_ARG)
            self.assertIn("no_such_sampler", str(cm.exception))
            with self.assertRaises(svdiff.Error) as cm:
                m.generate("a cat", steps=0)
            self.assertEqual(cm.exception.code, svdiff.ERR_ARG)
            with self.assertRaises(svdiff.Error) as cm:
                m.apply_shifts("/no/such/shifts.safetensors")
            self.assertIn("/no/such/shifts.safetensors", str(cm.exception))
            with self.assertRaises(ValueError):
                m.generate("a cat", init_latents=[0.0] * 5)
        with self.assertRaises(svdiff.Error):   # closed
            m.info()
        with self.assertRaises(ValueError):
            svdiff.Model(MODEL, compute_dtype="fp16")

    def test_write_png_errors(self):
        work = scratch("errors-png")
        with self.assertRaises(svdiff.Error) as cm:
            svdiff.write_png(os.path.join(work, "no", "such", "dir.png"), svdiff.Image(2, 2, bytes(12)))
        self.assertIn("dir.png", str(cm.exception))
        with self.assertRaises(ValueError):
            svdiff.Image(2, 2, bytes(11))
        with self.assertRaises(svdiff.Error) as cm:
            svdiff.read_image(os.path.join(SOURCE, "models", "emoji-32", "model_index.json"))
        self.assertIn("model_index.json", str(cm.exception))

    def test_library_not_found(self):
        env = dict(os.environ, SVDIFF_LIB="/no/such/libsvdiff.so")
        code = "import svdiff\ntry:\n    svdiff.version()\nexcept svdiff.LibraryNotFound as e:\n    print('NOTFOUND', e)\n"
        p = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(HERE),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, out)
        self.assertIn("NOTFOUND", out)
        self.assertIn("SVDIFF_LIB", out)
        self.assertIn("/no/such/libsvdiff.so", out)


if __name__ == "__main__":
    unittest.main()
