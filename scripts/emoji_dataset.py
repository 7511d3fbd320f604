#!/usr/bin/env python3
"""The emoji data set of the embedded default model (issue 7): slices the Google (Noto) and Twitter
(Twemoji) 32 px sheets of emoji-datasource into one PNG per emoji, captions them from CLDR names,
and marks the personalisation subjects (cats, monkeys, surfers) as held out of pretraining.

scripts/build-emoji-dataset.sh fetches the package and calls `build` here; the functions are also
imported by tests/test_emoji_dataset.py. Only the standard library and PIL (python3-pil).

The package also carries Apple and Facebook sheets, whose licences forbid this use: they are never
extracted or opened (extract_members() names its members, open_package_file() refuses them).
"""
import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

PACKAGE = "emoji-datasource"
VERSION = "16.0.0"
VENDORS = ("google", "twitter")
# The only members ever taken out of the tarball.
MEMBERS = ("package/emoji.json",) + tuple("package/img/%s/sheets/32.png" % v for v in VENDORS)
FORBIDDEN_VENDORS = ("apple", "facebook")

SHEET_SIZE = 2108      # px, square, RGBA
CELL = 34              # a 32 px image with a 1 px border on each side
IMAGE = 32

# Held out of pretraining: they are the subjects personalisation must learn. Matched on the first
# code point of an emoji's `unified`, so every skin tone, gender and ZWJ form goes with its base.
HOLDOUT = {
    # cat faces (emoji.json subcategory "cat-face") ...
    "1F638": "cat", "1F639": "cat", "1F63A": "cat", "1F63B": "cat", "1F63C": "cat",
    "1F63D": "cat", "1F63E": "cat", "1F63F": "cat", "1F640": "cat",
    # ... and the cat itself: cat face, cat (and black cat = 1F408 ZWJ black large square)
    "1F431": "cat", "1F408": "cat",
    # monkeys: monkey face, monkey, and the three wise monkeys (subcategory "monkey-face");
    # gorilla and orangutan are apes and stay in training
    "1F435": "monkey", "1F412": "monkey", "1F648": "monkey", "1F649": "monkey", "1F64A": "monkey",
    # surfers: person / man / woman surfing, every skin tone
    "1F3C4": "surfer",
}
# The demo's subject images (models/demo-subjects/cat/{vendor}/): four held-out cats that leave
# heart eyes and crying (the quick start's novel prompts) unseen.
DEMO_CATS = ("1F431", "1F63A", "1F638", "1F63C")

RESERVED = "sks"       # the personalisation identifier: must never occur in a caption
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}


def die(msg):
    sys.stderr.write("emoji_dataset: %s\n" % msg)
    sys.exit(1)


# --------------------------------------------------------------------------- package


def sri_sha512(path):
    """The npm `dist.integrity` string ("sha512-<base64>") of a file."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def verify_integrity(tarball, integrity):
    got = sri_sha512(tarball)
    if got != integrity.strip():
        raise ValueError("%s: sha512 mismatch: got %s, expected %s" % (tarball, got, integrity))


def check_allowed(path):
    """Refuses any path of the Apple or Facebook images (their licences forbid reading them)."""
    parts = re.split(r"[\\/]", path)
    for v in FORBIDDEN_VENDORS:
        if v in parts:
            raise PermissionError("%s: the %s images may not be read (licence)" % (path, v))
    return path


def extract_members(tarball, dest):
    """Extracts exactly MEMBERS into dest with tar (explicit member names: nothing else is written,
    so the Apple and Facebook sheets never leave the archive). Returns the extracted paths."""
    for m in MEMBERS:
        check_allowed(m)
    os.makedirs(dest, exist_ok=True)
    r = subprocess.run(["tar", "-xzf", tarball, "-C", dest, "--no-same-owner", "--no-same-permissions", "--"]
                       + list(MEMBERS), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError("tar failed on %s: %s" % (tarball, r.stderr.strip()))
    return [os.path.join(dest, m) for m in MEMBERS]


def extracted_files(root):
    """Every regular file under root, relative, sorted (what the extraction left on disk)."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/"))
    return sorted(out)


def open_package_file(pkg_dir, rel):
    return open(check_allowed(os.path.join(pkg_dir, rel)), "rb")


# --------------------------------------------------------------------------- CLDR names


def emoji_string(unified):
    return "".join(chr(int(c, 16)) for c in unified.split("-"))


def load_cldr(paths):
    """{emoji string: (tts name, [keywords])} from CLDR annotation files; earlier files win (the
    base annotations before annotationsDerived)."""
    names = {}
    for path in paths:
        root = ET.parse(path).getroot()
        for a in root.iter("annotation"):
            cp, text = a.get("cp"), (a.text or "").strip()
            if not cp or not text or text == "↑↑↑":
                continue
            tts, kw = names.get(cp, (None, None))
            if a.get("type") == "tts":
                tts = tts or text
            else:
                kw = kw or [k.strip() for k in text.split("|") if k.strip()]
            names[cp] = (tts, kw)
    return names


