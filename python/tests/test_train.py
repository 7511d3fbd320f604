"""svdiff.train against `svdiff train`: the same shift-file bytes for the same settings (named
fields and "name=value" settings), images from a folder or in memory, progress per step, cancel
within one step with a checkpoint that resumes to the same bytes."""
import os
import unittest

import svdiff
from common import MODEL, SUBJECT, cli, expect_error, read, same_file, scratch

PROMPT = "an emoji of sks cat"
CLI_ARGS = ["--model", MODEL, "--instance-prompt", PROMPT, "--steps", 4, "--threads", 2, "--svd-cache", "none",
            "--lr-schedule", "cosine", "--warmup", 1, "--seed", 3, "--quiet"]
KW = dict(model=MODEL, instance_prompt=PROMPT, steps=4, threads=2, svd_cache_dir="", lr_schedule="cosine", warmup=1,
          seed=3)
SHIFTS = "spectral_shifts.safetensors"


class Train(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = scratch("train")
        cls.cli_out = os.path.join(cls.work, "cli")
        cli("train", *CLI_ARGS, "--instance-dir", SUBJECT, "-o", cls.cli_out)
        cls.want = read(os.path.join(cls.cli_out, SHIFTS))

    def test_same_shift_bytes_as_cli(self):
        out = os.path.join(self.work, "py")
        seen = []
        self.assertEqual(svdiff.train(instance_dir=SUBJECT, output_dir=out, progress=seen.append, **KW), out)
        same_file(self, os.path.join(out, SHIFTS), os.path.join(self.cli_out, SHIFTS))
        self.assertEqual(read(os.path.join(out, "loss.csv")).count(b"\n"), read(os.path.join(self.cli_out, "loss.csv")).count(b"\n"))
        train_steps = [(p.step, p.total) for p in seen if p.stage == "train"]
        self.assertEqual(train_steps, [(k, 4) for k in range(1, 5)])
        # the output loads as a shift set and applies to the model it was trained on
        with svdiff.Shifts.load(out) as s, svdiff.Model(MODEL, threads=2, svd_cache_dir="") as m:
            self.assertEqual(s.meta("base_model_hash"), m.info()["weights_hash"])
            m.apply_shifts(s)

    def test_images_in_memory(self):
        names = sorted(f for f in os.listdir(SUBJECT) if f.endswith(".png"))
        images = [svdiff.read_image(os.path.join(SUBJECT, f)) for f in names]
        out = os.path.join(self.work, "memory")
        svdiff.train(instance_images=images, output_dir=out, **KW)
        same_file(self, os.path.join(out, SHIFTS), os.path.join(self.cli_out, SHIFTS))

    def test_cancel_and_resume(self):
        out = os.path.join(self.work, "cancel")
        steps = []
        with self.assertRaises(svdiff.Cancelled):
            svdiff.train(instance_dir=SUBJECT, output_dir=out, checkpoint_every=1,
                         progress=lambda p: steps.append(p.step) if p.stage == "train" else None,
                         cancel=lambda: len(steps) >= 2, **KW)
        self.assertIn(len(steps), (2, 3))   # stopped within one step of asking
        self.assertFalse(os.path.exists(os.path.join(out, SHIFTS)) and read(os.path.join(out, SHIFTS)) == self.want)
        svdiff.train(instance_dir=SUBJECT, output_dir=out, checkpoint_every=1, resume=True, **KW)
        same_file(self, os.path.join(out, SHIFTS), os.path.join(self.cli_out, SHIFTS))

    def test_bad_setting(self):
        expect_error(self, lambda: svdiff.train(instance_dir=SUBJECT, output_dir=os.path.join(self.work, "bad"),
                                                no_such_setting=3, **KW), svdiff.ERR_ARG, "no-such-setting")
        expect_error(self, lambda: svdiff.train(instance_dir=os.path.join(self.work, "missing"),
                                                output_dir=os.path.join(self.work, "bad2"), **KW), contains="missing")
        with self.assertRaises(ValueError):
            svdiff.train(output_dir=os.path.join(self.work, "bad3"), **KW)


if __name__ == "__main__":
    unittest.main()
