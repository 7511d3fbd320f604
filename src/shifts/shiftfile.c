/* Shift sets (shifts.h): the in-memory set, safetensors load / save (ours and svdiff-pytorch's
 * files), collecting shifts from a trained UNet / text encoder, and applying sets to a model.
 * File keys come from weights/shift_name.h (SHIFT_KEY_FILE). */
#include "shifts/shifts.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/error.h"
#include "base/str.h"
#include "base/progress.h"
#include "ops/ops.h"

/* ---------------------------------------------------------------------------------------
 * the set */

void shiftset_init(shift_set_t *s) { memset(s, 0, sizeof *s); }

void shiftset_free(shift_set_t *s) {
    for (int i = 0; i < s->n; i++) free(s->entries[i].path), free(s->entries[i].values);
    for (int i = 0; i < s->n_meta; i++) free(s->meta_keys[i]), free(s->meta_values[i]);
    free(s->entries), free(s->meta_keys), free(s->meta_values);
    memset(s, 0, sizeof *s);
}

static char *xstrdup(const char *str) {
    size_t n = strlen(str) + 1;
    char *d = sd_xmalloc(n);
    memcpy(d, str, n);
    return d;
}

/* Index of `path` in the sorted entries, or -(insertion point) - 1. */
static int find_index(const shift_set_t *s, const char *path) {
    int lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2, c = strcmp(s->entries[mid].path, path);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -lo - 1;
}

void shiftset_put(shift_set_t *s, const char *path, const float *values, int n) {
    SD_CHECK(n > 0, "shift %s: %d values", path, n);
    float *v = sd_xmalloc(sizeof(float) * n);
    memcpy(v, values, sizeof(float) * n);
    int i = find_index(s, path);
    if (i >= 0) {
        free(s->entries[i].values);
        s->entries[i].values = v, s->entries[i].n = n;
        return;
    }
    i = -i - 1;
    shift_entry_t *e = realloc(s->entries, sizeof *e * (size_t)(s->n + 1));
    SD_CHECK(e, "out of memory");
    s->entries = e;
    memmove(e + i + 1, e + i, sizeof *e * (size_t)(s->n - i));
    e[i] = (shift_entry_t){.path = xstrdup(path), .n = n, .values = v};
    s->n++;
}

const shift_entry_t *shiftset_find(const shift_set_t *s, const char *path) {
    const int i = find_index(s, path);
    return i >= 0 ? &s->entries[i] : NULL;
}

void shiftset_set_meta(shift_set_t *s, const char *key, const char *value) {
    for (int i = 0; i < s->n_meta; i++)
        if (strcmp(s->meta_keys[i], key) == 0) {
            free(s->meta_values[i]);
            s->meta_values[i] = xstrdup(value);
            return;
        }
    s->meta_keys = realloc(s->meta_keys, sizeof(char *) * (size_t)(s->n_meta + 1));
    s->meta_values = realloc(s->meta_values, sizeof(char *) * (size_t)(s->n_meta + 1));
    SD_CHECK(s->meta_keys && s->meta_values, "out of memory");
    s->meta_keys[s->n_meta] = xstrdup(key);
    s->meta_values[s->n_meta] = xstrdup(value);
    s->n_meta++;
}

