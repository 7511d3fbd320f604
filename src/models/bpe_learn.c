/* BPE learning (see bpe_learn.h): captions -> word counts (tokenizer_split), words as arrays
 * of symbol ids, pair counts in a hash table kept up to date merge by merge, and a lazy
 * max-heap over (count, pair) that finds the next merge without scanning every pair. */
#include "models/bpe_learn.h"

#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/error.h"
#include "io/outputs.h"
#include "models/tokenizer.h"
#include "models/utf8class.h"

/* ---------------------------------------------------------------- string -> int map */

typedef struct {
    uint32_t cap, n;
    char **key;   /* NULL: empty; keys are owned, NUL-terminated (pieces never contain NUL... */
    uint32_t *len; /* ...but the length is kept anyway, so any bytes work) */
    int *val;
} strmap_t;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a + final mix */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 31);
}

static void strmap_init(strmap_t *m, uint32_t cap) {
    m->cap = cap, m->n = 0;
    m->key = sd_xcalloc(cap, sizeof *m->key);
    m->len = sd_xmalloc(cap * sizeof *m->len);
    m->val = sd_xmalloc(cap * sizeof *m->val);
}

static void strmap_free(strmap_t *m) {
    for (uint32_t i = 0; i < m->cap; i++) free(m->key[i]);
    free(m->key), free(m->len), free(m->val);
}

static uint32_t strmap_slot(const strmap_t *m, const char *s, size_t n) {
    uint32_t mask = m->cap - 1, i = (uint32_t)hash_bytes(s, n) & mask;
    while (m->key[i] && !(m->len[i] == n && !memcmp(m->key[i], s, n))) i = (i + 1) & mask;
    return i;
}

static int strmap_get(const strmap_t *m, const char *s, size_t n) {
    uint32_t i = strmap_slot(m, s, n);
    return m->key[i] ? m->val[i] : -1;
}

static void strmap_put(strmap_t *m, const char *s, size_t n, int v) {
    if (2 * (m->n + 1) > m->cap) {   /* grow at half load */
        strmap_t g;
        strmap_init(&g, 2 * m->cap);
        for (uint32_t i = 0; i < m->cap; i++)
            if (m->key[i]) {
                uint32_t j = strmap_slot(&g, m->key[i], m->len[i]);
                g.key[j] = m->key[i], g.len[j] = m->len[i], g.val[j] = m->val[i];
                g.n++;
            }
        free(m->key), free(m->len), free(m->val);
        *m = g;
    }
    uint32_t i = strmap_slot(m, s, n);
    if (!m->key[i]) {
        m->key[i] = sd_xmalloc(n + 1);
        memcpy(m->key[i], s, n);
        m->key[i][n] = '\0';
        m->len[i] = (uint32_t)n;
        m->n++;
    }
    m->val[i] = v;
}

/* ---------------------------------------------------------------- pair counts */

typedef struct {
    uint32_t cap, n;
    uint64_t *key;    /* a << 32 | b; UINT64_MAX: empty */
    int64_t *count;
} pairmap_t;

static uint64_t mix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static void pairmap_init(pairmap_t *p, uint32_t cap) {
    p->cap = cap, p->n = 0;
    p->key = sd_xmalloc(cap * sizeof *p->key);
    p->count = sd_xcalloc(cap, sizeof *p->count);
    memset(p->key, 0xff, cap * sizeof *p->key);
}

static uint32_t pairmap_slot(const pairmap_t *p, uint64_t key) {
    uint32_t mask = p->cap - 1, i = (uint32_t)mix64(key) & mask;
    while (p->key[i] != UINT64_MAX && p->key[i] != key) i = (i + 1) & mask;
    return i;
}

/* Adds d to the pair's count and returns the new count (entries are never removed: a pair
 * that drops to 0 keeps its slot, the table only grows with distinct pairs ever seen). */
static int64_t pairmap_add(pairmap_t *p, uint64_t key, int64_t d) {
    if (2 * (p->n + 1) > p->cap) {
        pairmap_t g;
        pairmap_init(&g, 2 * p->cap);
        for (uint32_t i = 0; i < p->cap; i++)
            if (p->key[i] != UINT64_MAX) {
                uint32_t j = pairmap_slot(&g, p->key[i]);
                g.key[j] = p->key[i], g.count[j] = p->count[i];
                g.n++;
            }
        free(p->key), free(p->count);
        *p = g;
    }
    uint32_t i = pairmap_slot(p, key);
    if (p->key[i] == UINT64_MAX) p->key[i] = key, p->n++;
    return p->count[i] += d;
}

