"""Adapters and editing on the tiny fixture model against the CLI: a shift file, a LoRA and a
weight delta (trained here by svdiff.train in modes lora / full) give `svdiff generate --shifts /
--lora / --delta`'s PNG bytes, clear_adapters gives the base model's; Model.edit gives the pixels
of `svdiff edit --shifts` (no fine-tuning)."""
import os
import unittest

import svdiff
from common import SOURCE, TINY, cli, same_file, scratch

IMAGES = os.path.join(SOURCE, "tests", "fixtures", "train", "images")
SHIFTS = os.path.join(SOURCE, "tests", "fixtures", "toolbox", "a.safetensors")   # another base: force
ZERO = os.path.join(SOURCE, "tests", "fixtures", "shifts", "zero")
GEN = ["generate", "--model", TINY, "--prompt", "cat", "--steps", 2, "--width", 16, "--height", 16, "--seed", 5,
       "--threads", 2, "--svd-cache", "none", "--force", "--quiet"]
KW = dict(prompt="cat", steps=2, width=16, height=16, seed=5)


def rgb(image):
    return bytes(image.tobytes())


class Adapters(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = scratch("adapters")
        cls.model = svdiff.Model(TINY, threads=2, svd_cache_dir="", force=True)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def same_as_cli(self, name, *flags):
        cli(*GEN, *flags, "-o", os.path.join(self.work, "cli-%s.png" % name))
        self.model.generate(output=os.path.join(self.work, "py-%s.png" % name), **KW)
        same_file(self, os.path.join(self.work, "py-%s.png" % name), os.path.join(self.work, "cli-%s.png" % name))

    def test_shifts_then_clear(self):
        self.model.clear_adapters()
        self.model.apply_shifts(SHIFTS, scale=0.5)
        self.assertIn("a.safetensors (0.5)", self.model.adapters)
        self.same_as_cli("shifted", "--shifts", SHIFTS + ":0.5")
        shifted = svdiff.read_image(os.path.join(self.work, "cli-shifted.png"))
        self.model.clear_adapters()
        self.assertEqual(self.model.adapters, "")
        self.same_as_cli("base")
        self.assertNotEqual(rgb(shifted), rgb(svdiff.read_image(os.path.join(self.work, "cli-base.png"))))
        # a shift set in memory applies as its file does (the PNG text has no file name for it)
        with svdiff.Shifts.load(SHIFTS) as s:
            self.model.apply_shifts(s, 0.5)
        self.assertEqual(rgb(self.model.generate(**KW)[0]), rgb(shifted))
        self.model.clear_adapters()

    def test_lora_and_delta(self):
        train = dict(model=TINY, instance_dir=IMAGES, instance_prompt="a photo of sks dog", resolution=16, steps=2,
                     threads=2, svd_cache_dir="")
        lora = svdiff.train(output_dir=os.path.join(self.work, "lora"), mode="lora", lora_rank=2,
                            sample_prompt=["a dog", "a cat"], sample_every=2, **train)
        self.assertTrue(os.path.isfile(os.path.join(lora, "samples", "step-000002.png")))
        full = svdiff.train(output_dir=os.path.join(self.work, "full"), mode="full", save_delta=True, lr=1e-3, **train)
        lora_file = os.path.join(lora, "pytorch_lora_weights.safetensors")
        delta_file = os.path.join(full, "weight_delta.safetensors")
        self.assertTrue(os.path.isfile(lora_file) and os.path.isfile(delta_file))
        self.model.clear_adapters()
        self.model.apply_lora(lora_file, 0.8)
        self.same_as_cli("lora", "--lora", lora_file + ":0.8")
        self.model.clear_adapters()
        self.model.apply_delta(delta_file, 1.0)
        self.same_as_cli("delta", "--delta", delta_file)
        self.model.clear_adapters()
        with self.assertRaises(svdiff.Error) as cm:   # a file of the wrong kind changes nothing
            self.model.apply_lora(SHIFTS)
        self.assertIn("a.safetensors", str(cm.exception))
        self.assertEqual(self.model.adapters, "")

    def test_edit(self):
        image = os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0])
        out = os.path.join(self.work, "edit")
        cli("edit", "--model", TINY, "--image", image, "--prompt", "a dog", "--edit", "a cat", "--edit", "a bird",
            "--shifts", ZERO, "--sample-steps", 3, "--resolution", 16, "--threads", 2, "--svd-cache", "none",
            "--force", "--quiet", "-o", out)
        self.model.clear_adapters()
        self.model.apply_shifts(ZERO)
        seen = []
        r = self.model.edit(image, "a dog", ["a cat", "a bird"], resolution=16, steps=3, progress=seen.append)
        self.model.clear_adapters()
        self.assertEqual(len(r.edits), 2)
        self.assertEqual(tuple(r.input.shape), (16, 16, 3))
        self.assertEqual(rgb(r.edits[0]), rgb(svdiff.read_image(os.path.join(out, "edit-1.png"))))
        self.assertEqual(rgb(r.edits[1]), rgb(svdiff.read_image(os.path.join(out, "edit-2.png"))))
        self.assertEqual(rgb(r.reconstruction), rgb(svdiff.read_image(os.path.join(out, "reconstruction.png"))))
        self.assertGreater(r.psnr, 0)
        self.assertEqual({p.stage for p in seen}, {"invert", "edit"})
        # the same image given in memory
        r2 = self.model.edit(svdiff.read_image(image), "a dog", "a cat", resolution=16, steps=3)
        self.assertEqual(rgb(r2.input), rgb(r.input))

    def test_edit_report(self):
        """report=True: the figures `svdiff edit --report` prints, to its 4 decimals."""
        image = os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0])
        p = cli("edit", "--model", TINY, "--image", image, "--prompt", "a dog", "--edit", "a cat", "--shifts", ZERO,
                "--sample-steps", 3, "--resolution", 16, "--threads", 2, "--svd-cache", "none", "--force", "--quiet",
                "--report", "-o", os.path.join(self.work, "edit-report"))
        want = dict(line.split() for line in p.stdout.decode().splitlines() if line.endswith(tuple("0123456789")))
        self.model.clear_adapters()
        self.model.apply_shifts(ZERO)
        seen = []
        r = self.model.edit(image, "a dog", "a cat", resolution=16, steps=3, report=True, progress=seen.append)
        self.model.clear_adapters()
        got = {"reconstruction_psnr_db": r.report["reconstruction_psnr"],
               "vae_roundtrip_psnr_db": r.report["vae_roundtrip_psnr"],
               "reconstruction_vs_vae_roundtrip_psnr_db": r.report["reconstruction_vs_vae_psnr"],
               "noise_reconstruction_psnr_db": r.report["noise_reconstruction_psnr"],
               "edit_1_psnr_db": svdiff.psnr(r.edits[0], r.input)}
        self.assertEqual({k: "%.4f" % v for k, v in got.items()}, want)
        self.assertEqual(r.report["reconstruction_psnr"], r.psnr)
        self.assertEqual(svdiff.psnr(r.reconstruction, r.input), r.psnr)
        self.assertGreater(len([x for x in seen if x.stage == "edit"]), 3)   # the report's sampling run too
        self.assertIsNone(self.model.edit(image, "a dog", "a cat", resolution=16, steps=3).report)


if __name__ == "__main__":
    unittest.main()