const char *shiftset_meta(const shift_set_t *s, const char *key) {
    for (int i = 0; i < s->n_meta; i++)
        if (strcmp(s->meta_keys[i], key) == 0) return s->meta_values[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * files */

/* The file key of an entry ("<path>.delta") into buf, for messages and the writer. */
static const char *file_key(char *buf, size_t cap, const char *path) {
    const shift_name_t n = shift_name_of_entry(path);
    if (shift_key(buf, cap, &n, SHIFT_KEY_FILE)) snprintf(buf, cap, "%s", path);
    return buf;
}

int shiftset_load(shift_set_t *s, const char *file) {
    shiftset_init(s);
    st_file_t f;
    int rc = st_open(&f, file);
    if (rc) return rc;
    for (int i = 0; i < f.n_tensors && !rc; i++) {
        const st_tensor_t *t = &f.tensors[i];
        const size_t len = strlen(t->name);
        char *path = sd_xmalloc(len + 1);
        shift_name_t name;
        if (shift_key_parse(&name, path, len + 1, t->name, SHIFT_KEY_FILE)) {
            free(path);
            rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' is not a shift (a shift file holds only '<module path>.delta' tensors)",
                          file, t->name);
            break;
        }
        if (t->ndim != 1 || t->numel < 1) {
            rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' has %d dimensions and %lld values; a shift is 1-D and not empty",
                          file, t->name, t->ndim, (long long)t->numel);
            free(path);
            break;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
            rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' has dtype %s (F32, F16 or BF16 expected)", file, t->name,
                          st_dtype_name(t->dtype));
            free(path);
            break;
        }
        if (t->numel > (1 << 24)) {
            rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' has %lld values, too many for a shift", file, t->name,
                          (long long)t->numel);
            free(path);
            break;
        }
        const int n = (int)t->numel;
        float *v = sd_xmalloc(sizeof(float) * n);
        rc = st_read_f32(v, t);
        for (int j = 0; !rc && j < n; j++)
            if (!isfinite(v[j]))
                rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value at [%d]", file, t->name, j);
        /* the set's entry: the key less ".delta" (a text_encoder_2 entry keeps its prefix) */
        char *entry = sd_xmalloc(len + 1);
        if (!rc) rc = shift_key(entry, len + 1, &name, SHIFT_KEY_SET);
        if (!rc) shiftset_put(s, entry, v, n);
        free(entry);
        free(v);
        free(path);
    }
    for (int i = 0; i < f.n_meta && !rc; i++) shiftset_set_meta(s, f.meta_keys[i], f.meta_values[i]);
    st_close(&f);
    if (rc) shiftset_free(s);
    return rc;
}

/* Refuses values a reader would refuse (shiftset_load): NaN, Inf, and for F16 a finite value
 * past its range, which the conversion would turn into Inf. Names the entry. */
static int check_savable(const shift_set_t *s, const char *file, st_dtype_t dtype) {
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        const size_t k = first_nonfinite(e->values, (size_t)e->n);
        if (k < (size_t)e->n)
            return sd_error(SD_ERR_NUMERIC, "%s: not written: shift '%s' is not finite at [%zu] (%g)", file, e->path, k,
                            (double)e->values[k]);
        for (int j = 0; dtype == ST_F16 && j < e->n; j++)
            if (fabsf(e->values[j]) > 65504.0f)
                return sd_error(SD_ERR_NUMERIC, "%s: not written: shift '%s' = %g at [%d] is out of the F16 range", file,
                                e->path, (double)e->values[j], j);
    }
    return SD_OK;
}

/* A writer over a set: keys "<path>.delta" (SHIFT_KEY_FILE); F16 copies and names live in the struct until the
 * save (the writer references its data). A pair id copied from an input is dropped: only
 * shiftset_save_pair sets one, for the two files it writes. */
typedef struct {
    st_writer_t *w;
    uint16_t **half;
    char **names;
    int n;
} set_writer_t;

static int set_writer_build(set_writer_t *sw, const shift_set_t *s, const char *file, st_dtype_t dtype) {
    memset(sw, 0, sizeof *sw);
    if (dtype != ST_F32 && dtype != ST_F16)
        return sd_error(SD_ERR_ARG, "%s: shift files are saved as F32 or F16, not %s", file, st_dtype_name(dtype));
    if (check_savable(s, file, dtype)) return SD_ERR_NUMERIC;
    sw->w = st_writer_new();
    sw->n = s->n;
    sw->half = sd_xcalloc((size_t)s->n + 1, sizeof *sw->half);
    sw->names = sd_xcalloc((size_t)s->n + 1, sizeof *sw->names);
    int rc = SD_OK;
    for (int i = 0; i < s->n && !rc; i++) {
        const shift_entry_t *e = &s->entries[i];
        const size_t cap = strlen(e->path) + 16;
        sw->names[i] = sd_xmalloc(cap);
        const shift_name_t n = shift_name_of_entry(e->path);
        if ((rc = shift_key(sw->names[i], cap, &n, SHIFT_KEY_FILE))) break;
        const int64_t shape[1] = {e->n};
        const void *data = e->values;
        if (dtype == ST_F16) {
            sw->half[i] = sd_xmalloc(sizeof(uint16_t) * e->n);
            for (int j = 0; j < e->n; j++) sw->half[i][j] = st_f32_to_f16(e->values[j]);
            data = sw->half[i];
        }
        rc = st_writer_add(sw->w, sw->names[i], dtype, 1, shape, data);
    }
    for (int i = 0; i < s->n_meta && !rc; i++)
        if (strcmp(s->meta_keys[i], ST_PAIR_ID_KEY)) rc = st_writer_meta(sw->w, s->meta_keys[i], s->meta_values[i]);
    return rc;
}

