"""svdiff.describe_model (= `svdiff info --json` less timing), read_latents / write_latents (= the
files of `svdiff generate --save-latents`), psnr, check_output, FolderLock, and svdiff.pretrain
(= `svdiff pretrain`'s files byte for byte)."""
import math
import os
import subprocess
import sys
import unittest

import svdiff
from common import HERE, MODEL, SOURCE, TINY, cli, expect_error, read, same_file, scratch

TIMING = ("open_ms", "peak_rss_kb")
DOGS = os.path.join(SOURCE, "tests", "fixtures", "train", "images")


def cli_info(*args):
    import json
    d = json.loads(cli("info", *args, "--json").stdout.decode())
    for k in TIMING:
        d.pop(k, None)
    return d


class Tools(unittest.TestCase):
    def test_describe_model_equals_cli(self):
        for path in (TINY, MODEL):
            got = svdiff.describe_model(path)
            self.assertEqual(got, cli_info("--model", path), path)
            self.assertFalse(set(TIMING) & set(got))
        got = svdiff.describe_model(TINY, prediction_type="v_prediction")
        self.assertEqual(got, cli_info("--model", TINY, "--prediction-type", "v_prediction"))
        self.assertEqual(got["prediction_type"]["value"], "v_prediction")
        with svdiff.Model(TINY) as m:
            info = m.info()
        self.assertEqual(svdiff.describe_model(TINY)["components"]["unet"]["parameters"], info["unet_params"])
        expect_error(self, lambda: svdiff.describe_model(os.path.join(SOURCE, "no-such-model")), None, "no-such-model")

    def test_latents_as_generate_writes_them(self):
        out = scratch("latents")
        cli_file = os.path.join(out, "cli.safetensors")
        cli("generate", "--model", TINY, "--prompt", "a dog", "--steps", "2", "--width", "16", "--height", "16",
            "--seed", "3", "--num-images", "2", "--threads", "1", "-o", os.path.join(out, "a.png"),
            "--save-latents", cli_file)
        with svdiff.Model(TINY) as m:
            c, lh, lw = m.latent_shape(16, 16)
        lat = svdiff.read_latents(cli_file, (2, c, lh, lw))
        meta = {"prompt": "a dog", "seed": "3", "sampler": "ddim"}
        py_file = svdiff.write_latents(os.path.join(out, "py.safetensors"), lat,
                                       shape=None if svdiff.have_numpy() else (2, c, lh, lw), metadata=meta)
        same_file(self, py_file, cli_file)
        flat = list(lat.ravel()) if svdiff.have_numpy() else lat
        self.assertEqual(len(flat), 2 * c * lh * lw)
        # one row repeated for more images; a wrong shape refused
        one = svdiff.write_latents(os.path.join(out, "one.safetensors"), flat[:c * lh * lw], shape=(1, c, lh, lw))
        three = svdiff.read_latents(one, (3, c, lh, lw))
        three = list(three.ravel()) if svdiff.have_numpy() else three
        self.assertEqual(three, flat[:c * lh * lw] * 3)
        expect_error(self, lambda: svdiff.read_latents(cli_file, (2, c, lh + 1, lw)), svdiff.ERR_SHAPE)
        bad = list(flat[:c * lh * lw])
        bad[5] = float("nan")
        nan = svdiff.write_latents(os.path.join(out, "nan.safetensors"), bad, shape=(1, c, lh, lw))
        expect_error(self, lambda: svdiff.read_latents(nan, (1, c, lh, lw)), svdiff.ERR_FORMAT)
        with self.assertRaises(ValueError):
            svdiff.write_latents(os.path.join(out, "x.safetensors"), flat, shape=(3, c, lh, lw))
        expect_error(self, lambda: svdiff.write_latents(out, flat, shape=(2, c, lh, lw)), svdiff.ERR_IO, out)

    def test_psnr(self):
        a = svdiff.Image(2, 2, bytes(12))
        self.assertEqual(svdiff.psnr(a, a), math.inf)
        b = svdiff.Image(2, 2, bytes([1] * 12))
        self.assertAlmostEqual(svdiff.psnr(a, b), 10 * math.log10(255.0 ** 2), places=9)
        c = svdiff.Image(2, 2, bytes([0] * 11 + [12]))
        self.assertAlmostEqual(svdiff.psnr(a, c), 10 * math.log10(255.0 ** 2 / (144 / 12)), places=9)
        with self.assertRaises(ValueError):
            svdiff.psnr(a, svdiff.Image(1, 2, bytes(6)))

    def test_check_output_and_folder_lock(self):
        out = scratch("lock")
        self.assertEqual(svdiff.check_output(os.path.join(out, "new.png")), os.path.join(out, "new.png"))
        expect_error(self, lambda: svdiff.check_output(out), svdiff.ERR_IO, out)
        expect_error(self, lambda: svdiff.check_output("/dev/null"), svdiff.ERR_IO, "/dev/null")
        stale = os.path.join(out, "x.safetensors.tmp.999999")
        open(stale, "wb").close()
        code = "import svdiff, sys\ntry:\n    svdiff.FolderLock(sys.argv[1])\nexcept svdiff.Error as e:\n    print(e)\n    sys.exit(3)\n"
        env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
        with svdiff.FolderLock(out) as lock:
            self.assertFalse(os.path.exists(stale))
            p = subprocess.run([sys.executable, "-c", code, out], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.assertEqual(p.returncode, 3, p.stdout.decode())
            self.assertIn("another svdiff run (PID %d)" % os.getpid(), p.stdout.decode())
            self.assertEqual(lock.folder, out)
        p = subprocess.run([sys.executable, "-c", code, out], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        expect_error(self, lambda: svdiff.FolderLock(os.path.join(out, "missing")), svdiff.ERR_IO, "missing")

    def test_pretrain_equals_cli(self):
        out = scratch("pretrain")
        tsv = os.path.join(out, "captions.tsv")
        with open(tsv, "w") as f:
            f.write("path\tcaption\tsplit\n%s/dog1.png\tan emoji of a dog\ttrain\n%s/dog2.png\tan emoji of a dog face\n"
                    % (DOGS, DOGS))
        args = ["--resolution", "16", "--steps", "3", "--batch-size", "2", "--ema-decay", "0.9", "--save-dtype", "fp16",
                "--threads", "1", "--quiet"]
        cli("pretrain", "--model", TINY, "--data", tsv, *args, "-o", os.path.join(out, "cli"))
        steps = []
        got = svdiff.pretrain(TINY, os.path.join(out, "py"), tsv, resolution=16, steps=3, batch_size=2, ema_decay=0.9,
                              save_dtype="fp16", threads=1, progress=lambda p: steps.append((p.stage, p.step, p.total)))
        self.assertEqual(got, os.path.join(out, "py"))
        self.assertEqual(steps[-1], ("train", 3, 3))
        files = sorted(os.path.relpath(os.path.join(d, f), os.path.join(out, "cli"))
                       for d, _, fs in os.walk(os.path.join(out, "cli")) for f in fs)
        self.assertIn(os.path.join("unet", "diffusion_pytorch_model.safetensors"), files)
        self.assertEqual(files, sorted(os.path.relpath(os.path.join(d, f), os.path.join(out, "py"))
                                       for d, _, fs in os.walk(os.path.join(out, "py")) for f in fs))
        for f in files:   # every file but the lock (its pid) and loss.csv (its last column: seconds)
            if f == "loss.csv":
                rows = [[r.split(",")[:-1] for r in read(os.path.join(out, d, f)).decode().splitlines()]
                        for d in ("py", "cli")]
                self.assertEqual(len(rows[0]), 4)
                self.assertEqual(rows[0], rows[1])
            elif f != ".svdiff.lock":
                same_file(self, os.path.join(out, "py", f), os.path.join(out, "cli", f))
        expect_error(self, lambda: svdiff.pretrain(TINY, os.path.join(out, "bad"), tsv, steps=1, no_such_setting=1),
                     svdiff.ERR_ARG, "no-such-setting")
        expect_error(self, lambda: svdiff.pretrain(TINY, os.path.join(out, "bad"), os.path.join(out, "none.tsv"), steps=1),
                     None, "none.tsv")
        self.assertGreater(len(read(os.path.join(out, "py", "unet", "diffusion_pytorch_model.safetensors"))), 0)


if __name__ == "__main__":
    unittest.main()
