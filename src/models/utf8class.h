/* Unicode text handling for the CLIP tokenizer, reproducing what Python does to a prompt:
 * UTF-8 decoding with bytes.decode(errors='replace'), html.unescape, str.isspace/strip,
 * str.lower() (full mapping incl. final sigma) and the character classes of CLIP's split
 * pattern. Data tables are generated (utf8class_tables.c, tests/reference/gen_unicode_tables.py)
 * from Python 3.11's unicodedata, Unicode 14.0.0. Text is handled as arrays of code points. */
#ifndef SVDIFF_MODELS_UTF8CLASS_H
#define SVDIFF_MODELS_UTF8CLASS_H

#include <stddef.h>
#include <stdint.h>

/* Decodes n bytes of UTF-8 into out (room for n code points); returns the count. Invalid or
 * truncated sequences become U+FFFD, one per maximal invalid subpart, exactly as CPython's
 * bytes.decode('utf-8', errors='replace') (overlong forms, surrogates and values above
 * U+10FFFF are invalid). Never reads past s[n-1]. */
size_t utf8_decode(uint32_t *out, const char *s, size_t n);
/* Writes the UTF-8 form of cp (<= 0x10FFFF, not a surrogate) to out (4 bytes room); returns
 * the byte count. */
int utf8_encode(char *out, uint32_t cp);

/* Classes of CLIP's split pattern (regex module, IGNORECASE). */
enum {
    UC_OTHER = 0,   /* [^\s\p{L}\p{N}] */
    UC_LETTER = 1,  /* \p{L}: general category L* */
    UC_NUMBER = 2,  /* \p{N}: general category N* */
    UC_SPACE = 3,   /* the regex module's \s: str.isspace() minus U+001C..U+001F */
    UC_NONE = 4,    /* matches no alternative: only U+0345, which under IGNORECASE the regex
                       module excludes from both [\p{L}] and [^\s\p{L}\p{N}] */
};
int uc_split_class(uint32_t cp);
/* Python's str.isspace(). */
int uc_isspace(uint32_t cp);

/* Python's str.lower() of the n code points in `in`, written to out (room for 2n: U+0130
 * lowercases to two code points); returns the count. Capital sigma becomes final sigma in
 * CPython's Final_Sigma context. */
size_t uc_lower(uint32_t *out, const uint32_t *in, size_t n);

/* Python's html.unescape of n code points (out may not alias in; room for n, the result is
 * never longer); returns the count. All HTML5 named references (with the legacy forms
 * without ';'), decimal and hex references with CPython's replacements for invalid ones. */
size_t uc_html_unescape(uint32_t *out, const uint32_t *in, size_t n);

/* "14.0.0": the Unicode version the tables were generated from. */
const char *uc_unicode_version(void);

#endif
