#!/usr/bin/python3
"""Fixtures for tests/test_tokenizer.c (the C CLIP tokenizer, src/models/tokenizer.c).

1. A tiny byte-level BPE vocabulary in CLIP's file format, learned here from a short English
   text: tests/fixtures/tokenizer/tiny/{vocab.json,merges.txt}. vocab.json holds the 256
   byte characters (GPT-2 bytes_to_unicode), the same 256 with '</w>', one token per merge,
   then <|startoftext|> and <|endoftext|>; merges.txt has a '#version' header.
2. Golden ids for a list of awkward prompts, computed by the Python reference tokenizer below
   (OpenAI CLIP's simple_tokenizer algorithm, written out here, without ftfy), for the tiny
   vocabulary (golden_tiny.txt) and, when the real CLIP ViT-L/14 files are present (--clip-dir,
   default ../shared/data/clip-vit-l-14-tokenizer next to the repository), for CLIP
   (golden_clip.txt). Without the CLIP files golden_clip.txt is left as it is.

Golden format, one prompt per line, tab-separated:
    <prompt bytes in hex>  <full ids: bos, tokens, eos>  <ids truncated to 77, or ->
Prompts are bytes: some are not valid UTF-8; the reference decodes them with
errors='replace' (what a Python caller reading a file that way would pass to CLIP).

Needs the `regex` module (Debian: apt-get install python3-regex). Deterministic output.
Usage: gen_tokenizer_golden.py --out tests/fixtures/tokenizer [--clip-dir DIR]
"""
import argparse
import html
import json
import os
import random
import sys

import regex

PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
SOT, EOT = '<|startoftext|>', '<|endoftext|>'
MAX_MERGES = 49152 - 256 - 2


def byte_chars():
    """GPT-2's byte -> character table: printable Latin-1 bytes keep their character, the
    other 68 bytes take U+0100, U+0101, ... in byte order. Returned in CLIP's vocab order
    (printable bytes first)."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    others = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep}
    for k, b in enumerate(others):
        table[b] = chr(256 + k)
    order = keep + others
    return table, [table[b] for b in order]


BYTE_CHAR, BYTE_ORDER = byte_chars()


def clean(text):
    """simple_tokenizer's whitespace_clean(basic_clean(text)).lower() without ftfy."""
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r'\s+', ' ', text).strip()
    return text.lower()


def pieces(text):
    return regex.findall(PATTERN, clean(text))


def to_symbols(piece):
    chars = [BYTE_CHAR[b] for b in piece.encode('utf-8')]
    chars[-1] += '</w>'
    return chars


