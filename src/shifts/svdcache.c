/* The SVD cache (shifts.h): thin SVD factors of a base model's matrices, one safetensors file
 * per model hash, so a model is factored once (minutes at SD 1.5 scale) and then mapped and
 * copied in seconds. Also the "make a whole UNet / text encoder spectral through the cache"
 * helpers that train and generate use. Bad cache contents, and a cache that cannot be written,
 * are warnings, never errors. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

#include "base/error.h"
#include "base/progress.h"
#include "base/runtime.h"
#include "io/outputs.h"
#include "shifts/shifts.h"

/* Format 2 adds a checksum per tensor, "sum:<tensor name>" in the metadata (shifts.h). */
#define CACHE_FORMAT "svdiff svd cache 2"

typedef struct {
    shift_component_t component;
    char *path;             /* module path (owned) */
    const spectral_t *sp;   /* referenced (svd_cache_put), or NULL when spilled */
    int spilled;            /* the factors were copied to the spill file at off (U, S, Vt in a row) */
    int rows, cols, rank;
    size_t off;
    char sum[3][17];        /* spilled: the factors' checksums, taken before they left memory */
} cache_put_t;

struct svd_cache {
    char *dir, *hash, *file;
    st_file_t f;            /* the cache file as found on disk (or as last saved) */
    int has_file;
    int n_put, cap_put;
    cache_put_t *put;       /* factors computed since the last save */
    long loaded, computed;
    int save_failed;        /* a save by run_finish failed: warned once, not retried */
    int store_bf16;         /* factors read from the file are stored in bf16 (svd_cache_set_bf16) */
    /* bf16 storage: computed factors are copied to an unlinked file in the cache folder until the
     * save, so that the model can keep them in bf16 at once (without it the fp32 factors of a whole
     * UNet, 14.6 GB for SDXL, would exist together on a cold cache) */
    int spill_fd;           /* -1: none yet */
    size_t spill_len;
};

