/* CLIP tokenizer: golden ids from the Python reference (tests/reference/gen_tokenizer_golden.py)
 * for a tiny generated vocabulary and the real CLIP ViT-L/14 one (skipped with a message where
 * ../shared/data is absent), hard-coded CLIP anchors, truncation / padding / pad-token configs,
 * the Unicode helpers, clear errors for malformed tokenizer folders, a merge-order corner case
 * and 2000 random byte strings (run under ASan in the sanitizer build). */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/error.h"
#include "models/tokenizer.h"
#include "models/utf8class.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static char *dup_path(const char *rel) { return strdup(source_path(rel)); }

/* The real CLIP tokenizer folder, or NULL (with a visible skip message) when absent. */
static char *clip_dir_or_skip(void) {
    char *dir = dup_path("../shared/data/clip-vit-l-14-tokenizer");
    char vocab[4200];
    snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
    if (access(vocab, R_OK) != 0) {
        print_message("SKIPPED: real CLIP tokenizer not found at %s (tests with it need ../shared/data)\n", dir);
        free(dir);
        return NULL;
    }
    return dir;
}

static clip_tokenizer_t *load_or_fail(const char *dir) {
    clip_tokenizer_t *tok = NULL;
    int rc = tokenizer_load(&tok, dir);
    if (rc) {
        print_error("tokenizer_load(%s): %s\n", dir, sd_last_error());
        fail();
    }
    return tok;
}

/* ---------------------------------------------------------------- golden files */

typedef struct {
    unsigned char *text;   /* NUL-terminated prompt bytes */
    int *full, nfull;      /* bos, tokens, eos */
    int *trunc;            /* 77 ids when truncated, else NULL */
} golden_case_t;

static int parse_ids(const char *s, int **out) {
    int n = 0, cap = 16;
    int *v = malloc(cap * sizeof *v);
    char *end;
    for (;;) {
        while (*s == ' ') s++;
        if (*s < '0' || *s > '9') break;
        long x = strtol(s, &end, 10);
        if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[n++] = (int)x;
        s = end;
    }
    *out = v;
    return n;
}

