#!/usr/bin/python3
"""Writes src/models/utf8class_tables.c: the Unicode data the CLIP tokenizer needs, as compact
sorted C arrays searched by binary search in src/models/utf8class.c.

Source of truth: this Python's unicodedata (Debian's /usr/bin/python3 3.11: Unicode 14.0.0) and
str methods, plus the html module's entity tables. Every table is derived by asking Python the
question the tokenizer asks, so the C side reproduces Python's answers exactly:

  letter / number   unicodedata.category(c) starts with 'L' / 'N'     ([\\p{L}], [\\p{N}])
  space             c.isspace()                                        (str.strip / str.split)
  lower             c.lower() for every code point where it differs    (str.lower, full mapping)
  cased / ignorable how str.lower() decides on a final sigma (probed, see below)
  html5 entities    html.entities.html5, html._invalid_charrefs, html._invalid_codepoints

The split pattern runs in the `regex` module, whose own Unicode data may be newer than
unicodedata; if `regex` is importable we compare it with the tables over all code points and
print the differences (they are documented in src/models/tokenizer.h).

Usage: gen_unicode_tables.py OUT.c   (tests/reference/regenerate.sh runs it). Deterministic.
"""
import html
import html.entities
import sys
import unicodedata

MAXCP = 0x110000


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


def ranges_of(pred):
    """Sorted inclusive [lo, hi] runs of the code points where pred holds."""
    out, start = [], None
    for cp in range(MAXCP + 1):
        ok = cp < MAXCP and not is_surrogate(cp) and pred(cp)
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def merge_ranges(rs):
    """Joins runs separated only by surrogates (never in decoded text) to keep tables small."""
    out = []
    for lo, hi in rs:
        if out and out[-1][1] + 1 == 0xD800 and lo == 0xE000:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def split_class(cp):
    cat = unicodedata.category(chr(cp))
    return 1 if cat[0] == 'L' else 2 if cat[0] == 'N' else 0


def class_ranges():
    """[lo, hi, cls] runs with cls 1 = letter, 2 = number (everything else is absent)."""
    out, start, cur = [], None, 0
    for cp in range(MAXCP + 1):
        c = split_class(cp) if cp < MAXCP and not is_surrogate(cp) else 0
        if c != cur:
            if cur:
                out.append((start, cp - 1, cur))
            start, cur = cp, c
    return out


def lower_runs():
    """str.lower() as runs (lo, hi, delta, stride): cp in [lo, hi] with (cp - lo) % stride == 0
    maps to cp + delta. Code points between the steps of a stride-2 run map to themselves.
    U+0130 (lowercases to two code points) and the final-sigma rule are handled in C."""
    m = {}
    for cp in range(MAXCP):
        if is_surrogate(cp):
            continue
        lo = chr(cp).lower()
        if lo == chr(cp):
            continue
        if len(lo) != 1:
            assert cp == 0x130 and lo == 'i\u0307', (hex(cp), lo)
            continue
        m[cp] = ord(lo) - cp
    cps = sorted(m)
    runs, i = [], 0
    while i < len(cps):
        lo, d = cps[i], m[cps[i]]
        best = (lo, 1, i + 1)  # (hi, stride, next index)
        for stride in (1, 2):
            j, hi = i + 1, lo
            while j < len(cps) and cps[j] == hi + stride and m[cps[j]] == d and \
                    (stride == 1 or (hi + 1) not in m):
                hi = cps[j]
                j += 1
            if j - i > best[2] - i:
                best = (hi, stride, j)
        runs.append((lo, best[0], d, best[1] if best[0] > lo else 1))
        i = best[2]
    # self-check: the runs reproduce the map exactly
    for lo, hi, d, s in runs:
        for cp in range(lo, hi + 1):
            if (cp - lo) % s == 0:
                assert m.get(cp) == d, hex(cp)
            else:
                assert cp not in m, hex(cp)
    assert sum(len(range(lo, hi + 1, s)) for lo, hi, d, s in runs) == len(m)
    return runs