def merge_pass(word, pair):
    """Merges every occurrence of `pair` in `word`, scanning left to right."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class Reference:
    """The CLIP tokenizer algorithm (tokenizer files read the way transformers reads them)."""

    def __init__(self, folder):
        with open(os.path.join(folder, 'vocab.json'), encoding='utf-8') as f:
            self.vocab = json.load(f)
        with open(os.path.join(folder, 'merges.txt'), encoding='utf-8') as f:
            lines = f.read().strip().split('\n')[1:MAX_MERGES + 1]
        self.rank = {}
        for r, line in enumerate(lines):
            self.rank[tuple(line.split())] = r
        self.bos, self.eos = self.vocab[SOT], self.vocab[EOT]

    def bpe(self, piece):
        if piece in (SOT, EOT):   # simple_tokenizer's cache holds the two specials
            return [piece]
        word = to_symbols(piece)
        while len(word) > 1:
            ranked = [(self.rank[p], p) for p in zip(word, word[1:]) if p in self.rank]
            if not ranked:
                break
            word = merge_pass(word, min(ranked)[1])
        return word

    def encode(self, text):
        ids = []
        for p in pieces(text):
            ids.extend(self.vocab[s] for s in self.bpe(p))
        return [self.bos] + ids + [self.eos]

    def encode_fixed(self, text, max_len=77, pad=None):
        full = self.encode(text)
        if len(full) > max_len:
            full = full[:max_len - 1] + [self.eos]
        return full + [self.eos if pad is None else pad] * (max_len - len(full))


# ------------------------------------------------------------------ tiny vocabulary

TRAINING_TEXT = """
A small training text for a tiny byte pair vocabulary. The photo shows a cat sitting on a
red chair next to the window, and the dog is sleeping in the garden. There are many photos of
the city at night: the lights, the streets, the people walking home. We painted the house in
the morning and the painting dried in the afternoon. A portrait of a woman with a hat, a
landscape with mountains and rivers, a drawing of a bird on a branch. Highly detailed, sharp
focus, trending art, studio lighting, beautiful colors, soft shadows. The quick brown fox
jumps over the lazy dog. It is not what they said; it is what they did that matters. I'll
paint it again tomorrow, she's sure it'll be better, they've seen the sketches, we're happy.
Cinematic composition, golden hour, volumetric fog, an oil painting of a lighthouse by the sea,
watercolor flowers in a glass vase, a close-up of an old man's face, wide angle, 35mm film.
"""


def learn_merges(text, n_merges):
    """Plain BPE learning on the pre-tokenized words: the most frequent adjacent pair wins
    (ties: the smallest pair), merged everywhere. Pairs whose concatenation already is a
    token are skipped so that every merge adds a new vocabulary entry."""
    freq = {}
    for p in pieces(text):
        freq[p] = freq.get(p, 0) + 1
    words = [(to_symbols(p), c) for p, c in sorted(freq.items())]
    known = set(BYTE_ORDER) | {c + '</w>' for c in BYTE_ORDER}
    merges = []
    while len(merges) < n_merges:
        counts = {}
        for w, c in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + c
        best = None
        for pair, c in sorted(counts.items()):
            if pair[0] + pair[1] in known:
                continue
            if best is None or c > counts[best]:
                best = pair
        if best is None:
            break
        merges.append(best)
        known.add(best[0] + best[1])
        words = [(merge_pass(w, best), c) for w, c in words]
    return merges


def write_tiny(out_dir, n_merges=300):
    merges = learn_merges(TRAINING_TEXT, n_merges)
    tokens = BYTE_ORDER + [c + '</w>' for c in BYTE_ORDER] + [a + b for a, b in merges] + [SOT, EOT]
    assert len(set(tokens)) == len(tokens)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'vocab.json'), 'w', encoding='utf-8') as f:
        f.write(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False) + '\n')
    with open(os.path.join(out_dir, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + ''.join('%s %s\n' % m for m in merges))
    return len(merges)


# ------------------------------------------------------------------ prompts

def prompts():
    s = [
        'a photo of a cat',
        'A photo of sks dog, highly detailed!!!',
        'wow!!! ... ?!?! (((masterpiece))) [best quality] {x} <lora:foo:0.8> --ar 16:9',
        "don't I'LL she's we're they've I'm you'd 's' ''' rock'n'roll DON'T STOP",
        "'S 'T 'RE 'VE 'M 'LL 'D 'x '",
        '1234 3.14159 2nd 1st 10,000 0x1F',
        '\u0663\u0664\u0665 \u2460\u2461 \u216b \u00bd \u00b2 \u0967\u0968',
        'caf\u00e9 na\u00efve r\u00e9sum\u00e9 CAF\u00c9 NA\u00cfVE',
        'cafe\u0301 n\u0303 A\u030a',
        '\U0001F600 \U0001F44D\U0001F3FD \U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466',
        '\U0001F3F3\uFE0F\u200D\U0001F308 \u2764\uFE0F \U0001F1EB\U0001F1F7 cat\U0001F431dog',
        '\u6771\u4eac\u30bf\u30ef\u30fc\u306e\u5199\u771f \ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8 \u732b',
        '\u0635\u0648\u0631\u0629 \u0642\u0637\u0629 \u05e9\u05dc\u05d5\u05dd \u0e41\u0e21\u0e27 '
        '\u0928\u092e\u0938\u094d\u0924\u0947',
        'photo of \u041c\u043e\u0441\u043a\u0432\u0430 and \u0391\u03b8\u03ae\u03bd\u03b1 at night, \u591c\u666f',
        '\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u03a3\u0391\u03a3 \u03a3\u0391 \u03a3. A\u03a3\'\u03a3 '
        'A\u03a3\u0301 \u03a3A',
        '\u0130STANBUL \u0130 i\u0307',
        '\u041f\u0420\u0418\u0412\u0415\u0422 \u041c\u0418\u0420 \u0532\u0531\u0550\u0535\u054e '
        '\u0386\u0388\u0389 \u01c5 \u01c4',
        '\uff21\uff22\uff23 \uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff11\uff12\uff13',
        '\U0001D400\U0001D401 \u210c \u2126 \u212a \u212b \u13a0\u13a1 \u1c90\u1c91 '
        '\U00010400\U00010401 \u1e9e \u2c6f',
        'Tom &amp; Jerry &lt;3 &gt;_&lt; &quot;quoted&quot; &#39;tis &apos;',
        '&#x263A; &#9731; &#X41;&#x6a; &amp;amp; &amp;amp;amp; &amp;lt;',
        '&notit; &ampx &copy2023 &AMP &Amp; &NotEqualTilde; &nbsp;space &ThinSpace;x',
        '&#0; &#128; &#150; &#xD800; &#1114112; &#99999999999999999999 &#1; &#x7f; &#13;',
        '&#x; &#; & && &&& &# &#x &;amp; &a &ab &abcdefghijklmnopqrstuvwxyz0123456789;',
        'a\tb\nc\r\nd\x0be\x0cf',
        'a\u00a0b\u3000c\u2028d\x85e\u200bf\u2003g\u1680h',
        ' \t\n  leading and trailing \t ',
        'a\x1cb\x1d c \x1e\x1f',
        '\x1c a \x1c',
        '',
        '   ',
        '\n\t\r ',
        '\u00a0\u3000',
        '<|startoftext|>',
        'a<|endoftext|>b',
        '!<|endoftext|> <|endoftext|><|endoftext|>',
        '<|ENDOFTEXT|> <|StartOfText|> <|\u017ftartoftext|> <|endoftext| <|',
        "'\u017f \u017ftop it'\u017f",
        '\u03b1\u0345\u03b2 \u0345 !\u0345!',
        '\x01\x02\x7f control',
        '\U0010FFFF \uFFFF \uE000 \uFDD0 \uFFFD',
        'a' * 300,
        'supercalifragilistic' * 20,
        ' '.join(['a highly detailed photo of a majestic lion standing on a rock at sunset,'] * 12),
        'masterpiece, best quality, ' * 30,
        '!' * 200,
        '\u00e9' * 100,
        '\u6f22' * 80,
        '0123456789' * 10,
    ]
    out = [x.encode('utf-8') for x in s]
    out += [
        b'\xff\xfe', b'caf\xe9', b'\xe2\x82', b'\xe2\x82 x', b'\xed\xa0\x80', b'\xed\x9f\xbf',
        b'\xf0\x9f\x98', b'\xf0\x9f\x98x', b'\xc0\xaf', b'\xc1\xbf', b'\xf4\x90\x80\x80',
        b'\xf4\x8f\xbf\xbf', b'abc\x80def', b'\xe0\x80\x80', b'\xe0\xa0\x80', b'\xf0\x80\x80\x80',
        b'\xf8\x88\x80\x80\x80', b'\xfe\xff', b'\x80\x80\x80', b'a\xc3', b'\xc3\xa9\xc3',
        b'\xef\xbf\xbd', b'\xf5\x80', b'\xe1\x80\xe1\x80\x80',
    ]
    # random byte strings: printable ASCII, arbitrary bytes and fragments of interesting text
    frag = ['&amp;', '&#x', '&#', ';', "'", "'s", '\u03a3', '\u0130', '\u017f', ' ', '\t', '\u00a0',
            '<|endoftext|>', '\U0001F600', '\u200d', '\u0301', 'A', 'z', '9', '\u4e00', '\u0345', '\x1c']
    rng = random.Random(20240611)
    for _ in range(60):
        b = bytearray()
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            if r < 0.5:
                b.append(rng.randint(32, 126))
            elif r < 0.7:
                b.append(rng.randint(1, 255))
            else:
                b += rng.choice(frag).encode('utf-8')
        out.append(bytes(b))
    for p in out:
        assert 0 not in p
    return out


def write_golden(path, ref):
    lines = []
    for p in prompts():
        text = p.decode('utf-8', errors='replace')
        full = ref.encode(text)
        trunc = ref.encode_fixed(text) if len(full) > 77 else None
        if trunc is not None:
            assert len(trunc) == 77 and trunc[-1] == ref.eos and trunc[:76] == full[:76]
        lines.append('%s\t%s\t%s' % (p.hex(), ' '.join(map(str, full)),
                                      ' '.join(map(str, trunc)) if trunc else '-'))
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return len(lines)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(root, 'tests', 'fixtures', 'tokenizer'))
    ap.add_argument('--clip-dir', default=os.path.join(root, '..', 'shared', 'data', 'clip-vit-l-14-tokenizer'))
    args = ap.parse_args()
    tiny = os.path.join(args.out, 'tiny')
    nm = write_tiny(tiny)
    n = write_golden(os.path.join(args.out, 'golden_tiny.txt'), Reference(tiny))
    print('gen_tokenizer_golden: tiny vocabulary with %d merges, %d golden prompts' % (nm, n),
          file=sys.stderr)
    if os.path.exists(os.path.join(args.clip_dir, 'vocab.json')):
        ref = Reference(args.clip_dir)
        anchor = ref.encode('a photo of a cat')
        assert anchor == [49406, 320, 1125, 539, 320, 2368, 49407], anchor
        n = write_golden(os.path.join(args.out, 'golden_clip.txt'), ref)
        print('gen_tokenizer_golden: %d golden prompts for %s' % (n, args.clip_dir), file=sys.stderr)
    else:
        print('gen_tokenizer_golden: %s absent, golden_clip.txt not rewritten' % args.clip_dir,
              file=sys.stderr)


if __name__ == '__main__':
    main()