static int hexval(int c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

static golden_case_t *read_golden(const char *rel, int *ncases) {
    FILE *f = fopen(source_path(rel), "r");
    if (!f) {
        print_error("cannot open %s; regenerate with tests/reference/regenerate.sh\n", source_path(rel));
        fail();
    }
    golden_case_t *c = NULL;
    int n = 0;
    size_t cap = 1 << 16;
    char *line = malloc(cap);
    while (fgets(line, (int)cap, f)) {
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        assert_non_null(t2);
        c = realloc(c, (n + 1) * sizeof *c);
        size_t hl = (size_t)(t1 - line);
        c[n].text = malloc(hl / 2 + 1);
        for (size_t i = 0; i < hl / 2; i++) c[n].text[i] = (unsigned char)(hexval(line[2 * i]) * 16 + hexval(line[2 * i + 1]));
        c[n].text[hl / 2] = 0;
        c[n].nfull = parse_ids(t1 + 1, &c[n].full);
        c[n].trunc = NULL;
        if (t2[1] != '-') {
            assert_int_equal(parse_ids(t2 + 1, &c[n].trunc), 77);
        }
        n++;
    }
    free(line);
    fclose(f);
    assert_true(n > 100);
    *ncases = n;
    return c;
}

static void free_golden(golden_case_t *c, int n) {
    for (int i = 0; i < n; i++) free(c[i].text), free(c[i].full), free(c[i].trunc);
    free(c);
}

static void print_prompt(const unsigned char *s) {
    char buf[200];
    int k = 0;
    for (; *s && k < 180; s++) k += snprintf(buf + k, sizeof buf - k, *s >= 32 && *s < 127 ? "%c" : "\\x%02x", *s);
    print_error("prompt: \"%s%s\"\n", buf, *s ? "..." : "");
}

static void check_ids(const char *what, const unsigned char *text, const int *got, int ngot, const int *want, int nwant) {
    int bad = ngot != nwant;
    for (int i = 0; !bad && i < nwant; i++) bad = got[i] != want[i];
    if (!bad) return;
    print_prompt(text);
    print_error("%s: got %d ids, want %d\n  got :", what, ngot, nwant);
    for (int i = 0; i < ngot && i < 90; i++) print_error(" %d", got[i]);
    print_error("\n  want:");
    for (int i = 0; i < nwant && i < 90; i++) print_error(" %d", want[i]);
    print_error("\n");
    fail();
}

/* Every golden prompt, untruncated and as the 77-id padded (SD 1.x) sequence. */
static void run_golden(const char *dir, const char *golden) {
    clip_tokenizer_t *tok = load_or_fail(dir);
    int n;
    golden_case_t *c = read_golden(golden, &n);
    int eos = tokenizer_eos_id(tok);
    int *ids = malloc(4096 * sizeof *ids), want[77];
    int truncated = 0;
    for (int i = 0; i < n; i++) {
        int before = -1;
        int got = tokenizer_encode(tok, (const char *)c[i].text, ids, 4096, 0, &before);
        check_ids("full", c[i].text, ids, got, c[i].full, c[i].nfull);
        assert_int_equal(before, c[i].nfull);
        got = tokenizer_encode(tok, (const char *)c[i].text, ids, 77, 1, &before);
        assert_int_equal(before, c[i].nfull);
        if (c[i].trunc) {
            memcpy(want, c[i].trunc, sizeof want);
            truncated++;
        } else {
            memcpy(want, c[i].full, c[i].nfull * sizeof *want);
            for (int k = c[i].nfull; k < 77; k++) want[k] = eos;  /* SD 1.x pads with eos */
        }
        check_ids("77 padded", c[i].text, ids, got, want, 77);
    }
    assert_true(truncated >= 3);
    print_message("%s: %d prompts match (%d truncated)\n", golden, n, truncated);
    free(ids);
    free_golden(c, n);
    tokenizer_free(tok);
}

static void test_golden_tiny(void **state) {
    (void)state;
    char *dir = dup_path("tests/fixtures/tokenizer/tiny");
    run_golden(dir, "tests/fixtures/tokenizer/golden_tiny.txt");
    free(dir);
}

static void test_golden_clip(void **state) {
    (void)state;
    char *dir = clip_dir_or_skip();
    if (!dir) skip();
    run_golden(dir, "tests/fixtures/tokenizer/golden_clip.txt");
    free(dir);
}

/* Ids known independently of our reference (CLIP's vocabulary, see ../shared/data README). */
static void test_clip_anchors(void **state) {
    (void)state;
    char *dir = clip_dir_or_skip();
    if (!dir) skip();
    clip_tokenizer_t *tok = load_or_fail(dir);
    assert_int_equal(tokenizer_vocab_size(tok), 49408);
    assert_int_equal(tokenizer_n_merges(tok), 48894);
    assert_int_equal(tokenizer_bos_id(tok), 49406);
    assert_int_equal(tokenizer_eos_id(tok), 49407);
    assert_int_equal(tokenizer_pad_id(tok), 49407);
    assert_string_equal(tokenizer_token(tok, 1125), "photo</w>");
    assert_string_equal(tokenizer_token(tok, 0), "!");
    assert_null(tokenizer_token(tok, 49408));
    int ids[77], before;
    const int cat[7] = {49406, 320, 1125, 539, 320, 2368, 49407};
    int n = tokenizer_encode(tok, "a photo of a cat", ids, 77, 0, &before);
    check_ids("anchor", (const unsigned char *)"a photo of a cat", ids, n, cat, 7);
    /* case, surrounding whitespace and html entities do not change it */
    n = tokenizer_encode(tok, "  A PHOTO\tof&#32;a&nbsp;Cat \n", ids, 77, 0, &before);
    check_ids("anchor variant", (const unsigned char *)"A PHOTO of a Cat", ids, n, cat, 7);
    const int sks[5] = {49406, 320, 48136, 49407, 49407};
    n = tokenizer_encode(tok, "a sks", ids, 5, 1, &before);
    check_ids("sks padded", (const unsigned char *)"a sks", ids, n, sks, 5);
    assert_int_equal(before, 4);
    free(dir);
    tokenizer_free(tok);
}

/* ---------------------------------------------------------------- sequences */

static void write_file(const char *dir, const char *name, const char *content, size_t n) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, n, f), n);
    fclose(f);
}
static void write_str(const char *dir, const char *name, const char *content) {
    write_file(dir, name, content, strlen(content));
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = 0;
    fclose(f);
    *n = (size_t)len;
    return buf;
}

