"""Errors: a failed call raises svdiff.Error(code, message) with the library's message; the
library not found raises svdiff.LibraryNotFound naming what was tried."""
import os
import subprocess
import sys
import unittest

import svdiff
from common import HERE, MODEL, SOURCE, expect_error, scratch


class Errors(unittest.TestCase):
    def test_missing_model(self):
        e = expect_error(self, lambda: svdiff.Model("/no/such/model"), contains="/no/such/model")
        self.assertLess(e.code, 0)
        self.assertTrue(e.name.startswith("SVDIFF_ERR_"))

    def test_bad_arguments(self):
        with svdiff.Model(MODEL, threads=2) as m:
            expect_error(self, lambda: m.generate("a cat", sampler="no_such_sampler"), svdiff.ERR_ARG, "no_such_sampler")
            expect_error(self, lambda: m.generate("a cat", steps=0), svdiff.ERR_ARG)
            expect_error(self, lambda: m.apply_shifts("/no/such/shifts.safetensors"),
                         contains="/no/such/shifts.safetensors")
            with self.assertRaises(ValueError):
                m.generate("a cat", init_latents=[0.0] * 5)
        expect_error(self, m.info, svdiff.ERR_ARG, "closed")
        with self.assertRaises(ValueError):
            svdiff.Model(MODEL, compute_dtype="fp16")

    def test_write_png_errors(self):
        work = scratch("errors-png")
        expect_error(self, lambda: svdiff.write_png(os.path.join(work, "no", "such", "dir.png"), svdiff.Image(2, 2, bytes(12))),
                     contains="dir.png")
        with self.assertRaises(ValueError):
            svdiff.Image(2, 2, bytes(11))
        expect_error(self, lambda: svdiff.read_image(os.path.join(SOURCE, "models", "emoji-32", "model_index.json")),
                     contains="model_index.json")

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
