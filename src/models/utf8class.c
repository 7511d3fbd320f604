/* Unicode text handling for the CLIP tokenizer (see utf8class.h): UTF-8 decoding as CPython
 * does it, table lookups (binary search over the generated ranges in utf8class_tables.c),
 * str.lower() with the final-sigma rule, and html.unescape. */
#include "models/utf8class.h"

#include <string.h>

/* Tables from utf8class_tables.c (generated). */
extern const char uc_tab_unicode_version[];
extern const uint32_t uc_tab_class[][3];
extern const int uc_tab_class_n;
extern const uint32_t uc_tab_space[][2];
extern const int uc_tab_space_n;
extern const int32_t uc_tab_lower[][4];
extern const int uc_tab_lower_n;
extern const uint32_t uc_tab_cased[][2];
extern const int uc_tab_cased_n;
extern const uint32_t uc_tab_case_ignorable[][2];
extern const int uc_tab_case_ignorable_n;
struct uc_entity { const char *name; uint32_t cp[2]; };
extern const struct uc_entity uc_tab_entity[];
extern const int uc_tab_entity_n;
extern const uint32_t uc_tab_charref_fix[][2];
extern const int uc_tab_charref_fix_n;
extern const uint32_t uc_tab_charref_drop[];
extern const int uc_tab_charref_drop_n;

const char *uc_unicode_version(void) { return uc_tab_unicode_version; }

/* ---------------------------------------------------------------- UTF-8 */

size_t utf8_decode(uint32_t *out, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, m = 0;
    while (i < n) {
        unsigned b = s[i];
        if (b < 0x80) {
            out[m++] = b;
            i++;
            continue;
        }
        /* 0x80-0xC1 (continuation bytes, overlong 2-byte leads) and 0xF5-0xFF never start
         * a sequence: one U+FFFD each. */
        int need = b < 0xC2 ? -1 : b < 0xE0 ? 1 : b < 0xF0 ? 2 : b < 0xF5 ? 3 : -1;
        if (need < 0) {
            out[m++] = 0xFFFD;
            i++;
            continue;
        }
        /* The second byte's range excludes overlongs (E0, F0), surrogates (ED) and values
         * above U+10FFFF (F4); later bytes are plain continuation bytes. */
        unsigned lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
        unsigned hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
        uint32_t cp = b & (need == 1 ? 0x1F : need == 2 ? 0x0F : 0x07);
        int k = 1;
        for (; k <= need; k++) {
            if (i + k >= n) break;  /* truncated at the end of the input */
            unsigned c = s[i + k];
            if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) break;
            cp = cp << 6 | (c & 0x3F);
        }
        if (k <= need) {
            /* The maximal valid prefix (k bytes) becomes one U+FFFD; decoding resumes at the
             * offending byte (CPython's "invalid continuation byte" / "unexpected end"). */
            out[m++] = 0xFFFD;
            i += k;
        } else {
            out[m++] = cp;
            i += need + 1;
        }
    }
    return m;
}

int utf8_encode(char *out, uint32_t cp) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------- classes */

/* Index of the last range whose lo <= cp, or -1. `stride` is the row length in uint32s. */
static int range_find(const uint32_t *tab, int n, int stride, uint32_t cp) {
    int lo = 0, hi = n - 1, found = -1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (tab[(size_t)mid * stride] <= cp) {
            found = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return found;
}

static int in_ranges(const uint32_t (*tab)[2], int n, uint32_t cp) {
    int k = range_find(&tab[0][0], n, 2, cp);
    return k >= 0 && cp <= tab[k][1];
}

int uc_isspace(uint32_t cp) {
    if (cp < 0x80) return (cp >= 9 && cp <= 13) || (cp >= 0x1C && cp <= 0x20);
    return in_ranges(uc_tab_space, uc_tab_space_n, cp);
}

int uc_split_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return UC_LETTER;
        if (cp >= '0' && cp <= '9') return UC_NUMBER;
        if ((cp >= 9 && cp <= 13) || cp == ' ') return UC_SPACE;
        return UC_OTHER;  /* punctuation, controls, and U+001C..U+001F (not \s in regex) */
    }
    if (cp == 0x345) return UC_NONE;
    int k = range_find(&uc_tab_class[0][0], uc_tab_class_n, 3, cp);
    if (k >= 0 && cp <= uc_tab_class[k][1]) return (int)uc_tab_class[k][2];
    return uc_isspace(cp) ? UC_SPACE : UC_OTHER;
}

/* ---------------------------------------------------------------- lowercase */

static uint32_t lower1(uint32_t cp) {
    if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    int k = range_find((const uint32_t *)&uc_tab_lower[0][0], uc_tab_lower_n, 4, cp);
    if (k < 0) return cp;
    const int32_t *r = uc_tab_lower[k];
    if (cp > (uint32_t)r[1] || (cp - (uint32_t)r[0]) % (uint32_t)r[3]) return cp;
    return (uint32_t)((int32_t)cp + r[2]);
}