/* A scratch folder holding a copy of the tiny vocabulary (vocab.json, merges.txt). */
static char *tiny_copy(void) {
    char *dir = strdup("/tmp/svdiff_tok_XXXXXX");
    assert_non_null(mkdtemp(dir));
    const char *names[2] = {"vocab.json", "merges.txt"};
    for (int k = 0; k < 2; k++) {
        char rel[256];
        snprintf(rel, sizeof rel, "tests/fixtures/tokenizer/tiny/%s", names[k]);
        size_t n;
        char *buf = slurp(source_path(rel), &n);
        write_file(dir, names[k], buf, n);
        free(buf);
    }
    return dir;
}

static void remove_dir(char *dir) {
    const char *names[4] = {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"};
    char path[4200];
    for (int k = 0; k < 4; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        unlink(path);
    }
    rmdir(dir);
    free(dir);
}

static void test_truncation_padding(void **state) {
    (void)state;
    char *dir = dup_path("tests/fixtures/tokenizer/tiny");
    clip_tokenizer_t *tok = load_or_fail(dir);
    free(dir);
    int bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok);
    assert_int_equal(bos, 512 + tokenizer_n_merges(tok));   /* read from vocab.json */
    assert_int_equal(eos, bos + 1);
    assert_int_equal(tokenizer_pad_id(tok), eos);
    int full[64], ids[64], before;
    int n = tokenizer_encode(tok, "1 2 3 4 5 6", full, 64, 0, &before);
    assert_int_equal(n, 8);   /* digits are one token each */
    assert_int_equal(before, 8);
    /* truncation keeps bos, the first tokens and eos last; the count says what was there */
    for (int max_len = 2; max_len <= 10; max_len++) {
        for (int pad = 0; pad <= 1; pad++) {
            for (int k = 0; k < 64; k++) ids[k] = -7;
            n = tokenizer_encode(tok, "1 2 3 4 5 6", ids, max_len, pad, &before);
            int keep = max_len < 8 ? max_len : 8;
            assert_int_equal(n, pad ? max_len : keep);
            assert_int_equal(before, 8);
            assert_int_equal(ids[0], bos);
            for (int k = 1; k < keep - 1; k++) assert_int_equal(ids[k], full[k]);
            assert_int_equal(ids[keep - 1], eos);
            for (int k = keep; k < n; k++) assert_int_equal(ids[k], eos);
            assert_int_equal(ids[n], -7);   /* nothing written past the returned count */
        }
    }
    /* the empty prompt is bos, eos */
    n = tokenizer_encode(tok, "", ids, 77, 0, &before);
    assert_int_equal(n, 2);
    assert_int_equal(before, 2);
    assert_int_equal(ids[0], bos);
    assert_int_equal(ids[1], eos);
    assert_int_equal(tokenizer_encode(tok, "x", ids, 1, 1, NULL), SD_ERR_ARG);
    assert_int_equal(tokenizer_encode(tok, NULL, ids, 77, 1, NULL), SD_ERR_ARG);
    tokenizer_free(tok);
}

/* SD 2.x folders name pad_token "!" (id 0); special_tokens_map.json wins over
 * tokenizer_config.json; either may use the {"content": ...} form. */
static void test_pad_token_config(void **state) {
    (void)state;
    char *dir = tiny_copy();
    int ids[8];
    clip_tokenizer_t *tok;

    write_str(dir, "tokenizer_config.json", "{\"pad_token\": \"!\", \"model_max_length\": 77}");
    tok = load_or_fail(dir);
    assert_int_equal(tokenizer_pad_id(tok), 0);
    assert_int_equal(tokenizer_encode(tok, "a", ids, 8, 1, NULL), 8);
    assert_int_equal(ids[3], 0);
    assert_int_equal(ids[7], 0);
    tokenizer_free(tok);

    write_str(dir, "special_tokens_map.json",
              "{\"bos_token\": {\"content\": \"<|startoftext|>\", \"lstrip\": false}, \"pad_token\": "
              "{\"content\": \"<|endoftext|>\", \"normalized\": true}}");
    tok = load_or_fail(dir);
    assert_int_equal(tokenizer_pad_id(tok), tokenizer_eos_id(tok));
    tokenizer_free(tok);

    write_str(dir, "special_tokens_map.json", "{\"pad_token\": \"!\", \"unk_token\": \"<|endoftext|>\"}");
    write_str(dir, "tokenizer_config.json", "{\"pad_token\": null}");
    tok = load_or_fail(dir);
    assert_int_equal(tokenizer_pad_id(tok), 0);
    tokenizer_free(tok);
    remove_dir(dir);
}