def cldr_lookup(cldr, unified, non_qualified=None):
    """(tts, keywords) or (None, None). CLDR keys mostly drop the variation selector FE0F."""
    keys = [unified, "-".join(c for c in unified.split("-") if c != "FE0F")]
    if non_qualified:
        keys.append(non_qualified)
    for k in keys:
        hit = cldr.get(emoji_string(k))
        if hit and hit[0]:
            return hit
    return None, None


# --------------------------------------------------------------------------- entries and captions


def holdout_group(unified):
    return HOLDOUT.get(unified.split("-")[0].upper())


def fallback_name(entry, tone_keys=None):
    """emoji.json's name ("GRINNING FACE" -> "grinning face"), with CLDR-style skin tones."""
    name = (entry.get("name") or entry.get("short_name") or entry["unified"]).lower()
    if tone_keys:
        name += ": " + ", ".join(SKIN_TONES.get(t.upper(), t) for t in tone_keys.split("-"))
    return name


def caption(name, subcategory, vendor):
    # The name says what it is, emoji.json's subcategory ("face-smiling", "animal-mammal") groups
    # similar emoji in a few words; CLDR keywords would double the length for little (CLIP: 77 tokens).
    parts = ["an emoji of " + name.lower()]
    if subcategory:
        parts.append(subcategory.lower())
    parts.append("%s style" % vendor)
    text = ", ".join(parts)
    return re.sub(r"\s+", " ", text).strip()


def entries(emoji, cldr):
    """Every image of emoji.json (base emoji and skin variations) as dicts with unified, sheet_x/y,
    has_img_{vendor}, name (CLDR tts or fallback), name_source, category, subcategory, short_name."""
    out = []
    for e in emoji:
        base = {"category": e.get("category", ""), "subcategory": e.get("subcategory", ""),
                "short_name": e.get("short_name", "")}
        tts, _ = cldr_lookup(cldr, e["unified"], e.get("non_qualified"))
        out.append(dict(base, unified=e["unified"], sheet_x=e["sheet_x"], sheet_y=e["sheet_y"],
                        name=tts or fallback_name(e), name_source="cldr" if tts else "emoji.json",
                        **{"has_img_" + v: bool(e.get("has_img_" + v)) for v in VENDORS}))
        for tones, s in sorted((e.get("skin_variations") or {}).items()):
            tts, _ = cldr_lookup(cldr, s["unified"], s.get("non_qualified"))
            out.append(dict(base, unified=s["unified"], sheet_x=s["sheet_x"], sheet_y=s["sheet_y"],
                            name=tts or fallback_name(e, tones), name_source="cldr" if tts else "emoji.json",
                            **{"has_img_" + v: bool(s.get("has_img_" + v)) for v in VENDORS}))
    return out


def clip_pieces(text):
    """CLIP's pre-tokenisation (lower-case; contractions, letter runs, single digits, other runs):
    BPE only merges inside a piece, so a piece that does not contain RESERVED cannot produce its
    token, and the piece count is a lower bound of the token count."""
    return re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", text.lower())


def check_captions(captions):
    """Raises if a caption contains the reserved identifier anywhere (as a word or inside one), a
    tab or a newline. Returns the largest piece count."""
    longest = 0
    for c in captions:
        if "\t" in c or "\n" in c:
            raise ValueError("caption with a tab or newline: %r" % c)
        if RESERVED in c.lower() or any(RESERVED in p for p in clip_pieces(c)):
            raise ValueError("caption contains the reserved identifier %r: %r" % (RESERVED, c))
        longest = max(longest, len(clip_pieces(c)))
    return longest


# --------------------------------------------------------------------------- slicing


def cell_image(sheet, sheet_x, sheet_y):
    """The 32x32 image of a cell, composited on white, RGB."""
    from PIL import Image
    x, y = sheet_x * CELL + 1, sheet_y * CELL + 1
    if x + IMAGE > sheet.width or y + IMAGE > sheet.height:
        raise ValueError("cell (%d, %d) lies outside the %dx%d sheet" % (sheet_x, sheet_y, sheet.width, sheet.height))
    rgba = sheet.crop((x, y, x + IMAGE, y + IMAGE))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def load_sheet(pkg_dir, vendor):
    from PIL import Image
    if vendor not in VENDORS:
        raise PermissionError("vendor %r is not one of %s" % (vendor, VENDORS))
    with open_package_file(pkg_dir, "img/%s/sheets/32.png" % vendor) as f:
        sheet = Image.open(f)
        sheet.load()
    if sheet.size != (SHEET_SIZE, SHEET_SIZE):
        raise ValueError("%s sheet is %dx%d, expected %dx%d" % (vendor, *sheet.size, SHEET_SIZE, SHEET_SIZE))
    return sheet.convert("RGBA")


