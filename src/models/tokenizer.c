/* CLIP BPE tokenizer (see tokenizer.h): file loading into two open-addressing hash tables
 * (token string -> id, and (left id, right id) -> merge rank + result id), the text
 * normalisation and split of CLIP's simple_tokenizer, and byte-pair merging with a heap
 * (O(n log n) per piece, so an adversarial 1 MB "word" stays fast). */
#include "models/tokenizer.h"

#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "io/outputs.h"
#include "models/utf8class.h"

#define MAX_MERGES (49152 - 256 - 2)  /* transformers/CLIP read at most this many merges */
#define MAX_VOCAB_ID (1 << 24)

struct clip_tokenizer {
    /* vocab: open addressing, capacity a power of two; vkey == NULL marks an empty slot */
    uint32_t vcap;
    const char **vkey;
    uint32_t *vlen;
    int32_t *vval;
    char *arena;          /* every token string, NUL-terminated */
    int n_ids;            /* 1 + largest id */
    const char **id_token;
    /* merges: key (a << 32 | b), rank, merged id; mrank < 0 marks an empty slot */
    uint32_t mcap;
    uint64_t *mkey;
    int32_t *mrank, *mres;
    int n_merges;
    int byte_id[256], byte_end_id[256];  /* bytes_to_unicode(b) and the same + "</w>" */
    int bos, eos, pad, sot, eot;         /* sot/eot: ids of the pattern's literal specials */
};

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;  /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    h ^= h >> 29;
    return h;
}

static uint64_t hash_pair(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static int vocab_find(const clip_tokenizer_t *t, const char *s, size_t n) {
    uint32_t mask = t->vcap - 1;
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        if (!t->vkey[i]) return -1;
        if (t->vlen[i] == n && !memcmp(t->vkey[i], s, n)) return t->vval[i];
    }
}

/* Inserts or overwrites (a repeated JSON key keeps its last id, as Python's json does). */
static void vocab_put(clip_tokenizer_t *t, const char *s, size_t n, int id) {
    uint32_t mask = t->vcap - 1;
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        if (!t->vkey[i]) {
            t->vkey[i] = s, t->vlen[i] = (uint32_t)n, t->vval[i] = id;
            return;
        }
        if (t->vlen[i] == n && !memcmp(t->vkey[i], s, n)) {
            t->vval[i] = id;
            return;
        }
    }
}

/* Rank of merging (a, b), or -1; *res receives the merged id. */
static inline int merge_find(const clip_tokenizer_t *t, int a, int b, int *res) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t mask = t->mcap - 1;
    for (uint32_t i = (uint32_t)hash_pair(key) & mask;; i = (i + 1) & mask) {
        if (t->mrank[i] < 0) return -1;
        if (t->mkey[i] == key) {
            *res = t->mres[i];
            return t->mrank[i];
        }
    }
}

/* A repeated pair keeps its last rank (Python's dict(zip(merges, range(...)))). */
static void merge_put(clip_tokenizer_t *t, int a, int b, int rank, int res) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t mask = t->mcap - 1;
    for (uint32_t i = (uint32_t)hash_pair(key) & mask;; i = (i + 1) & mask) {
        if (t->mrank[i] < 0 || t->mkey[i] == key) {
            t->mkey[i] = key, t->mrank[i] = rank, t->mres[i] = res;
            return;
        }
    }
}

