#!/usr/bin/env python3
"""Tests of scripts/emoji_dataset.py (the emoji data set of issue 7) on a synthetic emoji.json,
synthetic CLDR files and synthetic 2108x2108 sheets: slicing, compositing on white, captions,
hold-out rules, the reserved identifier, the sha512 check, and that the Apple/Facebook images are
never extracted or opened. When data/emoji/ has been built, sanity checks on the real data too.
Exit 77 (ctest SKIP_RETURN_CODE) without python3-pil."""
import base64
import builtins
import csv
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import unittest

SRC = os.environ.get("SVDIFF_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SRC, "scripts"))
try:
    from PIL import Image
except ImportError:
    print("SKIP: python3-pil is not installed (apt-get install python3-pil)")
    sys.exit(77)
import emoji_dataset as ed  # noqa: E402

DATA = os.path.join(SRC, "data", "emoji")

# Synthetic emoji.json: (unified, sheet_x, sheet_y, name, short_name, subcategory, skin variations)
# where a skin variation is (tones key, unified, sheet_x, sheet_y, has google, has twitter).
SYNTH = [
    ("1F600", 0, 0, "GRINNING FACE", "grinning", "face-smiling", []),
    ("1F431", 1, 0, "CAT FACE", "cat", "animal-mammal", []),
    ("1F63A", 2, 0, "SMILING CAT FACE WITH OPEN MOUTH", "smiley_cat", "cat-face", []),
    ("1F638", 3, 0, "GRINNING CAT FACE WITH SMILING EYES", "smile_cat", "cat-face", []),
    ("1F63C", 4, 0, "CAT FACE WITH WRY SMILE", "smirk_cat", "cat-face", []),
    ("1F408-200D-2B1B", 5, 0, "BLACK CAT", "black_cat", "animal-mammal", []),
    ("1F648", 6, 0, "SEE-NO-EVIL MONKEY", "see_no_evil", "monkey-face", []),
    ("1F98D", 7, 0, "GORILLA", "gorilla", "animal-mammal", []),
    ("1F3C4-200D-2640-FE0F", 8, 0, None, "woman-surfing", "person-sport",
     [("1F3FB", "1F3C4-1F3FB-200D-2640-FE0F", 9, 0, True, True),
      ("1F3FF", "1F3C4-1F3FF-200D-2640-FE0F", 10, 0, True, False)]),
    ("1FAE8", 0, 61, "SHAKING FACE", "shaking_face", "face-neutral-skeptical",   # last row of the sheet
     [("1F3FD", "1FAE8-1F3FD", 61, 61, True, True)]),                              # (a made-up skin tone)
    ("1F4A9", 11, 0, "PILE OF POO", "sks_poo", "face-costume", []),                 # short_name not in caption
]
CLDR_EN = """<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
<annotation cp="😀">face | grin | grinning face</annotation>
<annotation cp="😀" type="tts">grinning face</annotation>
<annotation cp="🐱">cat | face | pet</annotation>
<annotation cp="🐱" type="tts">cat face</annotation>
<annotation cp="😺" type="tts">grinning cat</annotation>
<annotation cp="😸" type="tts">grinning cat with smiling eyes</annotation>
<annotation cp="😼" type="tts">cat with wry smile</annotation>
<annotation cp="🙈" type="tts">see-no-evil monkey</annotation>
<annotation cp="🦍" type="tts">gorilla</annotation>
<annotation cp="💩" type="tts">pile of poo</annotation>
</annotations></ldml>
"""
CLDR_DERIVED = """<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
<annotation cp="😀" type="tts">NOT THIS ONE (the base file wins)</annotation>
<annotation cp="🐈‍⬛" type="tts">black cat</annotation>
<annotation cp="🏄‍♀" type="tts">woman surfing</annotation>
<annotation cp="🏄🏻‍♀" type="tts">woman surfing: light skin tone</annotation>
</annotations></ldml>
"""
EXPECT_HOLDOUT = {"1F431", "1F63A", "1F638", "1F63C", "1F408-200D-2B1B", "1F648", "1F3C4-200D-2640-FE0F",
                  "1F3C4-1F3FB-200D-2640-FE0F", "1F3C4-1F3FF-200D-2640-FE0F"}


def cell_colour(vendor, x, y):
    return (10 + 20 * x % 200, 30 + 3 * y, 200 if vendor == "google" else 100, 255)


def make_sheet(vendor):
    """2108x2108 RGBA: every used cell gets a 1 px magenta border (which must not leak into a slice),
    a solid interior, and a half-transparent blue pixel at the interior's top-left corner; the rest
    of the sheet stays transparent."""
    im = Image.new("RGBA", (ed.SHEET_SIZE, ed.SHEET_SIZE), (0, 0, 0, 0))
    px = im.load()
    cells = [(e[1], e[2]) for e in SYNTH] + [(s[2], s[3]) for e in SYNTH for s in e[6]]
    for cx, cy in cells:
        x0, y0 = cx * ed.CELL, cy * ed.CELL
        for y in range(y0, y0 + ed.CELL):
            for x in range(x0, x0 + ed.CELL):
                inner = x0 < x < x0 + ed.CELL - 1 and y0 < y < y0 + ed.CELL - 1
                px[x, y] = cell_colour(vendor, cx, cy) if inner else (255, 0, 255, 255)
        px[x0 + 1, y0 + 1] = (0, 0, 255, 128)
        px[x0 + 2, y0 + 1] = (0, 0, 0, 0)
    return im


def make_emoji_json():
    out = []
    for u, x, y, name, short, sub, skins in SYNTH:
        e = {"name": name, "unified": u, "sheet_x": x, "sheet_y": y, "short_name": short, "category": "Test",
             "subcategory": sub, "has_img_apple": True, "has_img_google": True, "has_img_twitter": True,
             "has_img_facebook": True}
        if skins:
            e["skin_variations"] = {k: {"unified": su, "sheet_x": sx, "sheet_y": sy, "has_img_google": g,
                                        "has_img_twitter": t, "has_img_apple": True}
                                    for k, su, sx, sy, g, t in skins}
        out.append(e)
    return out


class Synthetic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="svdiff-emoji-")
        pkg = os.path.join(cls.tmp, "src", "package")
        for v in ("google", "twitter", "apple", "facebook"):
            os.makedirs(os.path.join(pkg, "img", v, "sheets"))
        for v in ed.VENDORS:
            make_sheet(v).save(os.path.join(pkg, "img", v, "sheets", "32.png"))
        for v in ed.FORBIDDEN_VENDORS:   # not even PNGs: any attempt to decode them would fail loudly
            with open(os.path.join(pkg, "img", v, "sheets", "32.png"), "wb") as f:
                f.write(b"forbidden " + v.encode())
        with open(os.path.join(pkg, "emoji.json"), "w") as f:
            json.dump(make_emoji_json(), f)
        with open(os.path.join(pkg, "LICENSE"), "w") as f:
            f.write("MIT\n")
        cls.pkg = pkg
        cls.tarball = os.path.join(cls.tmp, "emoji-datasource-16.0.0.tgz")
        with tarfile.open(cls.tarball, "w:gz") as t:
            t.add(pkg, arcname="package")
        cls.cldr = []
        for name, text in (("en.xml", CLDR_EN), ("en-derived.xml", CLDR_DERIVED)):
            p = os.path.join(cls.tmp, name)
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            cls.cldr.append(p)
        # The build, with every file open recorded.
        cls.opened = []
        real_open = builtins.open

        def spy(file, *a, **k):
            cls.opened.append(os.fspath(file) if isinstance(file, (str, bytes, os.PathLike)) else file)
            return real_open(file, *a, **k)
        cls.out = os.path.join(cls.tmp, "out", "emoji")
        cls.demo = os.path.join(cls.tmp, "demo", "cat")
        builtins.open = spy
        try:
            cls.summary = ed.build(pkg, cls.cldr, cls.out, cls.demo, log=lambda *a: None)
        finally:
            builtins.open = real_open
        with open(os.path.join(cls.out, "captions.tsv"), encoding="utf-8") as f:
            cls.rows = list(csv.DictReader(f, delimiter="\t"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_extract_only_named_members(self):
        dest = os.path.join(self.tmp, "extract")
        ed.extract_members(self.tarball, dest)
        self.assertEqual(ed.extracted_files(dest), sorted(ed.MEMBERS))
        for v in ed.FORBIDDEN_VENDORS:
            self.assertFalse(any(v in m for m in ed.MEMBERS))
        with open(os.path.join(dest, "package", "emoji.json")) as f:
            self.assertEqual(len(json.load(f)), len(SYNTH))

    def test_extract_fails_on_missing_member(self):
        bad = os.path.join(self.tmp, "bad.tgz")
        with tarfile.open(bad, "w:gz") as t:
            t.add(os.path.join(self.pkg, "emoji.json"), arcname="package/emoji.json")
        with self.assertRaises(RuntimeError):
            ed.extract_members(bad, os.path.join(self.tmp, "extract-bad"))

    def test_never_reads_apple_or_facebook(self):
        paths = [p for p in self.opened if isinstance(p, str)]
        self.assertTrue(any(p.endswith("google/sheets/32.png") for p in paths), paths)
        for v in ed.FORBIDDEN_VENDORS:
            self.assertFalse([p for p in paths if "/%s/" % v in p], "opened a %s file" % v)
            with self.assertRaises(PermissionError):
                ed.check_allowed(os.path.join(self.pkg, "img", v, "sheets", "32.png"))
            with self.assertRaises(PermissionError):
                ed.load_sheet(self.pkg, v)

    def test_integrity(self):
        with open(self.tarball, "rb") as f:
            good = "sha512-" + base64.b64encode(hashlib.sha512(f.read()).digest()).decode()
        ed.verify_integrity(self.tarball, good)
        bad = good[:-6] + ("AAAA==" if not good.endswith("AAAA==") else "BBBB==")
        with self.assertRaises(ValueError):
            ed.verify_integrity(self.tarball, bad)

    def test_counts_and_files(self):
        n = len(SYNTH) + sum(len(e[6]) for e in SYNTH)   # google has every image
        self.assertEqual(self.summary["vendors"], {"google": n, "twitter": n - 1})   # one skin tone lacks twitter
        self.assertEqual(len(self.rows), 2 * n - 1)
        self.assertFalse(os.path.exists(self.out + ".tmp"))
        for r in self.rows:
            self.assertEqual(r["path"], "images/%s/%s.png" % (r["vendor"], r["unified"]))
            self.assertTrue(os.path.isfile(os.path.join(self.out, r["path"])))
        self.assertFalse(os.path.exists(os.path.join(self.out, "images", "twitter", "1F3C4-1F3FF-200D-2640-FE0F.png")))
        with open(os.path.join(self.out, "pretrain.tsv"), encoding="utf-8") as f:
            pre = [line.rstrip("\n").split("\t") for line in f]
        self.assertEqual(pre[0], ["path", "caption"])
        self.assertEqual(pre[1:], [[r["path"], r["caption"]] for r in self.rows if r["split"] == "train"])
        self.assertEqual(len(pre) - 1, self.summary["splits"]["train"])

    def test_slicing_and_composite(self):
        for r in self.rows:
            u, v = r["unified"], r["vendor"]
            x, y = next((e[1], e[2]) for e in SYNTH if e[0] == u) if any(e[0] == u for e in SYNTH) else \
                next((s[2], s[3]) for e in SYNTH for s in e[6] if s[1] == u)
            im = Image.open(os.path.join(self.out, r["path"]))
            self.assertEqual((im.size, im.mode), ((32, 32), "RGB"))
            want = cell_colour(v, x, y)[:3]
            px = im.load()
            self.assertEqual(px[5, 5], want)
            self.assertEqual(px[31, 31], want)          # the border (magenta) never leaks in
            self.assertEqual(px[0, 31], want)
            self.assertEqual(px[1, 0], (255, 255, 255))  # transparent -> white
            for c, w in zip(px[0, 0], (127, 127, 255)):  # half-transparent blue over white
                self.assertLessEqual(abs(c - w), 1)

    def test_cell_outside_sheet(self):
        sheet = Image.new("RGBA", (ed.SHEET_SIZE, ed.SHEET_SIZE))
        ed.cell_image(sheet, 61, 61)
        with self.assertRaises(ValueError):
            ed.cell_image(sheet, 62, 0)

    def test_captions(self):
        cap = {(r["vendor"], r["unified"]): r["caption"] for r in self.rows}
        self.assertEqual(cap["google", "1F600"], "an emoji of grinning face, face-smiling, google style")
        self.assertEqual(cap["twitter", "1F600"], "an emoji of grinning face, face-smiling, twitter style")
        self.assertEqual(cap["google", "1F408-200D-2B1B"], "an emoji of black cat, animal-mammal, google style")
        self.assertEqual(cap["google", "1F3C4-1F3FB-200D-2640-FE0F"],
                         "an emoji of woman surfing: light skin tone, person-sport, google style")
        # not in CLDR: emoji.json's name, with CLDR-style tone names for a skin variation
        self.assertEqual(cap["google", "1FAE8"], "an emoji of shaking face, face-neutral-skeptical, google style")
        self.assertEqual(cap["twitter", "1FAE8-1F3FD"],
                         "an emoji of shaking face: medium skin tone, face-neutral-skeptical, twitter style")
        # no name anywhere: the short name
        self.assertEqual(cap["google", "1F3C4-1F3FF-200D-2640-FE0F"],
                         "an emoji of woman-surfing: dark skin tone, person-sport, google style")
        self.assertEqual(self.summary["name_source"], {"cldr": 22, "emoji.json": 5})

    def test_holdout(self):
        for v in ed.VENDORS:
            held = {r["unified"] for r in self.rows if r["vendor"] == v and r["split"] == "holdout"}
            want = EXPECT_HOLDOUT - ({"1F3C4-1F3FF-200D-2640-FE0F"} if v == "twitter" else set())
            self.assertEqual(held, want)
        self.assertEqual({r["split"] for r in self.rows}, {"train", "holdout"})
        self.assertEqual(ed.holdout_group("1F98D"), None)          # gorilla: an ape, trained on
        self.assertEqual(ed.holdout_group("1F3C4-1F3FE-200D-2642-FE0F"), "surfer")
        self.assertEqual(ed.holdout_group("1f408"), "cat")

    def test_demo_subjects(self):
        for v in ed.VENDORS:
            got = sorted(os.listdir(os.path.join(self.demo, v)))
            self.assertEqual(got, sorted(u + ".png" for u in ed.DEMO_CATS))
            for u in ed.DEMO_CATS:
                self.assertEqual(ed.holdout_group(u), "cat")
                with open(os.path.join(self.demo, v, u + ".png"), "rb") as a, \
                        open(os.path.join(self.out, "images", v, u + ".png"), "rb") as b:
                    self.assertEqual(a.read(), b.read())

    def test_reserved_identifier(self):
        ed.check_captions(["an emoji of cat face, animal-mammal, google style"])
        for bad in ("an emoji of sks cat, google style", "an emoji of SKS, x", "an emoji of masks, x",
                    "tab\there", "an emoji of sks"):
            with self.assertRaises(ValueError, msg=bad):
                ed.check_captions([bad])
        self.assertFalse(any("sks" in r["caption"] for r in self.rows))
        self.assertEqual(ed.clip_pieces("Keycap: 10, it's"), ["keycap", ":", "1", "0", ",", "it", "'s"])


class RealData(unittest.TestCase):
    """Sanity checks on data/emoji/ when scripts/build-emoji-dataset.sh has been run."""

    @classmethod
    def setUpClass(cls):
        path = os.path.join(DATA, "captions.tsv")
        if not os.path.exists(path):
            raise unittest.SkipTest("data/emoji/ not built (scripts/build-emoji-dataset.sh)")
        with open(path, encoding="utf-8") as f:
            cls.rows = list(csv.DictReader(f, delimiter="\t"))

    def test_counts(self):
        with open(os.path.join(DATA, "pretrain.tsv"), encoding="utf-8") as f:
            pre = [line.rstrip("\n").split("\t") for line in f][1:]
        self.assertEqual(pre, [[r["path"], r["caption"]] for r in self.rows if r["split"] == "train"])
        for v in ed.VENDORS:
            self.assertEqual(sum(r["vendor"] == v for r in self.rows), 3786, v)
        self.assertEqual(len({(r["vendor"], r["unified"]) for r in self.rows}), len(self.rows))

    def test_holdout(self):
        held = sorted({r["short_name"] for r in self.rows if r["split"] == "holdout"})
        self.assertEqual(held, sorted([
            "cat", "cat2", "black_cat", "smile_cat", "joy_cat", "smiley_cat", "heart_eyes_cat", "smirk_cat",
            "kissing_cat", "scream_cat", "crying_cat_face", "pouting_cat", "monkey_face", "monkey",
            "see_no_evil", "hear_no_evil", "speak_no_evil", "surfer", "man-surfing", "woman-surfing"]))
        for v in ed.VENDORS:
            self.assertEqual(sum(r["vendor"] == v and r["split"] == "holdout" for r in self.rows), 35)
        for r in self.rows:   # nothing cat-, monkey- or surf-named is left in training
            words = set(r["caption"].replace(",", " ").replace(":", " ").split())
            if r["split"] == "train":
                self.assertFalse(words & {"cat", "monkey", "surfing"}, r["caption"])

    def test_captions(self):
        ed.check_captions(r["caption"] for r in self.rows)
        for r in self.rows:
            self.assertTrue(r["caption"].startswith("an emoji of "), r["caption"])
            self.assertTrue(r["caption"].endswith(", %s style" % r["vendor"]), r["caption"])
            self.assertLess(len(ed.clip_pieces(r["caption"])), 60, r["caption"])

    def test_images(self):
        sample = [r for k, r in enumerate(self.rows) if k % 37 == 0 or r["split"] == "holdout"]
        for r in sample:
            im = Image.open(os.path.join(DATA, r["path"]))
            self.assertEqual((im.size, im.mode), ((32, 32), "RGB"), r["path"])
            lo, hi = im.convert("L").getextrema()
            self.assertLess(lo, hi, r["path"])   # not a blank cell
        demo = os.path.join(SRC, "models", "demo-subjects", "cat")
        for v in ed.VENDORS:
            for u in ed.DEMO_CATS:
                with open(os.path.join(demo, v, u + ".png"), "rb") as a:
                    im = Image.open(io.BytesIO(a.read()))
                    self.assertEqual((im.size, im.mode), ((32, 32), "RGB"))


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)