static void set_writer_free(set_writer_t *sw) {
    st_writer_free(sw->w);
    for (int i = 0; i < sw->n; i++) free(sw->half[i]), free(sw->names[i]);
    free(sw->half), free(sw->names);
    memset(sw, 0, sizeof *sw);
}

int shiftset_save(const shift_set_t *s, const char *file, st_dtype_t dtype) {
    set_writer_t sw;
    int rc = set_writer_build(&sw, s, file, dtype);
    if (!rc) rc = st_writer_save(sw.w, file);
    set_writer_free(&sw);
    return rc;
}

int shiftset_save_group(const shift_set_t *const *sets, const char *const *files, const st_dtype_t *dtypes, int n) {
    SD_CHECK(n >= 1 && n <= SHIFT_N_COMPONENTS, "a group of %d shift files", n);
    set_writer_t sw[SHIFT_N_COMPONENTS];
    st_writer_t *w[SHIFT_N_COMPONENTS];
    int rc = SD_OK;
    for (int i = 0; i < n; i++) {   /* every writer is built (and freed), the first error kept */
        const int rci = set_writer_build(&sw[i], sets[i], files[i], dtypes[i]);
        if (!rc) rc = rci;
        w[i] = sw[i].w;
    }
    if (!rc) rc = n == 1 ? st_writer_save(w[0], files[0]) : st_writer_save_group(w, files, n);
    for (int i = 0; i < n; i++) set_writer_free(&sw[i]);
    return rc;
}

int shiftset_save_pair(const shift_set_t *unet, const char *unet_file, st_dtype_t unet_dtype, const shift_set_t *te,
                       const char *te_file, st_dtype_t te_dtype) {
    const shift_set_t *const sets[2] = {unet, te};
    const char *const files[2] = {unet_file, te_file};
    const st_dtype_t dt[2] = {unet_dtype, te_dtype};
    return shiftset_save_group(sets, files, dt, 2);
}

/* ---------------------------------------------------------------------------------------
 * collecting a model's shifts */

/* The visits name a shift by (component, path, kind); the set keys it by path. */
static void put_visit(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    (void)grad;
    shiftset_put(ctx, name->path, shift, n);
}

void shiftset_from_unet(shift_set_t *s, unet_t *m) {
    unet_visit_shifts(m, NULL, put_visit, s);
    for (int i = 0; i < m->n_norms; i++)
        if (m->norms[i]->shift) {
            shiftset_set_meta(s, "norm_shift", m->norms[i]->mode == NORMSHIFT_SCALAR ? "scalar" : "element");
            break;
        }
}

/* A text encoder's visit names its shifts SHIFT_TE; the set entry follows the component asked for. */
typedef struct {
    shift_set_t *s;
    shift_component_t component;
} put_as_t;

static void put_visit_as(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    (void)grad;
    put_as_t *p = ctx;
    const shift_name_t as = {p->component, name->kind, name->path};
    char key[512];
    SD_CHECK(shift_key(key, sizeof key, &as, SHIFT_KEY_SET) == SD_OK, "%s", sd_last_error());
    shiftset_put(p->s, key, shift, n);
}

void shiftset_from_clip(shift_set_t *s, clip_t *m) { shiftset_from_clip_as(s, m, SHIFT_TE); }

void shiftset_from_clip_as(shift_set_t *s, clip_t *m, shift_component_t component) {
    int has_norm_shift = m->final_ln.shift != NULL;
    for (int l = 0; l < m->cfg.num_layers; l++) has_norm_shift |= m->layers[l].ln1.shift || m->layers[l].ln2.shift;
    put_as_t pa = {s, component};
    clip_visit_shifts(m, NULL, put_visit_as, &pa);
    if (has_norm_shift) shiftset_set_meta(s, "norm_shift", m->norm_shift_mode == NORMSHIFT_SCALAR ? "scalar" : "element");
}

/* ---------------------------------------------------------------------------------------
 * applying */