/* A merge table whose order is not a learned one: "ab a" ranks before "a b". CLIP merges
 * every (a, b) of the word first and only then looks at the pairs that created, so "ababc"
 * is ab|ab|c</w>, not aba|b|c</w> (what merging one pair at a time would give). Also
 * overlapping pairs: "aaaab" -> aa|aa|b</w>, "aaa" -> aa|a</w>. */
/* A scratch tokenizer folder: the 512 byte tokens of the tiny vocabulary, then `extra` (JSON
 * members from id 512 on, specials included) and the merge table `merges`. */
static char *merge_table_dir(const char *extra, const char *merges) {
    char *dir = tiny_copy();
    size_t n;
    char path[4200];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    char *vocab = slurp(path, &n);
    char *cut = strstr(vocab, "\"\xc5\x83</w>\": 511");  /* the last byte token (U+0143 + </w>) */
    assert_non_null(cut);
    cut = strchr(cut, ',');
    assert_non_null(cut);
    *cut = 0;
    size_t len = strlen(vocab) + strlen(extra) + 8;
    char *out = malloc(len);
    snprintf(out, len, "%s, %s}\n", vocab, extra);
    write_str(dir, "vocab.json", out);
    free(out);
    free(vocab);
    write_str(dir, "merges.txt", merges);
    return dir;
}

static void test_merge_order(void **state) {
    (void)state;
    /* vocabulary: the 512 byte tokens of the tiny one, then ab, aba, aa, specials */
    char *dir = merge_table_dir("\"ab\": 512, \"aba\": 513, \"aa\": 514, \"<|startoftext|>\": 515, \"<|endoftext|>\": 516",
                                "#version: 0.2\nab a\na b\na a\n");
    clip_tokenizer_t *tok = load_or_fail(dir);
    int ids[16];
    int c_end = -1, b_end = -1, a_end = -1;
    for (int id = 256; id < 512; id++) {
        const char *t = tokenizer_token(tok, id);
        if (!strcmp(t, "c</w>")) c_end = id;
        if (!strcmp(t, "b</w>")) b_end = id;
        if (!strcmp(t, "a</w>")) a_end = id;
    }
    assert_true(c_end > 0 && b_end > 0 && a_end > 0);
    const int want1[5] = {515, 512, 512, c_end, 516};
    int m = tokenizer_encode(tok, "ababc", ids, 16, 0, NULL);
    check_ids("merge order", (const unsigned char *)"ababc", ids, m, want1, 5);
    const int want2[5] = {515, 514, 514, b_end, 516};
    m = tokenizer_encode(tok, "aaaab", ids, 16, 0, NULL);
    check_ids("overlap", (const unsigned char *)"aaaab", ids, m, want2, 5);
    const int want3[4] = {515, 514, a_end, 516};
    m = tokenizer_encode(tok, "aaa", ids, 16, 0, NULL);
    check_ids("overlap odd", (const unsigned char *)"aaa", ids, m, want3, 4);
    tokenizer_free(tok);
    remove_dir(dir);
}

/* BPE ties on repeated, overlapping pairs, with no external data (the CLIP golden needs
 * ../shared/data). CLIP's rule: take the lowest-ranked pair present, merge every occurrence of
 * it left to right, repeat. So in "!!!!" = ! ! ! !</w> the tie between the two "! !" pairs at
 * 0 and 1 goes to the leftmost: !! ! !</w>, then rank 1 gives !! !!</w>; taking the rightmost
 * first would leave ! !! !</w> (no merge applies). The expected pieces were derived by hand and
 * agree with tests/reference/gen_tokenizer_golden.py's Reference on this table. */
