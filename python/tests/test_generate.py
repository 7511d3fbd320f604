"""Model.generate against `svdiff generate`: the same PNG bytes for the same settings on the
default model (models/emoji-32), images as (H, W, 3) uint8, callbacks, cancel, init latents."""
import os
import unittest

import svdiff
from common import MODEL, SOURCE, cli, read, same_file, scratch

TINY_SDXL = os.path.join(SOURCE, "tests", "fixtures", "tiny-sdxl", "diffusers")

SETTINGS = dict(prompt="an emoji of a cat", negative_prompt="blurry", steps=4, cfg=1.5, sampler="dpmpp_2m")
CLI_ARGS = ["--prompt", SETTINGS["prompt"], "--negative-prompt", "blurry", "--steps", "4", "--cfg", "1.5",
            "--sampler", "dpmpp_2m", "--threads", "2", "--quiet"]


def rgb(image):
    return bytes(image.tobytes())


class Generate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = svdiff.Model(MODEL, threads=2)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def test_info(self):
        info = self.model.info()
        self.assertEqual((info["native_width"], info["native_height"]), (32, 32))
        self.assertEqual(info["prediction_type"], "v_prediction")
        self.assertFalse(info["has_vae"])
        self.assertEqual(len(info["weights_hash"]), 16)
        self.assertGreater(info["unet_params"], 4_000_000)

    def test_same_png_bytes_as_cli(self):
        work = scratch("same-bytes")
        cli("generate", "--model", MODEL, *CLI_ARGS, "--seed", 7, "--num-images", 3, "--batch-size", 2,
            "-o", os.path.join(work, "cli.png"))
        images = self.model.generate(seed=7, num_images=3, batch_size=2, **SETTINGS)
        self.assertEqual(images.seeds, [7, 8, 9])
        paths = images.save(os.path.join(work, "py.png"))
        self.assertEqual([os.path.basename(p) for p in paths], ["py-1.png", "py-2.png", "py-3.png", "py.png"])
        for k in ("-1", "-2", "-3", ""):
            same_file(self, os.path.join(work, "py%s.png" % k), os.path.join(work, "cli%s.png" % k))
        # the pixels are those of the CLI's PNG, decoded by the library
        self.assertEqual(rgb(images[1]), rgb(svdiff.read_image(os.path.join(work, "cli-2.png"))))
        self.assertIn("Seed: 8,", images.parameters[1])
        self.assertTrue(images.parameters[0].startswith("an emoji of a cat\nNegative prompt: blurry\nSteps: 4"))

    def test_single_image_save_png_and_output(self):
        work = scratch("single")
        cli("generate", "--model", MODEL, *CLI_ARGS, "--seed", 11, "-o", os.path.join(work, "cli.png"))
        images = self.model.generate(seed=11, output=os.path.join(work, "out.png"), **SETTINGS)
        self.assertEqual(len(images), 1)
        want = read(os.path.join(work, "cli.png"))
        same_file(self, os.path.join(work, "out.png"), os.path.join(work, "cli.png"))
        self.model.save_png(os.path.join(work, "saved.png"), images[0], seed=11, **SETTINGS)
        same_file(self, os.path.join(work, "saved.png"), os.path.join(work, "cli.png"))
        # without the parameters text: another file, the same pixels
        svdiff.write_png(os.path.join(work, "plain.png"), images[0])
        self.assertNotEqual(read(os.path.join(work, "plain.png")), want)
        self.assertEqual(rgb(svdiff.read_image(os.path.join(work, "plain.png"))), rgb(images[0]))

    def test_image_type(self):
        img = self.model.generate(seed=3, width=32, height=32, **SETTINGS)[0]
        self.assertEqual(tuple(img.shape), (32, 32, 3))
        if svdiff.have_numpy():
            import numpy
            self.assertIsInstance(img, numpy.ndarray)
            self.assertEqual(img.dtype, numpy.uint8)
        else:
            self.assertIsInstance(img, svdiff.Image)
            self.assertEqual((img.width, img.height, img.mode, img.size), (32, 32, "RGB", (32, 32)))
            self.assertEqual(img.pixel(31, 31), tuple(img.tobytes()[-3:]))
        self.assertEqual(len(rgb(img)), 32 * 32 * 3)
        # the same seed again: the same pixels; another seed: others
        self.assertEqual(rgb(self.model.generate(seed=3, **SETTINGS)[0]), rgb(img))
        self.assertNotEqual(rgb(self.model.generate(seed=4, **SETTINGS)[0]), rgb(img))

    def test_init_latents(self):
        c, h, w = self.model.latent_shape()
        self.assertEqual((c, h, w), (3, 32, 32))   # a pixel-space model: latents are pixels
        noise = [((k * 7919) % 1000) / 500.0 - 1.0 for k in range(c * h * w)]
        a = self.model.generate(seed=1, init_latents=noise, **SETTINGS)[0]
        b = self.model.generate(seed=2, init_latents=noise, **SETTINGS)[0]
        self.assertEqual(rgb(a), rgb(b))   # the noise is given: the seed does not matter (eta 0)
        self.assertNotEqual(rgb(a), rgb(self.model.generate(seed=1, **SETTINGS)[0]))

    def test_progress_and_image_callbacks(self):
        seen, got = [], []
        self.model.generate(seed=1, num_images=2, progress=seen.append,
                            on_image=lambda im, i, seed: got.append((i, seed, len(rgb(im)))), **SETTINGS)
        self.assertEqual([(p.stage, p.step, p.total) for p in seen], [("sample", k, 8) for k in range(1, 9)])
        self.assertTrue(all(p.seconds_per_step >= 0 for p in seen))
        self.assertEqual(got, [(0, 1, 3072), (1, 2, 3072)])

    def test_cancel(self):
        steps = []
        with self.assertRaises(svdiff.Cancelled) as cm:
            self.model.generate(seed=1, num_images=2, progress=lambda p: steps.append(p.step),
                                cancel=lambda: len(steps) >= 2, **SETTINGS)
        self.assertEqual(cm.exception.code, svdiff.ERR_CANCELLED)
        self.assertLessEqual(len(steps), 3)
        # an exception in a callback stops the call and comes out of it
        def boom(p):
            raise KeyError("stop here")
        with self.assertRaises(KeyError):
            self.model.generate(seed=1, progress=boom, **SETTINGS)
        # Ctrl-C (SIGINT) during the C call: it stops at the next poll, then KeyboardInterrupt
        import signal
        import threading
        steps = []
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with self.assertRaises(KeyboardInterrupt):
                self.model.generate(seed=1, num_images=1000, progress=lambda p: steps.append(p.step), **SETTINGS)
        finally:
            timer.cancel()
        self.assertLess(len(steps), 4000)
        self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)
        # and the model still works
        self.assertEqual(len(self.model.generate(seed=1, **SETTINGS)), 1)