def sigma_props():
    """CPython lowercases U+03A3 to final sigma when a cased letter precedes it (skipping
    case-ignorable characters) and none follows. Probe lower() to classify each code point:
      T1 = (c + 'Σ').lower() ends in 'ς'       <=> cased(c) and not ignorable(c)
      T2 = ('A' + c + 'Σ').lower() ends in 'ς' <=> ignorable(c) or cased(c)
    so 'cased' (as the rule sees it) = T1 and 'ignorable' = T2 and not T1."""
    t1 = [False] * MAXCP
    t2 = [False] * MAXCP
    for cp in range(MAXCP):
        if is_surrogate(cp):
            continue
        c = chr(cp)
        t1[cp] = (c + '\u03a3').lower()[-1] == '\u03c2'
        t2[cp] = ('A' + c + '\u03a3').lower()[-1] == '\u03c2'
    cased = merge_ranges(ranges_of(lambda cp: t1[cp]))
    ign = merge_ranges(ranges_of(lambda cp: t2[cp] and not t1[cp]))
    return cased, ign


def c_ranges(name, rs, per_line=6):
    lines = ['const uint32_t %s[][2] = {' % name]
    for k in range(0, len(rs), per_line):
        lines.append('    ' + ' '.join('{0x%X, 0x%X},' % r for r in rs[k:k + per_line]))
    lines.append('};')
    lines.append('const int %s_n = %d;' % (name, len(rs)))
    return '\n'.join(lines)


def compare_with_regex(letters_numbers, space):
    try:
        import regex
    except ImportError:
        print('gen_unicode_tables: regex module absent, no comparison', file=sys.stderr)
        return
    cls = {}
    for lo, hi, c in letters_numbers:
        for cp in range(lo, hi + 1):
            cls[cp] = c
    sp = set()
    for lo, hi in space:
        sp.update(range(lo, hi + 1))
    rl = regex.compile(r'[\p{L}]', regex.IGNORECASE)
    rn = regex.compile(r'[\p{N}]', regex.IGNORECASE)
    ro = regex.compile(r'[^\s\p{L}\p{N}]', regex.IGNORECASE)
    diff = {}
    for cp in range(MAXCP):
        if is_surrogate(cp):
            continue
        ch = chr(cp)
        mine = 'L' if cls.get(cp) == 1 else 'N' if cls.get(cp) == 2 else \
            ('S' if cp in sp and not 0x1C <= cp <= 0x1F else 'P')
        if cp == 0x345:
            mine = '-'  # handled in C: matches no alternative of the pattern under IGNORECASE
        theirs = 'L' if rl.match(ch) else 'N' if rn.match(ch) else 'P' if ro.match(ch) else \
            ('S' if regex.match(r'\s', ch) else '-')
        if mine != theirs:
            key = (mine, theirs, unicodedata.category(ch))
            diff.setdefault(key, []).append(cp)
    print('gen_unicode_tables: regex %s vs unicodedata %s, split classes that differ:'
          % (regex.__version__, unicodedata.unidata_version), file=sys.stderr)
    for (mine, theirs, cat), cps in sorted(diff.items()):
        print('  ours %s, regex %s, category %s: %d code points (first U+%04X)'
              % (mine, theirs, cat, len(cps), cps[0]), file=sys.stderr)
        # only characters unassigned in our Unicode version may differ
        assert cat == 'Cn', 'unexpected difference for assigned characters'