static void test_bpe_ties(void **state) {
    (void)state;
    char *dir = merge_table_dir("\"!!\": 512, \"!!</w>\": 513, \"aa\": 514, \"aa</w>\": 515, \"lo\": 516, \"ol\": 517, "
                                "\"lolo\": 518, \"lo</w>\": 519, \"<|startoftext|>\": 520, \"<|endoftext|>\": 521",
                                "#version: 0.2\n! !\n! !</w>\na a\na a</w>\nl o\no l\nlo lo\nl o</w>\n");
    clip_tokenizer_t *tok = load_or_fail(dir);
    static const char *const cases[][2] = {
        {"!!!!", "!! !!</w>"},          /* tie at 0 and 1: leftmost first */
        {"!!!", "!! !</w>"},
        {"aaaa", "aa aa</w>"},
        {"aaaaa", "aa aa a</w>"},       /* three overlapping "a a": 0 and 2 merge, 1 is consumed */
        {"lololo", "lolo lo</w>"},      /* "l o" (rank 4) before "o l" (rank 5), then lo lo */
        {"ololo", "o lo lo</w>"},       /* the lower rank wins over the leftmost pair */
        {"!!!! aaaa lololo", "!! !!</w> aa aa</w> lolo lo</w>"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int ids[32];
        int m = tokenizer_encode(tok, cases[k][0], ids, 32, 0, NULL);
        assert_true(m >= 2);
        char got[256] = "";
        for (int i = 1; i < m - 1; i++) {
            if (i > 1) strcat(got, " ");
            strcat(got, tokenizer_token(tok, ids[i]));
        }
        if (strcmp(got, cases[k][1])) {
            print_error("\"%s\": got [%s], want [%s]\n", cases[k][0], got, cases[k][1]);
            fail();
        }
    }
    tokenizer_free(tok);
    remove_dir(dir);
}

/* ---------------------------------------------------------------- Unicode helpers */

static void test_utf8_decode(void **state) {
    (void)state;
    static const struct { const char *in; int n; uint32_t want[8]; } cases[] = {
        {"a\xc3\xa9", 2, {'a', 0xE9}},
        {"\xe2\x82\xac\xf0\x9f\x98\x80", 2, {0x20AC, 0x1F600}},
        {"\xe2\x82", 1, {0xFFFD}},                       /* truncated: one U+FFFD */
        {"\xe2\x82x", 2, {0xFFFD, 'x'}},
        {"\xed\xa0\x80", 3, {0xFFFD, 0xFFFD, 0xFFFD}},   /* surrogate: ED A0 is invalid */
        {"\xf0\x80\x80\x80", 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}},  /* overlong */
        {"\xf4\x90\x80\x80", 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}},  /* > U+10FFFF */
        {"\xf4\x8f\xbf\xbf", 1, {0x10FFFF}},
        {"\xc0\xaf\xc1", 3, {0xFFFD, 0xFFFD, 0xFFFD}},
        {"\xe1\x80\xe1\x80\x80", 2, {0xFFFD, 0x1000}},
        {"\xf0\x9f\x98", 1, {0xFFFD}},
        {"\xfe\xff\x80", 3, {0xFFFD, 0xFFFD, 0xFFFD}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        uint32_t out[16];
        size_t n = utf8_decode(out, cases[k].in, strlen(cases[k].in));
        assert_int_equal(n, cases[k].n);
        for (int i = 0; i < cases[k].n; i++) assert_int_equal(out[i], cases[k].want[i]);
    }
    char buf[4];
    assert_int_equal(utf8_encode(buf, 0x1F600), 4);
    assert_memory_equal(buf, "\xf0\x9f\x98\x80", 4);
    assert_int_equal(utf8_encode(buf, 0x7FF), 2);
    assert_memory_equal(buf, "\xdf\xbf", 2);
}

static size_t u32_from(uint32_t *out, const char *s) { return utf8_decode(out, s, strlen(s)); }