static int64_t pairmap_get(const pairmap_t *p, uint64_t key) {
    uint32_t i = pairmap_slot(p, key);
    return p->key[i] == UINT64_MAX ? 0 : p->count[i];
}

/* ---------------------------------------------------------------- learner state */

typedef struct {
    int *sym, len;
    int64_t count;
} word_t;

typedef struct { int64_t count; int a, b; } cand_t;

typedef struct {
    char **tok;              /* id -> vocab.json string */
    int n_tok, cap_tok;
    strmap_t tok_ids;        /* string -> id */
    word_t *words;
    int n_words, cap_words;
    strmap_t word_ids;       /* piece bytes -> word index */
    int byte_sym[256];       /* byte -> id of its symbol (not word-final) */
    int byte_end_sym[256];   /* byte -> id of its symbol + "</w>" */
    pairmap_t pairs;
    cand_t *heap;
    size_t n_heap, cap_heap;
    int (*merges)[2];
    int n_merges, cap_merges;
    const char *reserved;
    size_t reserved_len;
    int caption;             /* index of the caption being split (for messages) */
    int64_t n_pieces;
} learner_t;

static int add_token(learner_t *L, const char *s) {
    int id = strmap_get(&L->tok_ids, s, strlen(s));
    if (id >= 0) return id;
    if (L->n_tok == L->cap_tok) {
        L->cap_tok = L->cap_tok ? 2 * L->cap_tok : 1024;
        char **nt = realloc(L->tok, (size_t)L->cap_tok * sizeof *nt);
        SD_CHECK(nt, "out of memory");
        L->tok = nt;
    }
    size_t n = strlen(s);
    L->tok[L->n_tok] = sd_xmalloc(n + 1);
    memcpy(L->tok[L->n_tok], s, n + 1);
    strmap_put(&L->tok_ids, s, n, L->n_tok);
    return L->n_tok++;
}

/* Heap order: higher count first; equal counts: lower (first, second) strings first. */
static int cand_before(const learner_t *L, const cand_t *x, const cand_t *y) {
    if (x->count != y->count) return x->count > y->count;
    int c = strcmp(L->tok[x->a], L->tok[y->a]);
    if (c) return c < 0;
    return strcmp(L->tok[x->b], L->tok[y->b]) < 0;
}

static void heap_push(learner_t *L, int64_t count, int a, int b) {
    if (L->n_heap == L->cap_heap) {
        L->cap_heap = L->cap_heap ? 2 * L->cap_heap : 4096;
        cand_t *nh = realloc(L->heap, L->cap_heap * sizeof *nh);
        SD_CHECK(nh, "out of memory");
        L->heap = nh;
    }
    cand_t c = {count, a, b};
    size_t i = L->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(L, &c, &L->heap[p])) break;
        L->heap[i] = L->heap[p];
        i = p;
    }
    L->heap[i] = c;
}

static cand_t heap_pop(learner_t *L) {
    cand_t top = L->heap[0], last = L->heap[--L->n_heap];
    size_t i = 0, n = L->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_before(L, &L->heap[c + 1], &L->heap[c])) c++;
        if (!cand_before(L, &L->heap[c], &last)) break;
        L->heap[i] = L->heap[c];
        i = c;
    }
    if (n > 0) L->heap[i] = last;
    return top;
}