static int rank_of(const weight_t *w) { return w->rows < w->cols ? w->rows : w->cols; }

static int bad_length(const shift_entry_t *e, const char *what, const char *want) {
    char key[512];
    return sd_error(SD_ERR_FORMAT, "shift '%s' has %d values, but %s '%s' needs %s", file_key(key, sizeof key, e->path),
                    e->n, what, e->path, want);
}

static int unknown_module(const shift_entry_t *e, const char *model) {
    char key[512];
    return sd_error(SD_ERR_FORMAT, "shift '%s' names no shiftable module of this %s", file_key(key, sizeof key, e->path),
                    model);
}

/* Norm entry length -> mode: [C] per element, [1] scalar; `have` is the mode of a shift the
 * module already carries (-1: none), which breaks the tie when C == 1. -1 if neither fits. */
static int norm_mode_for(int n, int C, int have) {
    if (n == C && n == 1) return have >= 0 ? have : NORMSHIFT_ELEMENT;
    if (n == C) return NORMSHIFT_ELEMENT;
    if (n == 1) return NORMSHIFT_SCALAR;
    return -1;
}

static const char *mode_name(int mode) { return mode == NORMSHIFT_SCALAR ? "scalar [1]" : "per-element [C]"; }

static void add_scaled(float *dst, const float *src, float scale, int n) {
    for (int i = 0; i < n; i++) dst[i] += scale * src[i];
}

/* Factoring a model's matrices takes minutes at SD 1.5 scale: show it. */
typedef struct {
    progress_t bar;
    long todo, done;
} factor_progress_t;

static void factor_progress_start(factor_progress_t *fp, const char *label, long todo) {
    fp->todo = todo, fp->done = 0;
    if (todo) progress_start(&fp->bar, label, todo, "layer");
}

static void factor_progress_finish(factor_progress_t *fp) {
    if (fp->todo) progress_finish(&fp->bar);
}

/* Makes `w` spectral if it is not (keeping the base: exact form) and adds the shift. */
static int apply_matrix(weight_t *w, shift_component_t component, const char *path, const shift_entry_t *e,
                        float scale, svd_cache_t *cache, factor_progress_t *fp) {
    if (w->kind == WEIGHT_DENSE) {
        const shift_name_t n = {component, SHIFT_SPECTRAL, path};
        int rc = svd_cache_make_spectral(cache, &n, w, 1);
        if (rc) return rc;
        progress_update(&fp->bar, ++fp->done, NULL);
    }
    add_scaled(w->sp->delta, e->values, scale, e->n);
    free(w->baked);   /* stale now; unet_bake / clip_bake_spectral rebuild it */
    w->baked = NULL;
    return SD_OK;
}

int shiftset_apply_unet(unet_t *m, const shift_set_t *s, float scale, svd_cache_t *cache) {
    /* check every entry first, so a bad file leaves the model as it was */
    char want[64];
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        const layer_t *l = unet_find_layer(m, e->path);
        if (l) {
            if (e->n != rank_of(&l->w)) {
                snprintf(want, sizeof want, "%d (the rank of its [%d, %d] matrix)", rank_of(&l->w), l->w.rows, l->w.cols);
                return bad_length(e, "layer", want);
            }
            continue;
        }
        const norm_layer_t *nm = unet_find_norm(m, e->path);
        if (!nm) return unknown_module(e, "UNet");
        const int have = nm->shift ? (int)nm->mode : -1, mode = norm_mode_for(e->n, nm->C, have);
        if (mode < 0) {
            snprintf(want, sizeof want, "%d (per element) or 1 (scalar)", nm->C);
            return bad_length(e, "norm", want);
        }
        char key[512];
        if (have >= 0 && have != mode)
            return sd_error(SD_ERR_FORMAT, "shift '%s' is a %s norm shift, but the model already has a %s one there",
                            file_key(key, sizeof key, e->path), mode_name(mode), mode_name(have));
    }
    long todo = 0;
    for (int i = 0; i < s->n; i++) {
        const layer_t *l = unet_find_layer(m, s->entries[i].path);
        todo += l && l->w.kind == WEIGHT_DENSE;
    }
    factor_progress_t fp;
    factor_progress_start(&fp, "unet svd", todo);
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        layer_t *l = unet_find_layer(m, e->path);
        if (l) {
            int rc = apply_matrix(&l->w, SHIFT_UNET, e->path, e, scale, cache, &fp);
            if (rc) return rc;
            continue;
        }
        norm_layer_t *nm = unet_find_norm(m, e->path);
        if (!nm->shift) {
            nm->mode = (normshift_mode_t)norm_mode_for(e->n, nm->C, -1);
            nm->shift = sd_xcalloc((size_t)e->n, sizeof(float));
        }
        add_scaled(nm->shift, e->values, scale, e->n);
    }
    factor_progress_finish(&fp);
    return SD_OK;
}