static void test_unicode_classes(void **state) {
    (void)state;
    assert_string_equal(uc_unicode_version(), "14.0.0");
    const struct { uint32_t cp; int cls; } cls[] = {
        {'a', UC_LETTER}, {'Z', UC_LETTER}, {'7', UC_NUMBER}, {' ', UC_SPACE}, {'\t', UC_SPACE},
        {'!', UC_OTHER}, {'\'', UC_OTHER}, {0x1C, UC_OTHER}, {0xA0, UC_SPACE}, {0x3000, UC_SPACE},
        {0x2028, UC_SPACE}, {0x85, UC_SPACE}, {0x200B, UC_OTHER}, {0xE9, UC_LETTER},
        {0x4E00, UC_LETTER}, {0xAC00, UC_LETTER}, {0x0663, UC_NUMBER}, {0x2460, UC_NUMBER},
        {0x216B, UC_NUMBER}, {0xBD, UC_NUMBER}, {0x0301, UC_OTHER}, {0x1F600, UC_OTHER},
        {0x345, UC_NONE}, {0x3A3, UC_LETTER}, {0x1D400, UC_LETTER}, {0xFFFD, UC_OTHER},
        {0x31350, UC_OTHER},  /* CJK Ext. H: a letter from Unicode 15 on, unassigned in 14 */
        {0x10FFFF, UC_OTHER},
    };
    for (size_t k = 0; k < sizeof cls / sizeof *cls; k++) {
        if (uc_split_class(cls[k].cp) != cls[k].cls) {
            print_error("U+%04X: class %d, want %d\n", cls[k].cp, uc_split_class(cls[k].cp), cls[k].cls);
            fail();
        }
    }
    assert_true(uc_isspace(0x1C) && uc_isspace(0x1F) && uc_isspace(0x3000) && !uc_isspace(0x200B));

    /* str.lower(), including the final sigma and U+0130 */
    static const struct { const char *in, *want; } low[] = {
        {"ABC xyz", "abc xyz"},
        {"\xce\x9f\xce\x94\xce\x9f\xce\xa3", "\xce\xbf\xce\xb4\xce\xbf\xcf\x82"},   /* ΟΔΟΣ -> οδος */
        {"\xce\xa3\xce\x91", "\xcf\x83\xce\xb1"},                                   /* ΣΑ -> σα */
        {"\xce\xa3", "\xcf\x83"},                                                   /* Σ alone */
        {"A\xce\xa3'", "a\xcf\x82'"},                     /* final: ' is case-ignorable */
        {"A\xce\xa3'B", "a\xcf\x83'b"},                   /* not final: a cased letter follows */
        {"\xc4\xb0", "i\xcc\x87"},                        /* İ -> i + U+0307 */
        {"\xe2\x84\xa6\xe2\x84\xaa", "\xcf\x89k"},        /* Ohm, Kelvin signs */
        {"\xef\xbc\xa1\xd0\x96\xd4\xb2", "\xef\xbd\x81\xd0\xb6\xd5\xa2"},   /* fullwidth A, Ж, Բ */
        {"\xc7\x85\xc4\x80\xc6\x81", "\xc7\x86\xc4\x81\xc9\x93"},           /* ǅ Ā Ɓ */
        {"\xf0\x90\x90\x80", "\xf0\x90\x90\xa8"},         /* Deseret */
        {"\xe1\xb2\x90", "\xe1\x83\x90"},                 /* Georgian Mtavruli */
    };
    for (size_t k = 0; k < sizeof low / sizeof *low; k++) {
        uint32_t in[32], out[64], want[32];
        size_t n = u32_from(in, low[k].in), nw = u32_from(want, low[k].want);
        size_t m = uc_lower(out, in, n);
        assert_int_equal(m, nw);
        for (size_t i = 0; i < m; i++) assert_int_equal(out[i], want[i]);
    }
}