static inline uint64_t pkey(int a, int b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

/* Adds sign * count for every adjacent pair of the word (pushing changed positive counts). */
static void count_word_pairs(learner_t *L, const word_t *w, int64_t sign) {
    for (int i = 0; i + 1 < w->len; i++) {
        int64_t c = pairmap_add(&L->pairs, pkey(w->sym[i], w->sym[i + 1]), sign * w->count);
        if (c > 0) heap_push(L, c, w->sym[i], w->sym[i + 1]);
    }
}

/* Replaces every (a, b), left to right without overlap, by r; returns 1 if any. */
static int merge_word(word_t *w, int a, int b, int r) {
    int k = 0, any = 0;
    for (int i = 0; i < w->len;) {
        if (i + 1 < w->len && w->sym[i] == a && w->sym[i + 1] == b) {
            w->sym[k++] = r;
            i += 2;
            any = 1;
        } else {
            w->sym[k++] = w->sym[i++];
        }
    }
    w->len = k;
    return any;
}

static int contains_pair(const word_t *w, int a, int b) {
    for (int i = 0; i + 1 < w->len; i++)
        if (w->sym[i] == a && w->sym[i + 1] == b) return 1;
    return 0;
}

static void add_merge(learner_t *L, int a, int b) {
    if (L->n_merges == L->cap_merges) {
        L->cap_merges = L->cap_merges ? 2 * L->cap_merges : 1024;
        int (*nm)[2] = realloc(L->merges, (size_t)L->cap_merges * sizeof *nm);
        SD_CHECK(nm, "out of memory");
        L->merges = nm;
    }
    L->merges[L->n_merges][0] = a;
    L->merges[L->n_merges][1] = b;
    L->n_merges++;
}

/* The id of the concatenation of tokens a and b (a new id if the string is new). */
static int merged_token(learner_t *L, int a, int b) {
    size_t la = strlen(L->tok[a]), lb = strlen(L->tok[b]);
    char *s = sd_xmalloc(la + lb + 1);
    memcpy(s, L->tok[a], la);
    memcpy(s + la, L->tok[b], lb + 1);
    int id = add_token(L, s);
    free(s);
    return id;
}

static int on_piece(void *ctx, const char *bytes, size_t n, int special) {
    learner_t *L = ctx;
    if (special || n == 0) return 0;   /* literal <|startoftext|> / <|endoftext|>: not words */
    L->n_pieces++;
    if (L->reserved_len && n == L->reserved_len && !memcmp(bytes, L->reserved, n))
        return sd_error(SD_ERR_ARG, "caption %d contains the reserved identifier \"%s\" (it must never occur "
                        "in the captions, or it would not stay rare)", L->caption + 1, L->reserved);
    int id = strmap_get(&L->word_ids, bytes, n);
    if (id >= 0) {
        L->words[id].count++;
        return 0;
    }
    if (L->n_words == L->cap_words) {
        L->cap_words = L->cap_words ? 2 * L->cap_words : 1024;
        word_t *nw = realloc(L->words, (size_t)L->cap_words * sizeof *nw);
        SD_CHECK(nw, "out of memory");
        L->words = nw;
    }
    word_t *w = &L->words[L->n_words];
    w->sym = sd_xmalloc(n * sizeof *w->sym);
    w->len = (int)n;
    w->count = 1;
    for (size_t i = 0; i < n; i++)
        w->sym[i] = i + 1 < n ? L->byte_sym[(unsigned char)bytes[i]] : L->byte_end_sym[(unsigned char)bytes[i]];
    strmap_put(&L->word_ids, bytes, n, L->n_words++);
    return 0;
}

typedef struct {
    const char *want;   /* the word; same: its first piece is exactly it (bytes, not special) */
    int pieces, same;
} one_piece_t;

static int count_pieces(void *ctx, const char *bytes, size_t n, int special) {
    one_piece_t *o = ctx;   /* (the bytes are only valid during the call) */
    if (o->pieces++ == 0) o->same = !special && n == strlen(o->want) && !memcmp(bytes, o->want, n);
    return 0;
}

/* ---------------------------------------------------------------- output */

static int write_text(const char *dir, const char *name, const char *text) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = sd_xmalloc(n);
    snprintf(path, n, "%s/%s", dir, name);
    int rc = outputs_check(path);   /* not a device, folder or input */
    FILE *f = rc ? NULL : fopen(path, "wb");
    if (!rc && !f) rc = sd_error(SD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    if (f) {
        size_t len = strlen(text);
        int bad = fwrite(text, 1, len, f) != len;
        bad |= fclose(f) != 0;
        if (bad) rc = sd_error(SD_ERR_IO, "%s: write error", path);
    }
    free(path);
    return rc;
}

static int write_json(const char *dir, const char *name, cJSON *j) {
    char *s = cJSON_Print(j);
    SD_CHECK(s, "out of memory");
    size_t n = strlen(s);
    char *t = sd_xmalloc(n + 2);
    memcpy(t, s, n);
    t[n] = '\n', t[n + 1] = '\0';
    int rc = write_text(dir, name, t);
    free(s);
    free(t);
    return rc;
}

/* SD 1.x tokenizer configs: bos <|startoftext|>, eos = pad = unk = <|endoftext|>. */
static int write_configs(const char *dir) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "bos_token", "<|startoftext|>");
    cJSON_AddStringToObject(m, "eos_token", "<|endoftext|>");
    cJSON_AddStringToObject(m, "pad_token", "<|endoftext|>");
    cJSON_AddStringToObject(m, "unk_token", "<|endoftext|>");
    int rc = write_json(dir, "special_tokens_map.json", m);
    cJSON_Delete(m);
    if (rc) return rc;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddBoolToObject(c, "add_prefix_space", 0);
    cJSON_AddStringToObject(c, "bos_token", "<|startoftext|>");
    cJSON_AddBoolToObject(c, "do_lower_case", 1);
    cJSON_AddStringToObject(c, "eos_token", "<|endoftext|>");
    cJSON_AddStringToObject(c, "errors", "replace");
    cJSON_AddNumberToObject(c, "model_max_length", TOKENIZER_MAX_LENGTH);
    cJSON_AddStringToObject(c, "pad_token", "<|endoftext|>");
    cJSON_AddStringToObject(c, "tokenizer_class", "CLIPTokenizer");
    cJSON_AddStringToObject(c, "unk_token", "<|endoftext|>");
    rc = write_json(dir, "tokenizer_config.json", c);
    cJSON_Delete(c);
    return rc;
}