static uint32_t pow2_at_least(size_t n) {
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* ---------------------------------------------------------------- loading */

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = sd_xmalloc(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Whole file, NUL-terminated; NULL with errno set when it cannot be read. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    outputs_note_input_fd(fileno(f), path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68
 * (controls, space, DEL, NBSP, soft hyphen) for U+0100.. in byte order. */
static uint32_t byte_to_unicode(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + (uint32_t)n;
}

static int load_vocab(clip_tokenizer_t *t, const char *path) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return sd_error(SD_ERR_IO, "%s: cannot read the tokenizer vocabulary (%s)", path, strerror(errno));
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        free(text);
        return sd_error(SD_ERR_FORMAT, "%s: not valid JSON (parse error near byte %ld)", path, off);
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sd_error(SD_ERR_FORMAT, "%s: expected a JSON object {token: id, ...}", path);
    }
    size_t n = 0, bytes = 0;
    int max_id = -1;
    for (cJSON *e = root->child; e; e = e->next) {
        double v = e->valuedouble;
        if (!cJSON_IsNumber(e) || !(v >= 0 && v < MAX_VOCAB_ID) || v != (double)(int)v) {
            int rc = sd_error(SD_ERR_FORMAT, "%s: the id of token \"%s\" is not an integer in [0, %d)",
                              path, e->string ? e->string : "", MAX_VOCAB_ID);
            cJSON_Delete(root);
            return rc;
        }
        if ((int)v > max_id) max_id = (int)v;
        bytes += strlen(e->string) + 1;
        n++;
    }
    if (n == 0) {
        cJSON_Delete(root);
        return sd_error(SD_ERR_FORMAT, "%s: the vocabulary is empty", path);
    }
    t->arena = sd_xmalloc(bytes);
    t->vcap = pow2_at_least(2 * n);
    t->vkey = sd_xcalloc(t->vcap, sizeof *t->vkey);
    t->vlen = sd_xmalloc(t->vcap * sizeof *t->vlen);
    t->vval = sd_xmalloc(t->vcap * sizeof *t->vval);
    t->n_ids = max_id + 1;
    t->id_token = sd_xcalloc((size_t)t->n_ids, sizeof *t->id_token);
    char *w = t->arena;
    for (cJSON *e = root->child; e; e = e->next) {
        size_t l = strlen(e->string);
        memcpy(w, e->string, l + 1);
        vocab_put(t, w, l, e->valueint);
        t->id_token[e->valueint] = w;
        w += l + 1;
    }
    cJSON_Delete(root);
    /* every byte, alone and word-final, must have an id: any text can then be encoded */
    for (int b = 0; b < 256; b++) {
        char s[8];
        int l = utf8_encode(s, byte_to_unicode(b));
        t->byte_id[b] = vocab_find(t, s, (size_t)l);
        memcpy(s + l, "</w>", 4);
        t->byte_end_id[b] = vocab_find(t, s, (size_t)l + 4);
        if (t->byte_id[b] < 0 || t->byte_end_id[b] < 0)
            return sd_error(SD_ERR_FORMAT, "%s: no token for byte 0x%02X (\"%.*s\" and \"%.*s</w>\" "
                            "are required: not a byte-level BPE vocabulary)", path, b, l, s, l, s);
    }
    return 0;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static int load_merges(clip_tokenizer_t *t, const char *path) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return sd_error(SD_ERR_IO, "%s: cannot read the BPE merges (%s)", path, strerror(errno));
    int rc = 0;
    char *line = text, *cat = NULL;
    size_t cat_cap = 0;
    /* the whole file's trailing whitespace is ignored (transformers strips the file) */
    size_t end = len;
    while (end > 0 && (is_ws(text[end - 1]) || text[end - 1] == '\n')) end--;
    text[end] = '\0';
    char *nl = strchr(line, '\n');
    if (line[0] != '#') {
        rc = sd_error(SD_ERR_FORMAT, "%s: line 1 should be the '#version: ...' header, got \"%.40s\"", path, line);
        goto done;
    }
    size_t nlines = 1;
    for (char *q = nl; q; q = strchr(q + 1, '\n')) nlines++;
    t->mcap = pow2_at_least(2 * (nlines < MAX_MERGES ? nlines : MAX_MERGES) + 16);
    t->mkey = sd_xmalloc(t->mcap * sizeof *t->mkey);
    t->mrank = sd_xmalloc(t->mcap * sizeof *t->mrank);
    t->mres = sd_xmalloc(t->mcap * sizeof *t->mres);
    memset(t->mrank, 0xff, t->mcap * sizeof *t->mrank);  /* -1: empty */
    int lineno = 1;
    while (nl && t->n_merges < MAX_MERGES) {
        line = nl + 1;
        lineno++;
        nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        /* split on whitespace into exactly two fields */
        const char *f[3];
        size_t fl[3];
        int nf = 0;
        for (size_t i = 0; i < ll;) {
            while (i < ll && is_ws(line[i])) i++;
            if (i >= ll) break;
            size_t s = i;
            while (i < ll && !is_ws(line[i])) i++;
            if (nf < 3) f[nf] = line + s, fl[nf] = i - s;
            nf++;
        }
        if (nf != 2) {
            rc = sd_error(SD_ERR_FORMAT, "%s: line %d: expected a merge \"left right\" (two tokens), got \"%.*s\"",
                          path, lineno, (int)(ll > 60 ? 60 : ll), line);
            goto done;
        }
        int a = vocab_find(t, f[0], fl[0]), b = vocab_find(t, f[1], fl[1]);
        if (fl[0] + fl[1] + 1 > cat_cap) {
            cat_cap = 2 * (fl[0] + fl[1] + 1);
            free(cat);
            cat = sd_xmalloc(cat_cap);
        }
        memcpy(cat, f[0], fl[0]);
        memcpy(cat + fl[0], f[1], fl[1]);
        int r = vocab_find(t, cat, fl[0] + fl[1]);
        if (a < 0 || b < 0 || r < 0) {
            const char *which = a < 0 ? f[0] : b < 0 ? f[1] : cat;
            int wl = (int)(a < 0 ? fl[0] : b < 0 ? fl[1] : fl[0] + fl[1]);
            rc = sd_error(SD_ERR_FORMAT, "%s: line %d: merge \"%.*s %.*s\" needs token \"%.*s\", which vocab.json "
                          "lacks (vocab.json and merges.txt do not belong together)",
                          path, lineno, (int)fl[0], f[0], (int)fl[1], f[1], wl, which);
            goto done;
        }
        merge_put(t, a, b, t->n_merges++, r);
    }
    if (t->n_merges == 0) rc = sd_error(SD_ERR_FORMAT, "%s: no merges after the header line", path);
done:
    free(cat);
    free(text);
    return rc;
}

/* The string of special token `key` from a parsed JSON config: a string or {"content": s}. */
static const char *special_from(const cJSON *cfg, const char *key) {
    const cJSON *v = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, key) : NULL;
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

/* Optional JSON file: *out = NULL when absent; an error when present but unreadable / not JSON. */
static int load_optional_json(cJSON **out, const char *path) {
    *out = NULL;
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        if (errno == ENOENT) return 0;
        return sd_error(SD_ERR_IO, "%s: cannot read (%s)", path, strerror(errno));
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sd_error(SD_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = root;
    return 0;
}

static int load_specials(clip_tokenizer_t *t, const char *dir, const char *vocab_path) {
    static const char *const KEYS[3] = {"bos_token", "eos_token", "pad_token"};
    static const char *const DEFAULTS[3] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>"};
    char *p_map = path_join(dir, "special_tokens_map.json"), *p_cfg = path_join(dir, "tokenizer_config.json");
    cJSON *map = NULL, *cfg = NULL;
    int rc = load_optional_json(&map, p_map);
    if (!rc) rc = load_optional_json(&cfg, p_cfg);
    int *dst[3] = {&t->bos, &t->eos, &t->pad};
    for (int k = 0; k < 3 && !rc; k++) {
        /* special_tokens_map.json overrides tokenizer_config.json, as in transformers */
        const char *s = special_from(map, KEYS[k]), *src = p_map;
        if (!s) s = special_from(cfg, KEYS[k]), src = p_cfg;
        if (!s) s = DEFAULTS[k], src = NULL;
        *dst[k] = vocab_find(t, s, strlen(s));
        if (*dst[k] < 0) {
            if (src)
                rc = sd_error(SD_ERR_FORMAT, "%s: %s \"%s\" is not in %s", src, KEYS[k], s, vocab_path);
            else
                rc = sd_error(SD_ERR_FORMAT, "%s: missing the special token \"%s\" (%s)", vocab_path, s, KEYS[k]);
        }
    }
    /* the split pattern's literal special tokens map to these ids whatever the configs say */
    if (!rc && ((t->sot = vocab_find(t, "<|startoftext|>", 15)) < 0 || (t->eot = vocab_find(t, "<|endoftext|>", 13)) < 0))
        rc = sd_error(SD_ERR_FORMAT, "%s: missing the special token \"%s\"", vocab_path,
                      t->sot < 0 ? "<|startoftext|>" : "<|endoftext|>");
    cJSON_Delete(map);
    cJSON_Delete(cfg);
    free(p_map);
    free(p_cfg);
    return rc;
}

int tokenizer_load(clip_tokenizer_t **out, const char *dir) {
    *out = NULL;
    if (!dir) return sd_error(SD_ERR_ARG, "tokenizer_load: no folder given");
    clip_tokenizer_t *t = sd_xcalloc(1, sizeof *t);
    char *p_vocab = path_join(dir, "vocab.json"), *p_merges = path_join(dir, "merges.txt");
    int rc = load_vocab(t, p_vocab);
    if (!rc) rc = load_merges(t, p_merges);
    if (!rc) rc = load_specials(t, dir, p_vocab);
    free(p_vocab);
    free(p_merges);
    if (rc) {
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tokenizer_free(clip_tokenizer_t *t) {
    if (!t) return;
    free(t->vkey), free(t->vlen), free(t->vval), free(t->arena), free(t->id_token);
    free(t->mkey), free(t->mrank), free(t->mres);
    free(t);
}

int tokenizer_bos_id(const clip_tokenizer_t *t) { return t->bos; }
int tokenizer_eos_id(const clip_tokenizer_t *t) { return t->eos; }
int tokenizer_pad_id(const clip_tokenizer_t *t) { return t->pad; }
int tokenizer_vocab_size(const clip_tokenizer_t *t) { return t->n_ids; }
int tokenizer_n_merges(const clip_tokenizer_t *t) { return t->n_merges; }
const char *tokenizer_token(const clip_tokenizer_t *t, int id) {
    return id >= 0 && id < t->n_ids ? t->id_token[id] : NULL;
}
int tokenizer_token_id(const clip_tokenizer_t *t, const char *token) { return vocab_find(t, token, strlen(token)); }
void tokenizer_set_pad_id(clip_tokenizer_t *t, int id) {
    SD_CHECK(id >= 0 && id < t->n_ids, "pad id %d outside the vocabulary", id);
    t->pad = id;
}

/* ---------------------------------------------------------------- BPE */

typedef struct {
    int *sym, *prev, *next;   /* symbols of the current piece as a linked list over byte slots */
    struct cand { int rank, pos, a, b, res; } *heap, *pending;
    int nheap, npending;
    size_t room;              /* symbols the arrays hold */
    char *bytes;              /* the piece's UTF-8 bytes (room) */
    int *out;                 /* where emitted ids go (room for `cap`), and how many there were */
    int cap, count;
} bpe_work_t;

static void emit(bpe_work_t *w, int id) {
    if (w->count < w->cap) w->out[w->count] = id;
    w->count++;
}

static inline int cand_less(const struct cand *x, const struct cand *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(bpe_work_t *w, struct cand c) {
    int i = w->nheap++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!cand_less(&c, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
}

static struct cand heap_pop(bpe_work_t *w) {
    struct cand top = w->heap[0], last = w->heap[--w->nheap];
    int i = 0, n = w->nheap;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!cand_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0) w->heap[i] = last;
    return top;
}

/* Queues the pair starting at symbol `pos` if it is a known merge. */
static void consider(const clip_tokenizer_t *t, bpe_work_t *w, int pos, int into_pending) {
    if (pos < 0 || w->next[pos] < 0) return;
    int res, a = w->sym[pos], b = w->sym[w->next[pos]];
    int rank = merge_find(t, a, b, &res);
    if (rank < 0) return;
    struct cand c = {rank, pos, a, b, res};
    if (into_pending) w->pending[w->npending++] = c;
    else heap_push(w, c);
}

static int cand_valid(const bpe_work_t *w, const struct cand *c) {
    return w->sym[c->pos] == c->a && w->next[c->pos] >= 0 && w->sym[w->next[c->pos]] == c->b;
}

/* Merges the n byte symbols in w->sym[0..n) like CLIP's bpe(): repeatedly take the
 * lowest-ranked pair present and merge all its occurrences left to right in one pass. The
 * heap holds (rank, position) candidates; a pass pops every candidate of the lowest rank in
 * position order, and the pairs it creates wait in `pending` until the pass is over (a new
 * pair may rank lower than the pass's, but Python only sees it in the next pass). Symbol
 * ids grow strictly in length when merged, so (pos, left id, right id) identifies a pair
 * and stale candidates are recognised by comparing ids. Dead symbols keep sym = -1. */
static void bpe_piece(const clip_tokenizer_t *t, bpe_work_t *w, int n) {
    for (int i = 0; i < n; i++) w->prev[i] = i - 1, w->next[i] = i + 1 < n ? i + 1 : -1;
    w->nheap = 0;
    for (int i = 0; i + 1 < n; i++) consider(t, w, i, 0);
    while (w->nheap > 0) {
        struct cand c = heap_pop(w);
        if (!cand_valid(w, &c)) continue;
        int rank = c.rank;
        w->npending = 0;
        for (;;) {
            if (cand_valid(w, &c)) {
                int q = w->next[c.pos];
                w->sym[c.pos] = c.res;
                w->sym[q] = -1;
                w->next[c.pos] = w->next[q];
                if (w->next[q] >= 0) w->prev[w->next[q]] = c.pos;
                consider(t, w, w->prev[c.pos], 1);
                consider(t, w, c.pos, 1);
            }
            if (w->nheap == 0 || w->heap[0].rank != rank) break;
            c = heap_pop(w);
        }
        for (int k = 0; k < w->npending; k++) heap_push(w, w->pending[k]);
    }
    for (int i = 0; i >= 0; i = w->next[i]) emit(w, w->sym[i]);
}

/* Grows the work arrays to hold a piece of n bytes (sized by the longest piece, not the
 * text: the heap holds at most 3 n candidates, a pass queues at most 2 n). */
static void work_reserve(bpe_work_t *w, size_t n) {
    if (n <= w->room) return;
    size_t room = n < 64 ? 64 : n + n / 2;
    free(w->sym), free(w->heap), free(w->pending), free(w->bytes);
    w->bytes = sd_xmalloc(room);
    w->sym = sd_xmalloc(3 * room * sizeof(int));
    w->prev = w->sym + room, w->next = w->prev + room;
    w->heap = sd_xmalloc(3 * room * sizeof *w->heap);
    w->pending = sd_xmalloc(2 * room * sizeof *w->pending);
    w->room = room;
}

/* ---------------------------------------------------------------- encode */

/* Does the code point match the ASCII pattern character c under the regex module's
 * IGNORECASE? (After lower() only U+017F LATIN SMALL LETTER LONG S folds onto a letter of
 * the pattern: s.) */
static int ci_eq(uint32_t cp, char c) {
    if (cp == (uint32_t)c) return 1;
    if (c >= 'a' && c <= 'z' && cp == (uint32_t)(c - 32)) return 1;
    return c == 's' && cp == 0x17F;
}

/* Length of the literal `lit` matched at s[0..n) case-insensitively, or 0. */
static size_t match_lit(const uint32_t *s, size_t n, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++)
        if (k >= n || !ci_eq(s[k], lit[k])) return 0;
    return k;
}

/* CLIP's text cleaning and split (see tokenizer.h): calls fn once per piece with its UTF-8
 * bytes; shared by tokenizer_encode and tokenizer_split so they can never disagree. */
typedef int (*piece_cb)(void *ctx, const char *piece, size_t n, int special);

static int split_text(const char *text, piece_cb fn, void *ctx) {
    size_t nb = strlen(text);
    /* text buffers: a and b hold up to 2 nb code points (lower() may double U+0130) */
    uint32_t *a = sd_xmalloc((2 * nb + 1) * sizeof *a), *b = sd_xmalloc((2 * nb + 1) * sizeof *b);
    size_t n = utf8_decode(a, text, nb);
    n = uc_html_unescape(b, a, n);
    n = uc_html_unescape(a, b, n);
    /* basic_clean's strip(), whitespace_clean's \s+ -> ' ' and strip() */
    size_t lo = 0, hi = n, m = 0;
    while (lo < hi && uc_isspace(a[lo])) lo++;
    while (hi > lo && uc_isspace(a[hi - 1])) hi--;
    for (size_t i = lo; i < hi;) {
        if (uc_split_class(a[i]) == UC_SPACE) {
            while (i < hi && uc_split_class(a[i]) == UC_SPACE) i++;
            b[m++] = ' ';
        } else {
            b[m++] = a[i++];
        }
    }
    lo = 0, hi = m;
    while (lo < hi && uc_isspace(b[lo])) lo++;
    while (hi > lo && uc_isspace(b[hi - 1])) hi--;
    n = uc_lower(a, b + lo, hi - lo);

    char *bytes = NULL;
    size_t room = 0;
    int rc = 0;
    for (size_t p = 0; p < n && !rc;) {
        /* the alternatives of the split pattern, in order */
        size_t len = 0;
        int special = 0;
        if (a[p] == '<') {
            static const char *const LIT[2] = {"<|startoftext|>", "<|endoftext|>"};
            for (int k = 0; k < 2 && !len; k++) {
                len = match_lit(a + p, n - p, LIT[k]);
                /* only the exact string is in simple_tokenizer's bpe cache -> special id;
                 * a variant with U+017F for 's' is an ordinary piece */
                int exact = len > 0;
                for (size_t i = 0; i < len; i++) exact &= a[p + i] == (uint32_t)LIT[k][i];
                if (exact) special = k + 1;
            }
        }
        if (!len && a[p] == '\'') {
            static const char *const CONTR[7] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
            for (int k = 0; k < 7 && !len; k++) len = match_lit(a + p, n - p, CONTR[k]);
        }
        if (!len) {
            int c = uc_split_class(a[p]);
            if (c == UC_SPACE || c == UC_NONE) {  /* matched by no alternative: skipped */
                p++;
                continue;
            }
            len = 1;
            if (c != UC_NUMBER)
                while (p + len < n && uc_split_class(a[p + len]) == c) len++;
        }
        if (4 * len > room) {
            room = 4 * len < 256 ? 256 : 8 * len;
            free(bytes);
            bytes = sd_xmalloc(room);
        }
        size_t nbytes = 0;
        for (size_t i = 0; i < len; i++) nbytes += (size_t)utf8_encode(bytes + nbytes, a[p + i]);
        rc = fn(ctx, bytes, nbytes, special);
        p += len;
    }
    free(bytes), free(a), free(b);
    return rc;
}

int tokenizer_split(const char *text, tokenizer_piece_fn fn, void *ctx) {
    if (!text || !fn) return sd_error(SD_ERR_ARG, "tokenizer_split: NULL argument");
    return split_text(text, fn, ctx);
}

uint32_t tokenizer_byte_to_unicode(int b) { return byte_to_unicode(b & 255); }

typedef struct {
    const clip_tokenizer_t *t;
    bpe_work_t w;
} encode_ctx_t;

static int encode_piece(void *ctx, const char *bytes, size_t nbytes, int special) {
    encode_ctx_t *e = ctx;
    const clip_tokenizer_t *t = e->t;
    bpe_work_t *w = &e->w;
    if (special) {
        emit(w, special == 1 ? t->sot : t->eot);
        return 0;
    }
    work_reserve(w, nbytes);
    for (size_t i = 0; i + 1 < nbytes; i++) w->sym[i] = t->byte_id[(unsigned char)bytes[i]];
    w->sym[nbytes - 1] = t->byte_end_id[(unsigned char)bytes[nbytes - 1]];
    if (nbytes == 1) emit(w, w->sym[0]);
    else bpe_piece(t, w, (int)nbytes);
    return 0;
}

int tokenizer_encode(const clip_tokenizer_t *t, const char *text, int *ids, int max_len, int pad,
                     int *n_tokens_before_truncation) {
    if (!t || !text || !ids) return sd_error(SD_ERR_ARG, "tokenizer_encode: NULL argument");
    if (max_len < 2) return sd_error(SD_ERR_ARG, "tokenizer_encode: max_len %d < 2 (no room for bos and eos)", max_len);
    encode_ctx_t e = {.t = t};
    e.w.out = ids + 1;
    e.w.cap = max_len - 2;
    split_text(text, encode_piece, &e);
    bpe_work_t w = e.w;
    free(w.bytes), free(w.sym), free(w.heap), free(w.pending);

    int kept = w.count < w.cap ? w.count : w.cap;
    ids[0] = t->bos;
    ids[kept + 1] = t->eos;
    int total = kept + 2;
    if (pad)
        for (; total < max_len; total++) ids[total] = t->pad;
    if (n_tokens_before_truncation) *n_tokens_before_truncation = w.count + 2;
    return total;
}