class GenerateSDXL(unittest.TestCase):
    """SDXL: the model's defaults (euler, cfg 5), micro-conditioning and clip skip as keywords give
    the bytes of `svdiff generate` with the same flags."""

    def test_same_png_bytes_as_cli(self):
        work = scratch("sdxl")
        cli("generate", "--model", TINY_SDXL, "--prompt", "a photo of a cat", "--steps", 2, "--seed", 3,
            "--original-size", "64,48", "--crops-coords-top-left", "4,2", "--negative-target-size", "8,8",
            "--clip-skip", 1, "--threads", 2, "--quiet", "-o", os.path.join(work, "cli.png"))
        with svdiff.Model(TINY_SDXL, threads=2) as model:
            self.assertEqual(model.info()["family"], "sdxl")
            images = model.generate("a photo of a cat", steps=2, seed=3, original_size=(64, 48),
                                    crops_coords_top_left=(4, 2), negative_target_size=(8, 8), clip_skip=1,
                                    output=os.path.join(work, "py.png"))
            self.assertIn("Sampler: euler, CFG scale: 5,", images.parameters[0])
            self.assertIn('Original size: "64,48", Crops coords top left: "4,2"', images.parameters[0])
            same_file(self, os.path.join(work, "py.png"), os.path.join(work, "cli.png"))
            with self.assertRaises(TypeError):
                model.generate("a cat", steps=1, original_sise=(8, 8))
            with self.assertRaises(ValueError):
                model.generate("a cat", steps=1, original_size=(8,))
            with self.assertRaises(svdiff.Error):
                model.generate("a cat", steps=1, target_size=(0, 8))

if __name__ == "__main__":
    unittest.main()