static int write_files(const learner_t *L, const char *dir) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return sd_error(SD_ERR_IO, "%s: cannot create the folder: %s", dir, strerror(errno));
    cJSON *v = cJSON_CreateObject();
    for (int i = 0; i < L->n_tok; i++) cJSON_AddNumberToObject(v, L->tok[i], i);
    int rc = write_json(dir, "vocab.json", v);
    cJSON_Delete(v);
    if (rc) return rc;
    size_t cap = 64, n = 0;
    for (int m = 0; m < L->n_merges; m++) cap += strlen(L->tok[L->merges[m][0]]) + strlen(L->tok[L->merges[m][1]]) + 2;
    char *text = sd_xmalloc(cap);
    n += (size_t)snprintf(text, cap, "#version: 0.2\n");
    for (int m = 0; m < L->n_merges; m++)
        n += (size_t)snprintf(text + n, cap - n, "%s %s\n", L->tok[L->merges[m][0]], L->tok[L->merges[m][1]]);
    rc = write_text(dir, "merges.txt", text);
    free(text);
    return rc ? rc : write_configs(dir);
}

static void learner_free(learner_t *L) {
    for (int i = 0; i < L->n_tok; i++) free(L->tok[i]);
    free(L->tok);
    strmap_free(&L->tok_ids);
    for (int i = 0; i < L->n_words; i++) free(L->words[i].sym);
    free(L->words);
    strmap_free(&L->word_ids);
    free(L->pairs.key), free(L->pairs.count);
    free(L->heap);
    free(L->merges);
}

/* ---------------------------------------------------------------- learning */