static void test_html_unescape(void **state) {
    (void)state;
    static const struct { const char *in, *want; } cases[] = {
        {"Tom &amp; Jerry", "Tom & Jerry"},
        {"&lt;3&gt; &quot;x&quot; &#39;", "<3> \"x\" '"},
        {"&amp;amp;", "&amp;"},                        /* one level per call */
        {"&#x263A;&#9731;&#X41;", "\xe2\x98\xba\xe2\x98\x83" "A"},
        {"&notit; &ampx &copy2023", "\xc2\xac" "it; &x \xc2\xa9" "2023"},  /* legacy names without ';' */
        {"&NotEqualTilde;", "\xe2\x89\x82\xcc\xb8"},   /* two code points */
        {"&#0;&#128;&#xD800;&#1114112;&#99999999999999999999;", "\xef\xbf\xbd\xe2\x82\xac\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"a&#1;b&#x7f;c", "abc"},                      /* invalid code points vanish */
        {"&#x; &#; & && &unknown; &a", "&#x; &#; & && &unknown; &a"},
        {"&abcdefghijklmnopqrstuvwxyz0123456789;", "&abcdefghijklmnopqrstuvwxyz0123456789;"},
        {"&caf\xc3\xa9; &amp\xc3\xa9", "&caf\xc3\xa9; &\xc3\xa9"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        uint32_t in[128], out[128], want[128];
        size_t n = u32_from(in, cases[k].in), nw = u32_from(want, cases[k].want);
        size_t m = uc_html_unescape(out, in, n);
        if (m != nw || memcmp(out, want, m * sizeof *out)) {
            print_error("html_unescape(\"%s\"): %zu code points, want %zu\n", cases[k].in, m, nw);
            fail();
        }
    }
}

/* ---------------------------------------------------------------- errors */

static void expect_load_error(const char *dir, int code, const char *needle1, const char *needle2) {
    clip_tokenizer_t *tok = (clip_tokenizer_t *)0x1;
    int rc = tokenizer_load(&tok, dir);
    const char *msg = sd_last_error();
    if (rc != code || tok != NULL || !strstr(msg, needle1) || (needle2 && !strstr(msg, needle2))) {
        print_error("rc %d (want %d), message \"%s\" (want \"%s\"%s%s)\n", rc, code, msg, needle1,
                    needle2 ? " and " : "", needle2 ? needle2 : "");
        fail();
    }
}

static void test_malformed_dirs(void **state) {
    (void)state;
    char *dir = tiny_copy(), path[4200];
    size_t n;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    char *vocab = slurp(path, &n);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    char *merges = slurp(path, &n);

    expect_load_error("/nonexistent/tokenizer", SD_ERR_IO, "/nonexistent/tokenizer/vocab.json", NULL);
    unlink(path);
    expect_load_error(dir, SD_ERR_IO, "merges.txt", "cannot read");
    write_str(dir, "merges.txt", merges);

    write_str(dir, "vocab.json", "{\"a\": 1, ");
    expect_load_error(dir, SD_ERR_FORMAT, "vocab.json", "not valid JSON");
    write_str(dir, "vocab.json", "[1, 2, 3]");
    expect_load_error(dir, SD_ERR_FORMAT, "vocab.json", "JSON object");
    write_str(dir, "vocab.json", "{\"a\": \"one\"}");
    expect_load_error(dir, SD_ERR_FORMAT, "vocab.json", "\"a\" is not an integer");
    write_str(dir, "vocab.json", "{\"a\": 0, \"b\": 1}");
    expect_load_error(dir, SD_ERR_FORMAT, "vocab.json", "no token for byte");

    /* vocab.json with the byte tokens and specials but without the merges' tokens */
    char *cut = strstr(vocab, "\"\xc5\x83</w>\": 511");
    assert_non_null(cut);
    char *bytes_only = strdup(vocab);
    strcpy(bytes_only + (strchr(cut, ',') - vocab), ", \"<|startoftext|>\": 512, \"<|endoftext|>\": 513}");
    write_str(dir, "vocab.json", bytes_only);
    expect_load_error(dir, SD_ERR_FORMAT, "merges.txt: line 2", "which vocab.json lacks");
    /* ... and a vocabulary without the special tokens */
    write_str(dir, "merges.txt", "#version: 0.2\ni n\n");
    strcpy(bytes_only + (strchr(cut, ',') - vocab), ", \"in\": 512}");
    write_str(dir, "vocab.json", bytes_only);
    expect_load_error(dir, SD_ERR_FORMAT, "vocab.json", "<|startoftext|>");
    free(bytes_only);
    write_str(dir, "vocab.json", vocab);

    write_str(dir, "merges.txt", "#version: 0.2\nt h\ni n x\n");
    expect_load_error(dir, SD_ERR_FORMAT, "merges.txt: line 3", "two tokens");
    write_str(dir, "merges.txt", "#version: 0.2\nt h\n\ni n\n");
    expect_load_error(dir, SD_ERR_FORMAT, "merges.txt: line 3", "two tokens");
    write_str(dir, "merges.txt", "t h\ni n\n");
    expect_load_error(dir, SD_ERR_FORMAT, "merges.txt: line 1", "#version");
    write_str(dir, "merges.txt", "#version: 0.2\n\n");
    expect_load_error(dir, SD_ERR_FORMAT, "merges.txt", "no merges");
    write_str(dir, "merges.txt", merges);

    write_str(dir, "special_tokens_map.json", "{\"pad_token\": \"<pad>\"}");
    expect_load_error(dir, SD_ERR_FORMAT, "special_tokens_map.json: pad_token \"<pad>\" is not in", NULL);
    write_str(dir, "special_tokens_map.json", "{pad_token: 1}");
    expect_load_error(dir, SD_ERR_FORMAT, "special_tokens_map.json", "not a JSON object");
    unlink(path);  /* merges.txt */
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    unlink(path);
    write_str(dir, "merges.txt", merges);
    clip_tokenizer_t *tok = load_or_fail(dir);  /* restored: loads again */
    tokenizer_free(tok);
    free(vocab);
    free(merges);
    remove_dir(dir);
}

/* ---------------------------------------------------------------- robustness, speed */

static const char *const FRAG[] = {
    "&amp;", "&#x", "&#", ";", "'", "'s", "\xce\xa3", "\xc4\xb0", "\xc5\xbf", " ", "\t", "\xc2\xa0",
    "<|endoftext|>", "<|startoftext|>", "\xf0\x9f\x98\x80", "\xe2\x80\x8d", "\xcc\x81", "A", "z", "9",
    "\xe4\xb8\x80", "\xcd\x85", "\x1c", "&lt", "&#99999999999;", "\xed\xa0\x80", "\xf4\x90",
};

static void fuzz_one(const clip_tokenizer_t *tok, trng_t *r, unsigned char *buf, int *ids) {
    int len = (int)(trng_uniform(r) * 300);
    int n = 0;
    while (n < len) {
        float u = trng_uniform(r);
        if (u < 0.4f) {
            buf[n++] = (unsigned char)(1 + (int)(trng_uniform(r) * 255));   /* any byte but NUL */
        } else if (u < 0.7f) {
            buf[n++] = (unsigned char)(32 + (int)(trng_uniform(r) * 95));
        } else {
            const char *f = FRAG[(int)(trng_uniform(r) * (sizeof FRAG / sizeof *FRAG))];
            size_t fl = strlen(f);
            memcpy(buf + n, f, fl);
            n += (int)fl;
        }
    }
    buf[n] = 0;
    int max_len = 2 + (int)(trng_uniform(r) * 100), pad = trng_uniform(r) < 0.5f, before = -1;
    int m = tokenizer_encode(tok, (const char *)buf, ids, max_len, pad, &before);
    assert_true(m >= 2 && m <= max_len);
    assert_true(before >= 2);
    if (pad) assert_int_equal(m, max_len);
    else assert_int_equal(m, before < max_len ? before : max_len);
    assert_int_equal(ids[0], tokenizer_bos_id(tok));
    int keep = before < max_len ? before : max_len;
    assert_int_equal(ids[keep - 1], tokenizer_eos_id(tok));
    for (int k = 0; k < m; k++) assert_true(ids[k] >= 0 && ids[k] < tokenizer_vocab_size(tok) && tokenizer_token(tok, ids[k]));
}

static void test_fuzz_random_bytes(void **state) {
    (void)state;
    char *dir = dup_path("tests/fixtures/tokenizer/tiny");
    clip_tokenizer_t *tok = load_or_fail(dir), *clip = NULL;
    free(dir);
    char *cdir = clip_dir_or_skip();   /* the tiny vocabulary still runs without it */
    if (cdir) clip = load_or_fail(cdir);
    free(cdir);
    trng_t r;
    trng_seed(&r, 4242);
    unsigned char *buf = malloc(300 + 64);
    int ids[128];
    for (int it = 0; it < 2000; it++) fuzz_one(it % 2 && clip ? clip : tok, &r, buf, ids);
    free(buf);
    tokenizer_free(tok);
    tokenizer_free(clip);
}

/* A long word of random letters: the heap merge is O(n log n), a naive BPE loop O(n^2). */
static void test_long_word(void **state) {
    (void)state;
    char *dir = clip_dir_or_skip();
    if (!dir) dir = dup_path("tests/fixtures/tokenizer/tiny");
    clip_tokenizer_t *tok = load_or_fail(dir);
    free(dir);
    size_t n = 200000;
    char *text = malloc(n + 1);
    trng_t r;
    trng_seed(&r, 7);
    for (size_t i = 0; i < n; i++) text[i] = (char)('a' + (int)(trng_uniform(&r) * 26));
    text[n] = 0;
    int ids[77], before;
    double t0 = now_s();
    int m = tokenizer_encode(tok, text, ids, 77, 1, &before);
    double dt = now_s() - t0;
    assert_int_equal(m, 77);
    assert_true(before > 77 && before < (int)n);
    print_message("one 200 KB word: %d tokens in %.1f ms\n", before - 2, 1e3 * dt);
    assert_true(dt < 10.0);
    free(text);
    tokenizer_free(tok);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_tiny),
        cmocka_unit_test(test_golden_clip),
        cmocka_unit_test(test_clip_anchors),
        cmocka_unit_test(test_truncation_padding),
        cmocka_unit_test(test_pad_token_config),
        cmocka_unit_test(test_merge_order),
        cmocka_unit_test(test_bpe_ties),
        cmocka_unit_test(test_utf8_decode),
        cmocka_unit_test(test_unicode_classes),
        cmocka_unit_test(test_html_unescape),
        cmocka_unit_test(test_malformed_dirs),
        cmocka_unit_test(test_fuzz_random_bytes),
        cmocka_unit_test(test_long_word),
    };
    return RUN_TESTS(argc, argv, "tokenizer", tests, NULL, NULL);
}