void svd_cache_set_bf16(svd_cache_t *c, int on) {
    if (c) c->store_bf16 = on;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sd_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

/* mkdir -p */
static int make_dirs(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) return sd_error(SD_ERR_ARG, "%s: path too long", dir);
    for (char *p = buf + 1;; p++) {
        const int end = *p == '\0';
        if (*p == '/' || end) {
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return sd_error(SD_ERR_IO, "cannot create SVD cache folder %s: %s", buf, strerror(errno));
            if (end) break;
            *p = '/';
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return sd_error(SD_ERR_IO, "SVD cache folder %s is not a folder", dir);
    return SD_OK;
}

/* (Re)opens the cache file; an unusable one is a warning and leaves the cache empty. */
static void open_file(svd_cache_t *c) {
    if (c->has_file) st_close(&c->f), c->has_file = 0;
    struct stat st;
    if (stat(c->file, &st) != 0) return;
    if (st_open(&c->f, c->file) != 0) {
        fprintf(stderr, "warning: SVD cache %s is unreadable (%s); its factors will be recomputed\n", c->file,
                sd_last_error());
        sd_clear_error();
        return;
    }
    const char *h = st_meta(&c->f, "model_hash");
    if (h && strcmp(h, c->hash) != 0) {
        fprintf(stderr, "warning: SVD cache %s belongs to model %s, not %s; its factors will be recomputed\n",
                c->file, h, c->hash);
        st_close(&c->f);
        return;
    }
    const char *format = st_meta(&c->f, "format");
    if (!format || strcmp(format, CACHE_FORMAT) != 0) {
        /* without checksums a damaged factor cannot be told from a good one */
        fprintf(stderr, "warning: SVD cache %s has no checksums (format '%s', not '%s'); its factors will be "
                "recomputed\n", c->file, format ? format : "none", CACHE_FORMAT);
        st_close(&c->f);
        return;
    }
    c->has_file = 1;
}

int svd_cache_open(svd_cache_t **out, const char *dir, const char *model_hash) {
    *out = NULL;
    if (!model_hash || !model_hash[0] || strchr(model_hash, '/'))
        return sd_error(SD_ERR_ARG, "SVD cache: bad model hash '%s'", model_hash ? model_hash : "");
    int rc = make_dirs(dir);
    if (rc) return rc;
    svd_cache_t *c = sd_xcalloc(1, sizeof *c);
    c->dir = xstrdup(dir);
    c->hash = xstrdup(model_hash);
    c->file = sd_xmalloc(strlen(dir) + strlen(model_hash) + 32);
    sprintf(c->file, "%s/%s.svd.safetensors", dir, model_hash);
    c->spill_fd = -1;
    open_file(c);
    *out = c;
    return SD_OK;
}

static void drop_puts(svd_cache_t *c) {
    for (int i = 0; i < c->n_put; i++) free(c->put[i].path);
    c->n_put = 0;
    if (c->spill_fd >= 0) close(c->spill_fd);
    c->spill_fd = -1, c->spill_len = 0;
}

/* Writes n bytes at off of the spill file; 0 or -1. */
static int spill_write(int fd, const void *data, size_t n, size_t off) {
    const char *p = data;
    while (n) {
        const ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k <= 0) return -1;
        p += k, n -= (size_t)k, off += (size_t)k;
    }
    return 0;
}

static void checksum_hex(const void *data, size_t nbytes, char out[17]);

/* Copies a computed entry's fp32 factors to the spill file (created on first use, unlinked at
 * once); 0 when done, -1 when it cannot be (then the entry stays referenced, as without bf16). */
static int spill_put(svd_cache_t *c, cache_put_t *p, const spectral_t *sp) {
    if (!sp->U || !sp->Vt) return -1;
    if (c->spill_fd < 0) {
        char *tmpl = sd_xmalloc(strlen(c->dir) + 32);
        sprintf(tmpl, "%s/.svd-spill-XXXXXX", c->dir);
        c->spill_fd = mkstemp(tmpl);
        if (c->spill_fd >= 0) unlink(tmpl);
        free(tmpl);
        c->spill_len = 0;
        if (c->spill_fd < 0) return -1;
    }
    const size_t nu = sizeof(float) * (size_t)sp->rows * sp->rank, ns = sizeof(float) * (size_t)sp->rank,
                 nv = sizeof(float) * (size_t)sp->rank * sp->cols, off = c->spill_len;
    if (spill_write(c->spill_fd, sp->U, nu, off) || spill_write(c->spill_fd, sp->S, ns, off + nu) ||
        spill_write(c->spill_fd, sp->Vt, nv, off + nu + ns))
        return -1;
    p->rows = sp->rows, p->cols = sp->cols, p->rank = sp->rank, p->off = off, p->spilled = 1;
    /* the save must not read the spill back to checksum it: that would make it all resident */
    checksum_hex(sp->U, nu, p->sum[0]), checksum_hex(sp->S, ns, p->sum[1]), checksum_hex(sp->Vt, nv, p->sum[2]);
    c->spill_len = off + nu + ns + nv;
    return 0;
}

void svd_cache_close(svd_cache_t *c) {
    if (!c) return;
    if (c->has_file) st_close(&c->f);
    drop_puts(c);
    free(c->put), free(c->dir), free(c->hash), free(c->file);
    free(c);
}

long svd_cache_loaded(const svd_cache_t *c) { return c ? c->loaded : 0; }
long svd_cache_computed(const svd_cache_t *c) { return c ? c->computed : 0; }
const char *svd_cache_file(const svd_cache_t *c) { return c ? c->file : NULL; }

void svd_cache_default_dir(char *buf, size_t cap) {
    const char *e;
    if ((e = getenv("SVDIFF_CACHE_DIR")) && e[0]) snprintf(buf, cap, "%s", e);
    else if ((e = getenv("XDG_CACHE_HOME")) && e[0]) snprintf(buf, cap, "%s/svdiff", e);
    else if ((e = getenv("HOME")) && e[0]) snprintf(buf, cap, "%s/.cache/svdiff", e);
    else snprintf(buf, cap, ".svdiff-cache");
}

static cache_put_t *find_put(svd_cache_t *c, shift_component_t component, const char *path) {
    for (int i = 0; i < c->n_put; i++)
        if (c->put[i].component == component && strcmp(c->put[i].path, path) == 0) return &c->put[i];
    return NULL;
}

static const shift_key_t FACTOR_KEY[3] = {SHIFT_KEY_CACHE_U, SHIFT_KEY_CACHE_S, SHIFT_KEY_CACHE_VT};

/* Factor k (0 U, 1 S, 2 Vt) of a shift's matrix in the file; NULL when absent. */
static const st_tensor_t *find_part(const svd_cache_t *c, const shift_name_t *n, int k) {
    char name[512];
    if (shift_key(name, sizeof name, n, FACTOR_KEY[k])) return NULL;
    return st_find(&c->f, name);
}

/* How messages name an entry: its factor keys less the factor (".U"), e.g. "te:text_model...q_proj". */
static void entry_label(char *buf, size_t cap, const shift_name_t *n) {
    if (shift_key(buf, cap, n, SHIFT_KEY_CACHE_U)) snprintf(buf, cap, "%s", n->path);
    else buf[strlen(buf) - 2] = '\0';
}

/* Is t an F32 [d0] or [d0, d1] tensor with finite values (>= 0 when nonneg)? */
static int part_ok(const st_tensor_t *t, int d0, int d1, int nonneg) {
    if (!t || t->dtype != ST_F32) return 0;
    if (d1 < 0 ? (t->ndim != 1 || t->shape[0] != d0) : (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1))
        return 0;
    const float *p = t->data;
    int ok = 1;
#pragma omp parallel for reduction(&& : ok) if (t->numel > (1 << 18))
    for (long i = 0; i < (long)t->numel; i++) {
        float v;
        memcpy(&v, p + i, sizeof v);
        ok = ok && isfinite(v) && (!nonneg || v >= 0.0f);
    }
    return ok;
}

/* Float data of a tensor: in place when aligned, else a malloc'ed copy (*tmp set). */
static const float *aligned_f32(const st_tensor_t *t, float **tmp) {
    *tmp = NULL;
    if (((uintptr_t)t->data & (sizeof(float) - 1)) == 0) return t->data;
    *tmp = sd_xmalloc(t->nbytes);
    memcpy(*tmp, t->data, t->nbytes);
    return *tmp;
}

/* Checksum of a tensor's bytes as stored: 16 hex digits. */
static void checksum_hex(const void *data, size_t nbytes, char out[17]) {
    snprintf(out, 17, "%016llx", (unsigned long long)bytes_hash64(data, nbytes, 0));
}

/* Metadata key of a tensor's checksum into buf. */
static void checksum_key(const char *tensor, char *buf, size_t cap) { snprintf(buf, cap, "sum:%s", tensor); }

/* Does t's stored checksum exist and match its bytes? */
static int checksum_ok(const svd_cache_t *c, const st_tensor_t *t) {
    char key[600], sum[17];
    checksum_key(t->name, key, sizeof key);
    const char *want = st_meta(&c->f, key);
    if (!want) return 0;
    checksum_hex(t->data, t->nbytes, sum);
    return strcmp(want, sum) == 0;
}

int svd_cache_lookup(svd_cache_t *c, const shift_name_t *n, weight_t *w, int keep_base) {
    if (!c || w->kind != WEIGHT_DENSE) return 0;
    const int rows = w->rows, cols = w->cols, rank = rows < cols ? rows : cols;
    const cache_put_t *p = find_put(c, n->component, n->path);
    if (p && p->spilled && p->rows == rows && p->cols == cols && p->rank == rank) {   /* computed this run */
        const size_t nu = (size_t)rows * rank, nv = (size_t)rank * cols;
        float *u = sd_xmalloc(sizeof(float) * nu), *s = sd_xmalloc(sizeof(float) * rank), *v = sd_xmalloc(sizeof(float) * nv);
        const int ok = pread(c->spill_fd, u, sizeof(float) * nu, (off_t)p->off) == (ssize_t)(sizeof(float) * nu) &&
                       pread(c->spill_fd, s, sizeof(float) * rank, (off_t)(p->off + sizeof(float) * nu)) ==
                           (ssize_t)(sizeof(float) * rank) &&
                       pread(c->spill_fd, v, sizeof(float) * nv, (off_t)(p->off + sizeof(float) * (nu + rank))) ==
                           (ssize_t)(sizeof(float) * nv);
        if (ok) {
            weight_make_spectral_from(w, u, s, v, rank, keep_base);
            if (c->store_bf16) spectral_store_bf16(w->sp);
        }
        free(u), free(s), free(v);
        if (ok) c->loaded++;
        return ok;
    }
    if (p && p->sp && p->sp->U && p->sp->rows == rows && p->sp->cols == cols && p->sp->rank == rank) {
        weight_make_spectral_from(w, p->sp->U, p->sp->S, p->sp->Vt, rank, keep_base);
        c->loaded++;
        return 1;
    }
    if (!c->has_file) return 0;
    const st_tensor_t *U = find_part(c, n, 0), *S = find_part(c, n, 1), *Vt = find_part(c, n, 2);
    if (!U && !S && !Vt) return 0;
    char label[512];
    entry_label(label, sizeof label, n);
    if (!part_ok(U, rows, rank, 0) || !part_ok(S, rank, -1, 1) || !part_ok(Vt, rank, cols, 0)) {
        fprintf(stderr, "warning: SVD cache %s: entry %s is damaged or does not fit a [%d, %d] matrix; recomputing it\n",
                c->file, label, rows, cols);
        return 0;
    }
    if (!checksum_ok(c, U) || !checksum_ok(c, S) || !checksum_ok(c, Vt)) {
        fprintf(stderr, "warning: SVD cache %s: entry %s fails its checksum (the file was changed or damaged); "
                "recomputing it\n", c->file, label);
        return 0;
    }
    float *tu, *ts, *tv;
    const float *u = aligned_f32(U, &tu), *s = aligned_f32(S, &ts), *v = aligned_f32(Vt, &tv);
    weight_make_spectral_from(w, u, s, v, rank, keep_base);
    if (c->store_bf16) spectral_store_bf16(w->sp);   /* one matrix in fp32 at a time, not the whole set */
    free(tu), free(ts), free(tv);
    /* copied: without this the 4 GB cache file of an SD 1.5 UNet stays resident next to
     * the 4 GB of factors (measured: 8.3 GB set-up peak) */
    st_release_pages(U, 0, U->nbytes), st_release_pages(S, 0, S->nbytes), st_release_pages(Vt, 0, Vt->nbytes);
    c->loaded++;
    return 1;
}

void svd_cache_put(svd_cache_t *c, const shift_name_t *n, const spectral_t *sp) {
    if (!c) return;
    cache_put_t *p = find_put(c, n->component, n->path);
    if (!p) {
        if (c->n_put == c->cap_put) {
            c->cap_put = c->cap_put ? 2 * c->cap_put : 64;
            c->put = realloc(c->put, sizeof *c->put * (size_t)c->cap_put);
            SD_CHECK(c->put, "out of memory");
        }
        p = &c->put[c->n_put++];
        p->component = n->component;
        p->path = xstrdup(n->path);
    }
    p->sp = sp, p->spilled = 0;
    if (c->store_bf16 && spill_put(c, p, sp) == 0) p->sp = NULL;   /* the model may store sp in bf16 now */
    c->computed++;
}

/* Is a cache tensor one of the factors of an entry computed since (so replaced by the new ones)? */
static int recomputed(svd_cache_t *c, const char *tensor) {
    const char *dot = strrchr(tensor, '.');
    int k = 0;
    while (k < 3 && dot && strcmp(dot, k == 0 ? ".U" : k == 1 ? ".S" : ".Vt")) k++;
    char path[512];
    shift_name_t n;
    if (!dot || k == 3 || shift_key_parse(&n, path, sizeof path, tensor, FACTOR_KEY[k])) return 0;
    return find_put(c, n.component, n.path) != NULL;
}

int svd_cache_save(svd_cache_t *c) {
    if (!c || !c->n_put) return SD_OK;
    st_writer_t *w = st_writer_new();
    int rc = SD_OK;
    char key[600], sum[17];
    /* what the file had, except entries recomputed since, with the checksums it had (not
     * recomputed: a damaged entry stays detectable); an entry without one is dropped */
    for (int i = 0; c->has_file && i < c->f.n_tensors && !rc; i++) {
        const st_tensor_t *t = &c->f.tensors[i];
        if (recomputed(c, t->name)) continue;
        checksum_key(t->name, key, sizeof key);
        const char *old_sum = st_meta(&c->f, key);
        if (!old_sum) continue;
        rc = st_writer_add_mapped(w, t->name, t->dtype, t->ndim, t->shape, t->data);   /* the old file's pages */
        if (!rc) rc = st_writer_meta(w, key, old_sum);
    }
    char **names = sd_xcalloc((size_t)c->n_put * 3, sizeof *names);
    const char *map = NULL;   /* the spill file, read where the writer copies from */
    if (c->spill_fd >= 0 && c->spill_len) {
        void *m = mmap(NULL, c->spill_len, PROT_READ, MAP_SHARED, c->spill_fd, 0);
        if (m == MAP_FAILED) rc = sd_error(SD_ERR_IO, "SVD cache spill file: mmap failed: %s", strerror(errno));
        else map = m;
    }
    for (int i = 0; i < c->n_put && !rc; i++) {
        const cache_put_t *p = &c->put[i];
        const int rows = p->spilled ? p->rows : p->sp->rows, cols = p->spilled ? p->cols : p->sp->cols;
        const int rank = p->spilled ? p->rank : p->sp->rank;
        const int64_t su[2] = {rows, rank}, ss[1] = {rank}, sv[2] = {rank, cols};
        const float *data[3];
        if (p->spilled) {
            const float *base = (const float *)(map + p->off);
            data[0] = base, data[1] = base + (size_t)rows * rank, data[2] = base + (size_t)rows * rank + rank;
        } else {
            data[0] = p->sp->U, data[1] = p->sp->S, data[2] = p->sp->Vt;
        }
        const int64_t *shape[3] = {su, ss, sv};
        const shift_name_t n = {c->put[i].component, SHIFT_SPECTRAL, c->put[i].path};
        for (int k = 0; k < 3 && !rc; k++) {
            const size_t cap = strlen(n.path) + 16;
            names[3 * i + k] = sd_xmalloc(cap);
            rc = shift_key(names[3 * i + k], cap, &n, FACTOR_KEY[k]);
            if (!rc && p->spilled) rc = st_writer_add_mapped(w, names[3 * i + k], ST_F32, k == 1 ? 1 : 2, shape[k], data[k]);
            else if (!rc) rc = st_writer_add(w, names[3 * i + k], ST_F32, k == 1 ? 1 : 2, shape[k], data[k]);
            const int64_t numel = shape[k][0] * (k == 1 ? 1 : shape[k][1]);
            checksum_key(names[3 * i + k], key, sizeof key);
            if (p->spilled) memcpy(sum, p->sum[k], sizeof sum);
            else checksum_hex(data[k], sizeof(float) * (size_t)numel, sum);
            if (!rc) rc = st_writer_meta(w, key, sum);
        }
    }
    if (!rc) rc = st_writer_meta(w, "model_hash", c->hash);
    if (!rc) rc = st_writer_meta(w, "format", CACHE_FORMAT);
    if (!rc) rc = st_writer_meta(w, "svdiff_version", SVDIFF_VERSION);
    outputs_forget_input(c->file);   /* read by this run, and replaced on purpose */
    if (!rc) rc = st_writer_save(w, c->file);
    st_writer_free(w);
    if (map) munmap((void *)map, c->spill_len);
    for (int i = 0; i < c->n_put * 3; i++) free(names[i]);
    free(names);
    if (rc) return sd_error_wrap(rc, "SVD cache");
    /* from now on serve everything from the new file: no references into models remain */
    drop_puts(c);
    open_file(c);
    return SD_OK;
}

/* w was just made spectral from its base (at base, base_bytes; kept when keep_base): the cache
 * gets the factors for its next save. */
static void adopt_computed(svd_cache_t *c, const shift_name_t *n, weight_t *w, const void *base, size_t base_bytes,
                           int keep_base) {
    if (!keep_base && base) {
        /* The base matrix was read once for the SVD and is not needed any more (training):
         * ask the kernel to reclaim its pages (measured: 1.6 GB of an SD 1.5 UNet's mapped
         * file otherwise stays in RSS). MADV_PAGEOUT, not DONTNEED: the data may be the
         * caller's own memory, whose contents PAGEOUT keeps and DONTNEED would zero. */
        const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), p0 = (uintptr_t)base;
        const uintptr_t a = (p0 + page - 1) & ~(page - 1), b = (p0 + base_bytes) & ~(page - 1);
#ifdef MADV_PAGEOUT
        if (b > a) madvise((void *)a, b - a, MADV_PAGEOUT);
#else
        (void)a, (void)b;
#endif
    }
    svd_cache_put(c, n, w->sp);
}