def main():
    out_path = sys.argv[1]
    cls = class_ranges()
    space = ranges_of(lambda cp: chr(cp).isspace())
    # the regex module's \s is str.isspace() without U+001C..U+001F (checked below)
    assert [r for r in space if r[0] <= 0x1F] == [(0x9, 0xD), (0x1C, 0x20)], space[:3]
    low = lower_runs()
    cased, ign = sigma_props()
    compare_with_regex(cls, space)

    ents = sorted(html.entities.html5.items(), key=lambda kv: kv[0].encode())
    for name, val in ents:
        assert name.isascii() and all(ch.isalnum() or ch == ';' for ch in name) and 1 <= len(val) <= 2 and len(name) <= 32
    charrefs = sorted(html._invalid_charrefs.items())
    for k, v in charrefs:
        assert len(v) == 1
    invalid_cps = sorted(html._invalid_codepoints)

    parts = [
        '/* GENERATED by tests/reference/gen_unicode_tables.py (regenerate with',
        ' * tests/reference/regenerate.sh); do not edit. Python %s, unicodedata %s.'
        % (sys.version.split()[0], unicodedata.unidata_version),
        ' * Unicode data for src/models/utf8class.c: split classes, str.isspace(), str.lower(),',
        ' * the final-sigma properties and the HTML5 entity table of Python\'s html module. */',
        '#include <stdint.h>',
        '',
        'const char uc_tab_unicode_version[] = "%s";' % unicodedata.unidata_version,
        '',
        '/* [lo, hi, class]: 1 = letter (category L*), 2 = number (N*); others are absent. */',
        'const uint32_t uc_tab_class[][3] = {',
    ]
    for k in range(0, len(cls), 5):
        parts.append('    ' + ' '.join('{0x%X, 0x%X, %d},' % r for r in cls[k:k + 5]))
    parts += ['};', 'const int uc_tab_class_n = %d;' % len(cls), '']
    parts += ['/* str.isspace() */', c_ranges('uc_tab_space', space), '']
    parts += ['/* str.lower(): [lo, hi, delta, stride], see utf8class.c */',
              'const int32_t uc_tab_lower[][4] = {']
    for k in range(0, len(low), 4):
        parts.append('    ' + ' '.join('{0x%X, 0x%X, %d, %d},' % r for r in low[k:k + 4]))
    parts += ['};', 'const int uc_tab_lower_n = %d;' % len(low), '']
    parts += ['/* Final sigma: "cased" and "case-ignorable" as CPython\'s str.lower() applies them. */',
              c_ranges('uc_tab_cased', cased), '', c_ranges('uc_tab_case_ignorable', ign), '']
    parts += ['/* html.entities.html5, sorted by name (bytewise): name, first and second code point. */',
              'const struct uc_entity { const char *name; uint32_t cp[2]; } uc_tab_entity[] = {']
    line = []
    for name, val in ents:
        cps = [ord(x) for x in val] + [0]
        line.append('{"%s", {0x%X, 0x%X}},' % (name, cps[0], cps[1]))
        if len(line) == 4:
            parts.append('    ' + ' '.join(line))
            line = []
    if line:
        parts.append('    ' + ' '.join(line))
    parts += ['};', 'const int uc_tab_entity_n = %d;' % len(ents), '']
    parts += ['/* html._invalid_charrefs: numeric references replaced by a fixed character. */',
              'const uint32_t uc_tab_charref_fix[][2] = {']
    for k in range(0, len(charrefs), 6):
        parts.append('    ' + ' '.join('{0x%X, 0x%X},' % (a, ord(b)) for a, b in charrefs[k:k + 6]))
    parts += ['};', 'const int uc_tab_charref_fix_n = %d;' % len(charrefs), '']
    parts += ['/* html._invalid_codepoints: numeric references that decode to nothing. */',
              'const uint32_t uc_tab_charref_drop[] = {']
    for k in range(0, len(invalid_cps), 10):
        parts.append('    ' + ' '.join('0x%X,' % a for a in invalid_cps[k:k + 10]))
    parts += ['};', 'const int uc_tab_charref_drop_n = %d;' % len(invalid_cps), '']
    with open(out_path, 'w') as f:
        f.write('\n'.join(parts))
    print('gen_unicode_tables: %d class ranges, %d space, %d lower runs, %d cased, %d ignorable, '
          '%d entities -> %s' % (len(cls), len(space), len(low), len(cased), len(ign), len(ents),
                                 out_path), file=sys.stderr)


if __name__ == '__main__':
    main()