def build(pkg_dir, cldr_paths, out_dir, demo_dir=None, log=print):
    """Writes out_dir/images/{vendor}/{unified}.png, out_dir/captions.tsv (every image: path, caption,
    vendor, unified, category, short_name, split), out_dir/pretrain.tsv (the train split as
    path<TAB>caption) and out_dir/summary.json (built in out_dir.tmp, then renamed). Copies DEMO_CATS to demo_dir/{vendor}/ when given.
    Returns the summary dict."""
    t0 = time.time()
    with open_package_file(pkg_dir, "emoji.json") as f:
        emoji = json.load(f)
    cldr = load_cldr(cldr_paths)
    items = entries(emoji, cldr)
    seen = set()
    for it in items:
        if it["unified"] in seen:
            raise ValueError("emoji.json lists %s twice" % it["unified"])
        seen.add(it["unified"])

    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    summary = {"package": "%s@%s" % (PACKAGE, VERSION), "vendors": {}, "splits": {}, "holdout": {},
               "name_source": {}, "reserved_identifier": RESERVED}
    for vendor in VENDORS:
        sheet = load_sheet(pkg_dir, vendor)
        os.makedirs(os.path.join(tmp, "images", vendor))
        n = 0
        for it in items:
            if not it["has_img_" + vendor]:
                continue
            rel = "images/%s/%s.png" % (vendor, it["unified"])
            cell_image(sheet, it["sheet_x"], it["sheet_y"]).save(os.path.join(tmp, rel), optimize=True)
            group = holdout_group(it["unified"])
            split = "holdout" if group else "train"
            rows.append((rel, caption(it["name"], it["subcategory"], vendor), vendor, it["unified"],
                         it["category"], it["short_name"], split))
            summary["splits"][split] = summary["splits"].get(split, 0) + 1
            if group:
                summary["holdout"][group] = summary["holdout"].get(group, 0) + 1
            summary["name_source"][it["name_source"]] = summary["name_source"].get(it["name_source"], 0) + 1
            n += 1
        summary["vendors"][vendor] = n
    summary["max_clip_pieces"] = check_captions([r[1] for r in rows])
    with open(os.path.join(tmp, "captions.tsv"), "w", encoding="utf-8") as f:
        f.write("path\tcaption\tvendor\tunified\tcategory\tshort_name\tsplit\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    # What pretraining reads (`svdiff pretrain --data`: "path<TAB>caption" lines): the train split only.
    with open(os.path.join(tmp, "pretrain.tsv"), "w", encoding="utf-8") as f:
        f.write("path\tcaption\n")
        for r in rows:
            if r[6] == "train":
                f.write(r[0] + "\t" + r[1] + "\n")
    size = 0
    for d, _, files in os.walk(tmp):
        size += sum(os.path.getsize(os.path.join(d, x)) for x in files)
    summary["bytes"] = size
    summary["seconds"] = round(time.time() - t0, 2)
    with open(os.path.join(tmp, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)

    if demo_dir:
        for vendor in VENDORS:
            vd = os.path.join(demo_dir, vendor)
            os.makedirs(vd, exist_ok=True)
            for u in DEMO_CATS:
                src = os.path.join(out_dir, "images", vendor, u + ".png")
                if not os.path.exists(src):
                    raise FileNotFoundError("demo subject %s has no %s image" % (u, vendor))
                shutil.copyfile(src, os.path.join(vd, u + ".png"))
    log("emoji data set: %s" % ", ".join("%s %d images" % kv for kv in summary["vendors"].items()))
    log("  splits: %s; held out: %s" % (summary["splits"], summary["holdout"]))
    log("  names: %s; longest caption: %d CLIP pieces" % (summary["name_source"], summary["max_clip_pieces"]))
    log("  %s: %.1f MB in %.1f s" % (out_dir, size / 1e6, summary["seconds"]))
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract", help="verify the tarball's sha512 and extract only the needed members")
    ex.add_argument("--tarball", required=True)
    ex.add_argument("--integrity", required=True, help="npm dist.integrity (sha512-...)")
    ex.add_argument("--dest", required=True)
    bd = sub.add_parser("build", help="slice, caption and split")
    bd.add_argument("--package", required=True, help="the extracted package/ folder")
    bd.add_argument("--cldr", action="append", required=True, help="CLDR annotation XML (repeat; first wins)")
    bd.add_argument("--out", required=True)
    bd.add_argument("--demo-dir", help="copy the demo cat images to DIR/{vendor}/")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "extract":
            verify_integrity(a.tarball, a.integrity)
            extract_members(a.tarball, a.dest)
        else:
            build(a.package, a.cldr, a.out, a.demo_dir)
    except (OSError, ValueError, RuntimeError) as e:
        die(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
