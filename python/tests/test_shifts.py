"""svdiff.Shifts: load / save / entries, and the toolbox (combine, scale, limit_rank, mix) against
`svdiff shifts` on the toolbox fixtures: the same values, and the same file bytes where the CLI's
file carries nothing run-specific."""
import os
import unittest

import svdiff
from common import CLI, SOURCE, cli, expect_error, same_file, scratch

A = os.path.join(SOURCE, "tests", "fixtures", "toolbox", "a.safetensors")
B = os.path.join(SOURCE, "tests", "fixtures", "toolbox", "b.safetensors")
ZERO = os.path.join(SOURCE, "tests", "fixtures", "shifts", "zero")


def values(v):
    return [float(x) for x in v]


class Shifts(unittest.TestCase):
    def setUp(self):
        self.a, self.b = svdiff.Shifts.load(A), svdiff.Shifts.load(B)

    def tearDown(self):
        self.a.close(), self.b.close()

    def test_contents(self):
        self.assertEqual(len(self.a), 116)
        names = self.a.names()
        self.assertEqual(len(set(names)), 116)
        self.assertEqual(self.a.meta("base_model_hash"), "toolbox-fixture")
        self.assertIsNone(self.a.meta("no-such-key"))
        name, vals = self.a.entry(0)
        self.assertEqual(values(self.a[name]), values(vals))
        self.assertEqual(values(self.a[0]), values(vals))
        self.assertEqual(sum(len(v) for _, v in self.a), 672)
        if svdiff.have_numpy():
            self.assertEqual(str(vals.dtype), "float32")
        else:
            self.assertIsInstance(vals, list)
        with self.assertRaises(KeyError):
            self.a["no.such.layer"]
        with svdiff.Shifts.load(ZERO) as z:   # a folder: UNet then text-encoder entries
            names = z.names()
            self.assertTrue(any(n.startswith("text_model.") for n in names))
            self.assertFalse(names[0].startswith("text_model."))
            self.assertTrue(all(x == 0 for _, v in z for x in v))

    def test_scale_and_combine(self):
        half = self.a.scale(0.5)
        for (n1, v1), (n2, v2) in zip(self.a, half):
            self.assertEqual(n1, n2)
            self.assertEqual([x * 0.5 for x in values(v1)], values(v2))
        s = svdiff.Shifts.combine([self.a, self.b], weights=[1.0, -1.0])
        for (_, va), (_, vb), (_, vs) in zip(self.a, self.b, s):
            for x, y, z in zip(values(va), values(vb), values(vs)):
                self.assertAlmostEqual(x - y, z, places=5)
        self.assertEqual([values(v) for _, v in self.a + self.a], [values(v) for _, v in self.a * 2])
        with self.assertRaises(ValueError):
            svdiff.Shifts.combine([self.a, self.b], weights=[1.0])

    def test_save_load_round_trip(self):
        work = scratch("shifts-save")
        path = os.path.join(work, "a.safetensors")
        self.a.save(path)
        with svdiff.Shifts.load(path) as back:
            self.assertEqual([(n, values(v)) for n, v in back], [(n, values(v)) for n, v in self.a])
            self.assertEqual(back.meta("base_model_hash"), "toolbox-fixture")
        self.a.set_meta("note", "from python")
        self.assertEqual(self.a.meta("note"), "from python")
        self.a.save(os.path.join(work, "a16.safetensors"), fp16=True)
        self.assertLess(os.path.getsize(os.path.join(work, "a16.safetensors")), os.path.getsize(path))

    @unittest.skipUnless(CLI, "SVDIFF_CLI not set")
    def test_same_values_as_cli_toolbox(self):
        work = scratch("shifts-cli")
        cases = [
            (("scale", A, "0.25"), lambda: self.a.scale(0.25)),
            (("combine", A, B, "--weights", "0.5,2"), lambda: svdiff.Shifts.combine([self.a, self.b], [0.5, 2])),
            (("limit-rank", A, "2"), lambda: self.a.limit_rank(2)),
            (("mix", "--from", A, "--layers", "up_blocks.1", "--rest", B), lambda: svdiff.Shifts.mix(self.a, self.b, ["up_blocks.1"])),
        ]
        for k, (args, op) in enumerate(cases):
            out = os.path.join(work, "cli-%d.safetensors" % k)
            cli("shifts", *args, "-o", out)
            with svdiff.Shifts.load(out) as want, op() as got:
                self.assertEqual([(n, values(v)) for n, v in got], [(n, values(v)) for n, v in want], args[0])
        # with the CLI's history entry, the same bytes as `svdiff shifts scale / limit-rank`
        for args, op, hist in ((("scale", A, "0.25"), lambda: self.a.scale(0.25), "scale 0.25"),
                               (("limit-rank", A, "2"), lambda: self.a.limit_rank(2), "limit-rank 2")):
            cli_out, py_out = os.path.join(work, "cli-bytes.safetensors"), os.path.join(work, "py-bytes.safetensors")
            cli("shifts", *args, "-o", cli_out)
            with op() as got:
                got.add_history(hist).save(py_out)
            same_file(self, py_out, cli_out)
        r = self.a.limit_rank(2)
        self.assertGreater(r.kept_values, 0)
        self.assertLess(r.kept_values, 672)
        m = svdiff.Shifts.mix(self.a, self.b, "up_blocks.1")
        self.assertGreater(m.n_from, 0)
        self.assertLess(m.n_from, 116)

    def test_errors(self):
        expect_error(self, lambda: svdiff.Shifts.load(os.path.join(SOURCE, "models", "emoji-32", "model_index.json")),
                     contains="model_index.json")
        expect_error(self, lambda: svdiff.Shifts.mix(self.a, self.b, ["down_blocks.9"]), contains="down_blocks.9")
        with svdiff.Shifts.load(ZERO) as z:
            expect_error(self, lambda: svdiff.Shifts.combine([self.a, z]))   # other base model and other layers
        self.a.close()
        expect_error(self, lambda: len(self.a), svdiff.ERR_ARG, "closed")


if __name__ == "__main__":
    unittest.main()