int bpe_learn(const char *const *captions, int n, const bpe_learn_options_t *opt, const char *out_dir,
              bpe_learn_stats_t *stats) {
    bpe_learn_options_t o = opt ? *opt : (bpe_learn_options_t){0};
    if (o.min_frequency < 1) o.min_frequency = 1;
    if (n == 0) return sd_error(SD_ERR_ARG, "no captions to learn a vocabulary from");
    if (!captions || n < 0 || !out_dir) return sd_error(SD_ERR_ARG, "bpe_learn: NULL argument");
    learner_t L = {0};
    strmap_init(&L.tok_ids, 4096);
    strmap_init(&L.word_ids, 4096);
    pairmap_init(&L.pairs, 1 << 14);
    int rc = 0;

    /* ids 0-255: bytes_to_unicode's values in CLIP's order (printable Latin-1 bytes first,
     * then the rest shifted to U+0100..), 256-511 the same with "</w>" */
    int order[256], k = 0;
    for (int b = 0; b < 256; b++)
        if (tokenizer_byte_to_unicode(b) == (uint32_t)b) order[k++] = b;
    for (int b = 0; b < 256; b++)
        if (tokenizer_byte_to_unicode(b) != (uint32_t)b) order[k++] = b;
    for (int end = 0; end < 2; end++)
        for (int i = 0; i < 256; i++) {
            char s[12];
            int l = utf8_encode(s, tokenizer_byte_to_unicode(order[i]));
            strcpy(s + l, end ? "</w>" : "");
            int id = add_token(&L, s);
            if (end) L.byte_end_sym[order[i]] = id;
            else L.byte_sym[order[i]] = id;
        }

    /* the reserved word: one piece of letters; its merge chain goes first */
    if (o.reserved && o.reserved[0]) {
        one_piece_t one = {o.reserved, 0, 0};
        tokenizer_split(o.reserved, count_pieces, &one);
        if (one.pieces != 1 || !one.same) {
            rc = sd_error(SD_ERR_ARG, "reserved identifier \"%s\" is not one lowercase word (the tokenizer cleans "
                          "and splits it into %d piece%s)", o.reserved, one.pieces, one.pieces == 1 ? " that differs" : "s");
            goto done;
        }
        L.reserved = o.reserved;
        L.reserved_len = strlen(o.reserved);
        size_t rl = L.reserved_len;
        if (rl > 1) {
            int cur = L.byte_sym[(unsigned char)o.reserved[0]];
            for (size_t i = 1; i < rl; i++) {
                int nx = i + 1 < rl ? L.byte_sym[(unsigned char)o.reserved[i]] : L.byte_end_sym[(unsigned char)o.reserved[i]];
                add_merge(&L, cur, nx);
                cur = merged_token(&L, cur, nx);
            }
        }
    }
    int fixed_ids = L.n_tok;
    if (o.vocab_size < fixed_ids + 2) {
        rc = sd_error(SD_ERR_ARG, "vocabulary size %d is too small: the bytes%s already take %d ids, plus 2 "
                      "special tokens", o.vocab_size, L.reserved ? " and the reserved word" : "", fixed_ids);
        goto done;
    }

    /* word counts */
    for (int c = 0; c < n && !rc; c++) {
        L.caption = c;
        rc = tokenizer_split(captions[c], on_piece, &L);
    }
    if (rc) goto done;

    /* the reserved chain applied to every word, then the initial pair counts */
    for (int m = 0; m < L.n_merges; m++) {
        int a = L.merges[m][0], b = L.merges[m][1];
        int r = merged_token(&L, a, b);
        for (int i = 0; i < L.n_words; i++) merge_word(&L.words[i], a, b, r);
    }
    for (int i = 0; i < L.n_words; i++) count_word_pairs(&L, &L.words[i], 1);

    /* greedy merges: the most frequent pair (lazy heap: an entry is current when its count
     * matches the table) until the vocabulary is full or no pair is frequent enough */
    while (L.n_tok + 2 < o.vocab_size && L.n_heap > 0) {
        cand_t c = heap_pop(&L);
        if (pairmap_get(&L.pairs, pkey(c.a, c.b)) != c.count) continue;   /* stale */
        if (c.count < o.min_frequency) break;
        int r = merged_token(&L, c.a, c.b);
        add_merge(&L, c.a, c.b);
        for (int i = 0; i < L.n_words; i++) {
            word_t *w = &L.words[i];
            if (!contains_pair(w, c.a, c.b)) continue;
            count_word_pairs(&L, w, -1);
            merge_word(w, c.a, c.b, r);
            count_word_pairs(&L, w, 1);
        }
    }
    add_token(&L, "<|startoftext|>");
    add_token(&L, "<|endoftext|>");
    rc = write_files(&L, out_dir);
    if (!rc && stats) {
        stats->n_captions = n;
        stats->n_words = (int)L.n_pieces;
        stats->n_unique_words = L.n_words;
        stats->n_merges = L.n_merges;
        stats->vocab_size = L.n_tok;
    }
done:
    learner_free(&L);
    return rc;
}

/* ---------------------------------------------------------------- captions file */

int bpe_read_captions(const char *path, int column, char ***out, int *n) {
    *out = NULL, *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char **caps = NULL;
    int count = 0, cap = 0, lineno = 0, rc = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        char *s = line;
        size_t sl = (size_t)len;
        if (column >= 1) {
            for (int c = 1; c < column && s; c++) {
                s = strchr(s, '\t');
                if (s) s++;
            }
            if (!s) {
                if (len == 0) continue;
                rc = sd_error(SD_ERR_FORMAT, "%s: line %d has no column %d (tab-separated)", path, lineno, column);
                break;
            }
            char *tab = strchr(s, '\t');
            sl = tab ? (size_t)(tab - s) : strlen(s);
        }
        if (sl == 0) continue;
        if (count == cap) {
            cap = cap ? 2 * cap : 1024;
            char **nc = realloc(caps, (size_t)cap * sizeof *nc);
            SD_CHECK(nc, "out of memory");
            caps = nc;
        }
        caps[count] = sd_xmalloc(sl + 1);
        memcpy(caps[count], s, sl);
        caps[count][sl] = '\0';
        count++;
    }
    if (!rc && ferror(f)) rc = sd_error(SD_ERR_IO, "%s: read error", path);
    free(line);
    fclose(f);
    if (!rc && count == 0 && column >= 1)
        rc = sd_error(SD_ERR_FORMAT, "%s: no captions: column %d is empty on every line", path, column);
    else if (!rc && count == 0)
        rc = sd_error(SD_ERR_FORMAT, "%s: no captions: the file is empty or holds only empty lines", path);
    if (rc) {
        bpe_free_captions(caps, count);
        return rc;
    }
    *out = caps, *n = count;
    return 0;
}

void bpe_free_captions(char **captions, int n) {
    for (int i = 0; i < n; i++) free(captions[i]);
    free(captions);
}