int shiftset_apply_clip(clip_t *m, const shift_set_t *s, float scale, svd_cache_t *cache) {
    return shiftset_apply_clip_as(m, SHIFT_TE, s, scale, cache);
}

int shiftset_apply_clip_as(clip_t *m, shift_component_t component, const shift_set_t *s, float scale,
                           svd_cache_t *cache) {
    const int C = m->cfg.hidden_size;
    const char *what = component == SHIFT_TE2 ? "text_encoder_2" : "text encoder";
    /* the text encoder has one norm-shift mode for all its LayerNorms */
    int have = m->final_ln.shift ? (int)m->norm_shift_mode : -1;
    for (int l = 0; l < m->cfg.num_layers; l++)
        if (m->layers[l].ln1.shift || m->layers[l].ln2.shift) have = (int)m->norm_shift_mode;
    int mode = have;
    char want[64];
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        clip_module_t f;
        const shift_name_t nm = shift_name_of_entry(e->path);
        if (nm.component != component || !clip_find_module(m, nm.path, &f)) return unknown_module(e, what);
        if (f.w) {
            if (e->n != rank_of(f.w)) {
                snprintf(want, sizeof want, "%d (the rank of its [%d, %d] matrix)", rank_of(f.w), f.w->rows, f.w->cols);
                return bad_length(e, "layer", want);
            }
            continue;
        }
        const int mi = norm_mode_for(e->n, C, mode);
        if (mi < 0) {
            snprintf(want, sizeof want, "%d (per element) or 1 (scalar)", C);
            return bad_length(e, "norm", want);
        }
        char key[512];
        if (mode >= 0 && mi != mode)
            return sd_error(SD_ERR_FORMAT, "shift '%s' is a %s norm shift, but the %s's norm shifts are %s",
                            file_key(key, sizeof key, e->path), mode_name(mi), what, mode_name(mode));
        mode = mi;
    }
    long todo = 0;
    for (int i = 0; i < s->n; i++) {
        clip_module_t f;
        clip_find_module(m, shift_name_of_entry(s->entries[i].path).path, &f);
        todo += f.w && f.w->kind == WEIGHT_DENSE;
    }
    factor_progress_t fp;
    factor_progress_start(&fp, component == SHIFT_TE2 ? "text_encoder_2 svd" : "text encoder svd", todo);
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        clip_module_t f;
        const shift_name_t nm = shift_name_of_entry(e->path);
        clip_find_module(m, nm.path, &f);
        if (f.w) {
            int rc = apply_matrix(f.w, component, nm.path, e, scale, cache, &fp);
            if (rc) return rc;
            continue;
        }
        if (!f.ln->shift) {
            m->norm_shift_mode = (normshift_mode_t)mode;
            f.ln->shift = sd_xcalloc((size_t)e->n, sizeof(float));
        }
        add_scaled(f.ln->shift, e->values, scale, e->n);
    }
    factor_progress_finish(&fp);
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------
 * command-line arguments */

#define SHIFT_MAX_SCALE 1e4

int shift_spec_parse(const char *arg, char *path, size_t cap, float *scale) {
    const size_t len = strlen(arg);
    if (!len) return sd_error(SD_ERR_ARG, "--shifts needs a file or folder");
    *scale = 1.0f;
    size_t plen = len;
    const char *colon = strrchr(arg, ':');
    if (colon && colon[1]) {
        char *end;
        const float v = strtof(colon + 1, &end);
        if (end != colon + 1 && *end == '\0') {
            /* a path that really ends in ":<number>" still wins over a scale */
            struct stat st;
            char prefix[4096];
            snprintf(prefix, sizeof prefix, "%.*s", (int)(colon - arg), arg);
            if (!(stat(arg, &st) == 0 && stat(prefix, &st) != 0)) {
                /* "nan", "inf", "1e39" (overflows) and absurd strengths are refused, not taken as part of the path */
                if (!(fabsf(v) <= SHIFT_MAX_SCALE))
                    return sd_error(SD_ERR_ARG, "the scale '%s' is not a finite number in [-%g, %g]", colon + 1,
                                    SHIFT_MAX_SCALE, SHIFT_MAX_SCALE);
                plen = (size_t)(colon - arg);
                *scale = v;
            }
        }
    }
    if (!plen) return sd_error(SD_ERR_ARG, "--shifts '%s': no file or folder before the scale", arg);
    if (plen >= cap) return sd_error(SD_ERR_ARG, "--shifts '%s': path too long", arg);
    memcpy(path, arg, plen);
    path[plen] = '\0';
    return SD_OK;
}