static int is_cased(uint32_t cp) { return in_ranges(uc_tab_cased, uc_tab_cased_n, cp); }
static int is_case_ignorable(uint32_t cp) {
    return in_ranges(uc_tab_case_ignorable, uc_tab_case_ignorable_n, cp);
}

/* CPython's Final_Sigma test for in[i] == U+03A3: a cased letter before it (skipping
 * case-ignorable characters) and none after it. */
static int final_sigma(const uint32_t *in, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && is_case_ignorable(in[j - 1])) j--;
    if (j == 0 || !is_cased(in[j - 1])) return 0;
    j = i + 1;
    while (j < n && is_case_ignorable(in[j])) j++;
    return j == n || !is_cased(in[j]);
}

size_t uc_lower(uint32_t *out, const uint32_t *in, size_t n) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = in[i];
        if (cp == 0x130) {  /* LATIN CAPITAL LETTER I WITH DOT ABOVE -> i + COMBINING DOT ABOVE */
            out[m++] = 'i';
            out[m++] = 0x307;
        } else if (cp == 0x3A3) {
            out[m++] = final_sigma(in, n, i) ? 0x3C2 : 0x3C3;
        } else {
            out[m++] = lower1(cp);
        }
    }
    return m;
}

/* ---------------------------------------------------------------- html.unescape */

static const struct uc_entity *entity_find(const char *name) {
    int lo = 0, hi = uc_tab_entity_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(uc_tab_entity[mid].name, name);
        if (c == 0) return &uc_tab_entity[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

static int is_digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int hex_val(uint32_t c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') return (int)((c | 0x20) - 'a' + 10);
    return -1;
}

/* The replacement of a numeric reference (html._replace_charref); returns the count (0/1). */
static int charref_value(uint32_t *out, uint32_t num) {
    for (int k = 0; k < uc_tab_charref_fix_n; k++)
        if (uc_tab_charref_fix[k][0] == num) {
            out[0] = uc_tab_charref_fix[k][1];
            return 1;
        }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        out[0] = 0xFFFD;
        return 1;
    }
    for (int k = 0; k < uc_tab_charref_drop_n; k++)
        if (uc_tab_charref_drop[k] == num) return 0;
    out[0] = num;
    return 1;
}

/* Characters allowed in a named reference: [^\t\n\f <&#;] */
static int name_char(uint32_t c) {
    return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' &&
           c != ';';
}

/* Python's pattern: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?) */
size_t uc_html_unescape(uint32_t *out, const uint32_t *in, size_t n) {
    size_t m = 0, i = 0;
    while (i < n) {
        if (in[i] != '&') {
            out[m++] = in[i++];
            continue;
        }
        size_t p = i + 1;
        if (p < n && in[p] == '#') {
            uint32_t num = 0;
            size_t q = p + 1;
            int hex = q < n && (in[q] == 'x' || in[q] == 'X') && q + 1 < n && hex_val(in[q + 1]) >= 0;
            if (hex) q++;
            if (q >= n || (hex ? hex_val(in[q]) < 0 : !is_digit(in[q]))) {
                out[m++] = in[i++];  /* "&#" without digits: a literal '&' */
                continue;
            }
            for (; q < n && (hex ? hex_val(in[q]) >= 0 : is_digit(in[q])); q++) {
                uint32_t d = hex ? (uint32_t)hex_val(in[q]) : in[q] - '0';
                /* saturate: every value above U+10FFFF decodes the same (U+FFFD) */
                num = num > 0x10FFFF ? num : num * (hex ? 16 : 10) + d;
            }
            if (q < n && in[q] == ';') q++;
            m += (size_t)charref_value(out + m, num);
            i = q;
            continue;
        }
        /* named reference: up to 32 name characters, then an optional ';' */
        char name[40];
        size_t len = 0;
        while (p + len < n && len < 32 && name_char(in[p + len])) {
            uint32_t c = in[p + len];
            name[len++] = c < 0x80 ? (char)c : '\x01';  /* non-ASCII: in no entity name */
        }
        if (len == 0) {
            out[m++] = in[i++];
            continue;
        }
        if (p + len < n && in[p + len] == ';') name[len++] = ';';
        name[len] = '\0';
        const struct uc_entity *e = entity_find(name);
        size_t keep = len;  /* characters of the name consumed by the entity */
        if (!e) {
            /* the longest prefix (at least 2 characters) that is an entity, e.g. "&notit;"
             * -> U+00AC "it;" (only the legacy names without ';' can match this way) */
            for (size_t x = len - 1; x >= 2 && !e; x--) {
                char c = name[x];
                name[x] = '\0';
                e = entity_find(name);
                name[x] = c;
                if (e) keep = x;
            }
        }
        if (!e) {  /* not a reference: copied as is */
            out[m++] = '&';
            for (size_t k = 0; k < len; k++) out[m++] = in[p + k];
        } else {
            out[m++] = e->cp[0];
            if (e->cp[1]) out[m++] = e->cp[1];
            for (size_t k = keep; k < len; k++) out[m++] = in[p + k];
        }
        i = p + len;
    }
    return m;
}