int svd_cache_make_spectral(svd_cache_t *c, const shift_name_t *n, weight_t *w, int keep_base) {
    if (svd_cache_lookup(c, n, w, keep_base)) return SD_OK;
    const void *base = w->data;
    const size_t base_bytes = (size_t)w->rows * w->cols * st_dtype_size(w->dtype);
    int rc = weight_make_spectral(w, keep_base);
    if (rc) {
        char label[512];
        entry_label(label, sizeof label, n);
        return sd_error_wrap(rc, "SVD of %s failed", label);
    }
    adopt_computed(c, n, w, base, base_bytes, keep_base);
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------
 * whole models */

typedef struct {
    const char *what;
    progress_t bar;
    long total, done;
    long loaded0, computed0;
    double t0;
} svd_run_t;

static void run_start(svd_run_t *r, svd_cache_t *c, const char *what, long total) {
    memset(r, 0, sizeof *r);
    r->what = what, r->total = total;
    r->loaded0 = svd_cache_loaded(c), r->computed0 = svd_cache_computed(c);
    r->t0 = sd_now_s();
    progress_start(&r->bar, what, total, "layer");
}

static int run_finish(svd_run_t *r, svd_cache_t *c, int rc) {
    if (rc) return rc;
    progress_finish(&r->bar);
    const long loaded = svd_cache_loaded(c) - r->loaded0, computed = svd_cache_computed(c) - r->computed0;
    if (c) {
        fprintf(stderr, "%s: %ld matrices, %ld from the SVD cache, %ld computed, %.2f s (%s)\n", r->what, r->total,
                loaded, computed, sd_now_s() - r->t0, svd_cache_file(c));
        if (computed && !c->save_failed) {
            /* the cache only saves time: a cache that cannot be written (read-only, disk full,
             * a folder in the way) must not stop the run whose factors are all computed */
            const double t = sd_now_s();
            if (svd_cache_save(c) == SD_OK) {
                fprintf(stderr, "%s: SVD cache saved in %.2f s\n", r->what, sd_now_s() - t);
            } else {
                fprintf(stderr, "warning: %s; going on without saving the SVD cache (its factors will be "
                        "recomputed next time)\n", sd_last_error());
                sd_clear_error();
                c->save_failed = 1;   /* said once: the text encoder's run would fail the same way */
            }
        }
    } else {
        fprintf(stderr, "%s: %ld matrices factored in %.2f s\n", r->what, r->total, sd_now_s() - r->t0);
    }
    return rc;
}

/* Does a pending put of the cache still reference sp (so sp must stay fp32 until the save)? */
static int put_references(const svd_cache_t *c, const spectral_t *sp) {
    for (int i = 0; c && i < c->n_put; i++)
        if (c->put[i].sp == sp) return 1;
    return 0;
}

/* Every dense UNet layer made spectral through the cache; bf16: each stored in bf16 as soon as no
 * pending put references its fp32 factors (a computed one is in the spill file by then), so that
 * the fp32 factors of the whole UNet never exist together. */
/* Layers whose SVDs run together (weight_make_spectral_many, in parallel): a few per thread keeps
 * the threads busy, and few enough that, in bf16, not many layers' fp32 factors exist at once. */
#define SVD_GROUP 8

/* Every dense UNet layer made spectral through the cache: the layers the cache lacks are factored
 * in groups, in parallel. bf16: each stored in bf16 as soon as no pending put references its fp32
 * factors (a computed one is in the spill file by then), so that the fp32 factors of the whole
 * UNet never exist together. */
static int unet_spectral_run(unet_t *m, svd_cache_t *cache, int keep_base, int bf16) {
    long total = 0;
    for (int i = 0; i < m->n_layers; i++) total += m->layers[i]->w.kind == WEIGHT_DENSE;
    if (!total) return SD_OK;
    svd_run_t r;
    run_start(&r, cache, "unet svd", total);
    int rc = SD_OK;
    layer_t *group[SVD_GROUP];
    weight_t *gw[SVD_GROUP];
    const void *base[SVD_GROUP];
    int i = 0;
    while (i < m->n_layers && !rc) {
        int ng = 0;   /* the next layers the cache lacks, up to a group; those it has are taken as met */
        for (; i < m->n_layers && ng < SVD_GROUP; i++) {
            layer_t *l = m->layers[i];
            if (l->w.kind != WEIGHT_DENSE) continue;
            const shift_name_t n = {SHIFT_UNET, SHIFT_SPECTRAL, l->name};
            if (svd_cache_lookup(cache, &n, &l->w, keep_base)) {
                if (bf16 && !put_references(cache, l->w.sp)) spectral_store_bf16(l->w.sp);
                progress_update(&r.bar, ++r.done, NULL);
                continue;
            }
            group[ng] = l, gw[ng] = &l->w, base[ng] = l->w.data, ng++;
        }
        if (!ng) break;
        rc = weight_make_spectral_many(gw, ng, keep_base);
        for (int j = 0; j < ng; j++) {
            layer_t *l = group[j];
            if (l->w.kind != WEIGHT_SPECTRAL) continue;   /* its SVD failed: rc says which */
            const shift_name_t n = {SHIFT_UNET, SHIFT_SPECTRAL, l->name};
            adopt_computed(cache, &n, &l->w, base[j], (size_t)l->w.rows * l->w.cols * st_dtype_size(l->w.dtype),
                           keep_base);
            if (bf16 && !put_references(cache, l->w.sp)) spectral_store_bf16(l->w.sp);
            if (!rc) progress_update(&r.bar, ++r.done, NULL);
        }
        for (int j = 0; j < ng && rc; j++)   /* the first that stayed dense is the failure rc holds */
            if (group[j]->w.kind == WEIGHT_DENSE) {
                rc = sd_error_wrap(rc, "SVD of %s failed", group[j]->name);
                break;
            }
    }
    if (rc) rc = sd_error_wrap(rc, "unet");
    return run_finish(&r, cache, rc);
}

int unet_make_spectral_cached(unet_t *m, svd_cache_t *cache, int keep_base) {
    return unet_spectral_run(m, cache, keep_base, 0);
}

int unet_make_spectral_stored(unet_t *m, svd_cache_t *cache, int bf16) {
    svd_cache_set_bf16(cache, bf16);
    int rc = unet_spectral_run(m, cache, 0, bf16);
    svd_cache_set_bf16(cache, 0);
    for (int i = 0; !rc && bf16 && i < m->n_layers; i++)   /* any left fp32 (a spill that failed), now that the cache has them */
        if (m->layers[i]->w.kind == WEIGHT_SPECTRAL) spectral_store_bf16(m->layers[i]->w.sp);
    return rc;
}

typedef struct {
    svd_cache_t *cache;
    shift_component_t component;
    unsigned which;
    int keep_base, count_only, rc;
    svd_run_t *run;
} clip_svd_t;

static int clip_svd_visit(void *ctx, const clip_module_t *mod) {
    clip_svd_t *s = ctx;
    if (!mod->w || mod->w->kind != WEIGHT_DENSE) return 0;
    const unsigned bit = mod->kind == CLIP_MODULE_EMBEDDING ? CLIP_SPECTRAL_EMBEDDINGS : CLIP_SPECTRAL_LINEARS;
    if (!(s->which & bit)) return 0;
    if (s->count_only) {
        s->run->total++;
        return 0;
    }
    const shift_name_t n = {s->component, SHIFT_SPECTRAL, mod->path};
    s->rc = svd_cache_make_spectral(s->cache, &n, mod->w, s->keep_base);
    if (s->rc) s->rc = sd_error_wrap(s->rc, s->component == SHIFT_TE2 ? "text_encoder_2" : "text encoder");
    progress_update(&s->run->bar, ++s->run->done, NULL);
    return s->rc;
}

int clip_make_spectral_cached(clip_t *m, svd_cache_t *cache, unsigned which, int keep_base) {
    return clip_make_spectral_cached_as(m, SHIFT_TE, cache, which, keep_base);
}

int clip_make_spectral_cached_as(clip_t *m, shift_component_t component, svd_cache_t *cache, unsigned which,
                                 int keep_base) {
    svd_run_t r = {0};
    clip_svd_t s = {.cache = cache, .component = component, .which = which, .keep_base = keep_base, .count_only = 1, .run = &r};
    clip_visit_modules(m, NULL, clip_svd_visit, &s);
    const long total = r.total;
    if (!total) return SD_OK;
    run_start(&r, cache, component == SHIFT_TE2 ? "text_encoder_2 svd" : "text encoder svd", total);
    s.count_only = 0;
    clip_visit_modules(m, NULL, clip_svd_visit, &s);
    return run_finish(&r, cache, s.rc);
}