static const char *const PART_FILE[SHIFT_N_COMPONENTS] = {
    "spectral_shifts.safetensors", "spectral_shifts_te.safetensors", "spectral_shifts_te2.safetensors"};

const char *shift_part_file(shift_component_t c) { return PART_FILE[c]; }

int shift_files_resolve(const char *file_or_dir, char files[][SHIFT_PATH_CAP]) {
    struct stat st;
    for (int c = 0; c < SHIFT_N_COMPONENTS; c++) files[c][0] = '\0';
    if (stat(file_or_dir, &st) != 0)
        return sd_error(SD_ERR_IO, "shift file or folder %s: %s", file_or_dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if ((size_t)snprintf(files[0], SHIFT_PATH_CAP, "%s", file_or_dir) >= SHIFT_PATH_CAP)
            return sd_error(SD_ERR_ARG, "%s: path too long", file_or_dir);
        return SD_OK;
    }
    int any = 0;
    for (int c = 0; c < SHIFT_N_COMPONENTS; c++) {
        char buf[SHIFT_PATH_CAP + 64];
        snprintf(buf, sizeof buf, "%s/%s", file_or_dir, PART_FILE[c]);
        if (stat(buf, &st) != 0) continue;
        if ((size_t)snprintf(files[c], SHIFT_PATH_CAP, "%s", buf) >= SHIFT_PATH_CAP)
            return sd_error(SD_ERR_ARG, "%s: path too long", buf);
        any = 1;
    }
    if (!any)
        return sd_error(SD_ERR_IO, "%s: folder holds none of spectral_shifts.safetensors, spectral_shifts_te.safetensors, "
                        "spectral_shifts_te2.safetensors", file_or_dir);
    return SD_OK;
}

int shift_files_check_group(char files[][SHIFT_PATH_CAP], int force) {
    /* each file present against the first one present: one result written together? */
    int first = -1, rc = SD_OK;
    for (int c = 0; c < SHIFT_N_COMPONENTS && !rc; c++) {
        if (!files[c][0]) continue;
        if (first < 0) first = c;
        else rc = st_pair_check(files[first], files[c], force);
    }
    return rc;
}

int shiftset_apply_models(unet_t *unet, clip_t *te, clip_t *te2, const shift_set_t *s, float scale, svd_cache_t *cache) {
    shift_set_t parts[SHIFT_N_COMPONENTS];
    for (int c = 0; c < SHIFT_N_COMPONENTS; c++) shiftset_init(&parts[c]);
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        shiftset_put(&parts[shift_component_of_path(e->path)], e->path, e->values, e->n);
    }
    int rc = SD_OK;
    if (parts[SHIFT_TE2].n && !te2) {
        char key[512];
        rc = sd_error(SD_ERR_FORMAT, "shift '%s' is for text_encoder_2, which this model does not have (an SDXL shift file?)",
                      file_key(key, sizeof key, parts[SHIFT_TE2].entries[0].path));
    }
    if (!rc) rc = shiftset_apply_unet(unet, &parts[SHIFT_UNET], scale, cache);
    if (!rc && parts[SHIFT_TE].n) rc = shiftset_apply_clip_as(te, SHIFT_TE, &parts[SHIFT_TE], scale, cache);
    if (!rc && parts[SHIFT_TE2].n) rc = shiftset_apply_clip_as(te2, SHIFT_TE2, &parts[SHIFT_TE2], scale, cache);
    for (int c = 0; c < SHIFT_N_COMPONENTS; c++) shiftset_free(&parts[c]);
    return rc;
}
