/* svdiff_shifts_describe / _convert / _to_lora: what `svdiff shifts info`, `convert` and `to-lora`
 * compute, over a set in memory (api_shifts.c). Messages name the CLI's flags where the CLI passes
 * them straight through (--model, --svd-cache, --force), as the CLI prints them. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/api_internal.h"
#include "io/model.h"
#include "pipeline/lora_export.h"
#include "shifts/toolbox.h"

/* ---- describe ---- */

typedef struct {
    const char *path;
    int idx;
    double value, delta, sigma;
} top_t;

static int top_cmp(const void *a, const void *b) {
    const double x = ((const top_t *)a)->value, y = ((const top_t *)b)->value;
    return x < y ? 1 : x > y ? -1 : 0;
}

static long file_size(const char *f) {
    struct stat st;
    return stat(f, &st) == 0 ? (long)st.st_size : -1;
}

/* singular values: an SVD cache file given directly, or the one the model's hash names */
static int open_sigma(st_file_t *f, const char *cache, const char *model) {
    char file[4096 + 64];
    struct stat st;
    if (cache && stat(cache, &st) == 0 && !S_ISDIR(st.st_mode)) return st_open(f, cache);
    if (!model)
        return sd_error(SD_ERR_ARG, "--svd-cache %s is %s: give an SVD cache file, or --model M too (its hash names the file)",
                        cache, stat(cache, &st) == 0 ? "a folder" : "not there");
    model_t m;
    int rc = model_open(&m, model, NULL);
    if (rc) return rc;
    char hash[17];
    rc = model_weights_hash(&m, hash);
    model_close(&m);
    if (rc) return rc;
    char dir[4096];
    if (cache) snprintf(dir, sizeof dir, "%s", cache);
    else svd_cache_default_dir(dir, sizeof dir);
    snprintf(file, sizeof file, "%s/%s.svd.safetensors", dir, hash);
    if (stat(file, &st) != 0)
        return sd_error(SD_ERR_IO, "%s: no SVD cache for model %s (hash %s); run generate or train with it once", file,
                        model, hash);
    return st_open(f, file);
}

/* one part's object of the description */
static void describe_part(cJSON *o, const shift_set_t *s, const char *file, st_dtype_t dtype, const st_file_t *sig,
                          int top_k) {
    long values = 0;
    int matrices = 0, norms = 0;
    for (int i = 0; i < s->n; i++) {
        values += s->entries[i].n;
        toolbox_is_norm_path(s->entries[i].path) ? norms++ : matrices++;
    }
    cJSON_AddStringToObject(o, "file", file);
    const char *h = shiftset_meta(s, "base_model_hash");
    cJSON_AddStringToObject(o, "base_model_hash", h ? h : "");
    cJSON_AddNumberToObject(o, "size_bytes", (double)file_size(file));
    cJSON_AddStringToObject(o, "dtype", st_dtype_name(dtype));
    cJSON_AddNumberToObject(o, "layers", s->n);
    cJSON_AddNumberToObject(o, "matrices", matrices);
    cJSON_AddNumberToObject(o, "norms", norms);
    cJSON_AddNumberToObject(o, "shifts", (double)values);
    /* per-block L2 norms, blocks in order of first appearance in the sorted paths */
    cJSON *blocks = cJSON_AddObjectToObject(o, "block_l2");
    double *sq = sd_xcalloc((size_t)s->n + 1, sizeof(double));
    char **names = sd_xcalloc((size_t)s->n + 1, sizeof(char *));
    int nb = 0;
    for (int i = 0; i < s->n; i++) {
        char b[128];
        toolbox_block_of(s->entries[i].path, b, sizeof b);
        int k = 0;
        while (k < nb && strcmp(names[k], b)) k++;
        if (k == nb) {
            names[nb++] = strdup(b);
            SD_CHECK(names[k], "out of memory");
        }
        const double l = toolbox_l2(&s->entries[i]);
        sq[k] += l * l;
    }
    for (int k = 0; k < nb; k++) cJSON_AddNumberToObject(blocks, names[k], sqrt(sq[k])), free(names[k]);
    free(sq), free(names);
    /* the largest shifts */
    top_t *all = sd_xmalloc(sizeof(top_t) * (size_t)(values + 1));
    long na = 0;
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        float *S = NULL;
        if (sig && !toolbox_is_norm_path(e->path)) {
            char key[1024];
            shift_name_t nm = shift_name_of_entry(e->path);
            nm.kind = SHIFT_SPECTRAL;
            const st_tensor_t *ts = shift_key(key, sizeof key, &nm, SHIFT_KEY_CACHE_S) ? NULL : st_find(sig, key);
            if (ts && ts->numel == e->n) {
                S = sd_xmalloc(sizeof(float) * e->n);
                if (st_read_f32(S, ts)) free(S), S = NULL;
            }
        }
        for (int j = 0; j < e->n; j++) {
            if (e->values[j] == 0) continue;   /* an untouched value is not a shift worth listing */
            top_t *x = &all[na++];
            x->path = e->path, x->idx = j, x->delta = e->values[j];
            x->sigma = S ? S[j] : NAN;
            x->value = S ? (S[j] > 0 ? fabs(e->values[j]) / S[j] : INFINITY * (e->values[j] != 0)) : fabs(e->values[j]);
            if (sig && !S) x->value = -1;   /* no sigma: ranked after every relative shift */
        }
        free(S);
    }
    qsort(all, (size_t)na, sizeof *all, top_cmp);
    cJSON *top = cJSON_AddArrayToObject(o, sig ? "largest_relative_shifts" : "largest_shifts");
    for (long k = 0; k < na && k < top_k; k++) {
        if (all[k].value < 0) break;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "path", all[k].path);
        cJSON_AddNumberToObject(x, "index", all[k].idx);
        cJSON_AddNumberToObject(x, "delta", all[k].delta);
        if (sig) cJSON_AddNumberToObject(x, "sigma", all[k].sigma), cJSON_AddNumberToObject(x, "relative", all[k].value);
        cJSON_AddItemToArray(top, x);
    }
    free(all);
    cJSON *meta = cJSON_AddObjectToObject(o, "metadata");
    for (int i = 0; i < s->n_meta; i++) cJSON_AddStringToObject(meta, s->meta_keys[i], s->meta_values[i]);
}

SVDIFF_API int svdiff_shifts_describe(const char *path, int force, const char *svd_cache, const char *model, int top_k,
                                      char **json) {
    int rc = API_NEED(json, "svdiff_shifts_describe");
    if (rc) return rc;
    *json = NULL;
    if ((rc = API_NEED(path, "svdiff_shifts_describe"))) return rc;
    if (top_k < 1) return sd_error(SD_ERR_ARG, "svdiff_shifts_describe: top_k must be >= 1, got %d", top_k);
    svdiff_shifts_t *s = NULL;
    if ((rc = svdiff_shifts_load_ex(path, force, &s))) return rc;
    st_file_t sig;
    const int have_sig = svd_cache || model;
    if (have_sig && (rc = open_sigma(&sig, svd_cache, model))) {
        svdiff_shifts_free(s);
        return rc;
    }
    cJSON *root = cJSON_CreateObject(), *files = cJSON_AddArrayToObject(root, "files");
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) {
        if (!s->present[p]) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(files, o);
        describe_part(o, &s->part[p], s->file[p], s->dtype[p], have_sig ? &sig : NULL, top_k);
    }
    *json = cJSON_Print(root);
    cJSON_Delete(root);
    if (have_sig) st_close(&sig);
    svdiff_shifts_free(s);
    SD_CHECK(*json, "out of memory");
    return SD_OK;
}

/* ---- convert ---- */

/* Largest overall share of the norm shifts a scalar fit may lose before convert wants force:
 * above float rounding, below any real loss (a trained subject's per-element shifts lose 0.5 and more). */
#define FIT_TOLERANCE 1e-4

/* gamma of a norm from the base model */
typedef struct {
    model_t m;
    float *buf;
} gamma_ctx_t;

/* SDXL's second text encoder of the model (NULL: none) */
static const model_component_t *te2_of(const model_t *m) {
    return m->text_encoder_2.n_tensors ? &m->text_encoder_2 : NULL;
}

/* The base model's tensor that the shift of module `path` moves (SHIFT_KEY_WEIGHT), or NULL. */
static const st_tensor_t *shifted_tensor(const model_t *m, const char *path) {
    const shift_name_t n = shift_name_of_entry(path);
    char key[1024];
    if (shift_key(key, sizeof key, &n, SHIFT_KEY_WEIGHT)) return NULL;
    const model_component_t *c = n.component == SHIFT_TE ? &m->text_encoder : n.component == SHIFT_TE2 ? te2_of(m) : &m->unet;
    return c ? component_find(c, key) : NULL;
}

static const float *get_gamma(void *vctx, const char *path, int *C) {
    gamma_ctx_t *g = vctx;
    const st_tensor_t *t = shifted_tensor(&g->m, path);
    if (!t || t->ndim != 1) return NULL;
    free(g->buf);
    g->buf = sd_xmalloc(sizeof(float) * t->numel);
    if (st_read_f32(g->buf, t)) return NULL;
    *C = (int)t->numel;
    return g->buf;
}

/* svdiff-pytorch loads a file by setting each key as a parameter of its modules (SVDConv2d,
 * SVDLinear, SVDEmbedding: delta [min(out, in*kh*kw)] over the weight flattened to 2-D;
 * SVDLayerNorm, SVDGroupNorm: delta [1]), and a key or shape its model lacks stops the load. Every
 * entry must therefore name a module of the base model with exactly that length. */
static int check_svdiff_pytorch(const shift_set_t *s, const model_t *m, const char *file) {
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        const st_tensor_t *t = shifted_tensor(m, e->path);
        if (!t) return sd_error(SD_ERR_ARG, "%s: shift '%s': the base model has no module of that name", file, e->path);
        int64_t want = 1;
        if (t->ndim >= 2) {
            int64_t cols = 1;
            for (int d = 1; d < t->ndim; d++) cols *= t->shape[d];
            want = t->shape[0] < cols ? t->shape[0] : cols;
        }
        if (e->n != want)
            return sd_error(SD_ERR_ARG, "%s: shift '%s' holds %d values; svdiff-pytorch's %s there has delta [%lld]", file,
                            e->path, e->n, t->ndim >= 2 ? "SVD layer" : "SVD norm", (long long)want);
    }
    return SD_OK;
}

typedef struct {
    const svdiff_convert_params_t *p;
    int part;
} fit_ctx_t;

static void report_fit(void *vctx, const char *path, double lost, double max_gain_err) {
    const fit_ctx_t *c = vctx;
    if (c->p->fit) c->p->fit(c->part, path, lost, max_gain_err, c->p->user_data);
}

SVDIFF_API svdiff_convert_params_t svdiff_convert_default_params(void) {
    return (svdiff_convert_params_t){.fp16 = 0};
}

SVDIFF_API int svdiff_shifts_convert(const svdiff_shifts_t *in, const svdiff_convert_params_t *pr, svdiff_shifts_t **out,
                                     svdiff_convert_stats_t *stats) {
    int rc = API_NEED(out, "svdiff_shifts_convert");
    if (rc) return rc;
    *out = NULL;
    if (!rc) rc = API_NEED(in, "svdiff_shifts_convert");
    if (!rc) rc = API_NEED(pr, "svdiff_shifts_convert");
    if (rc) return rc;
    if (stats) memset(stats, 0, sizeof *stats);
    const char *format = pr->format, *name = in->path ? in->path : "the shift set";
    const int to_scalar = format && !strcmp(format, "svdiff-pytorch");
    if (format && !to_scalar && strcmp(format, "native"))
        return sd_error(SD_ERR_ARG, "svdiff_shifts_convert: format must be native or svdiff-pytorch, got '%s'", format);
    if (pr->fp16 < -1 || pr->fp16 > 1)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_convert: fp16 must be -1, 0 or 1, got %d", pr->fp16);
    /* does any norm change form? */
    int need = 0, lossy = 0;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++)
        for (int i = 0; i < in->part[p].n; i++) {
            const shift_entry_t *e = &in->part[p].entries[i];
            if (format && toolbox_is_norm_path(e->path) && (e->n == 1) != to_scalar) {
                need = 1;
                if (to_scalar) lossy = 1;
            }
        }
    if (need && !pr->model)
        return sd_error(SD_ERR_ARG, "%s: changing the form of norm shifts needs the base model's norm gains: add --model M",
                        name);
    if (to_scalar && !pr->model)
        return sd_error(SD_ERR_ARG, "%s: --format svdiff-pytorch checks every shift against the base model's modules: add --model M",
                        name);
    gamma_ctx_t g = {.buf = NULL};
    if ((need || to_scalar) && (rc = model_open(&g.m, pr->model, NULL))) return rc;
    svdiff_shifts_t *r = api_shifts_new();
    r->is_dir = in->is_dir;
    toolbox_fit_t fit[SVDIFF_SHIFTS_PARTS] = {{0}, {0}, {0}};
    fit_ctx_t fc[SVDIFF_SHIFTS_PARTS] = {{pr, 0}, {pr, 1}, {pr, 2}};
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS && !rc; p++) {
        if (!in->present[p]) continue;
        r->present[p] = 1;
        r->dtype[p] = pr->fp16 < 0 ? in->dtype[p] : pr->fp16 ? ST_F16 : ST_F32;
        double err = 0;
        fit[p].report = report_fit, fit[p].ctx = &fc[p];
        if (to_scalar && need && pr->fit) pr->fit(p, NULL, 0, 0, pr->user_data);
        if (format) rc = toolbox_convert_norms(&r->part[p], &in->part[p], to_scalar, get_gamma, &g, &err, &fit[p]);
        else toolbox_scale(&r->part[p], &in->part[p], 1.0f);   /* an exact copy */
        if (!rc && to_scalar) rc = check_svdiff_pytorch(&r->part[p], &g.m, in->file[p] ? in->file[p] : name);
    }
    if (!rc && lossy) {
        toolbox_fit_t all = fit[0];
        for (int p = 1; p < SVDIFF_SHIFTS_PARTS; p++) {
            all.err2 += fit[p].err2, all.shift2 += fit[p].shift2, all.n_fitted += fit[p].n_fitted;
            if (fit[p].worst_lost > all.worst_lost) {
                all.worst_lost = fit[p].worst_lost;
                memcpy(all.worst_path, fit[p].worst_path, sizeof all.worst_path);
            }
        }
        const double lost = toolbox_fit_lost(&all);
        if (stats) {
            stats->lossy = 1, stats->lost = lost, stats->n_fitted = all.n_fitted, stats->worst_lost = all.worst_lost;
            snprintf(stats->worst_path, sizeof stats->worst_path, "%s", all.worst_path);
        }
        /* a fit within float rounding (shifts parallel to the gains, zero shifts) is no loss */
        if (lost > FIT_TOLERANCE && !pr->force)
            rc = sd_error(SD_ERR_ARG,
                          "%s holds per-element [C] norm shifts; svdiff-pytorch stores one scalar per norm "
                          "(gain = gamma*ReLU(|gamma|+delta)/|gamma|), which can only scale the whole gain: the fit loses "
                          "%.3g of the norm shifts (more than %g); nothing written. Add --force to write it anyway, or "
                          "train with --norm-shift scalar for an exact file",
                          name, lost, FIT_TOLERANCE);
    }
    if (need || to_scalar) model_close(&g.m);
    free(g.buf);
    if (rc) {
        svdiff_shifts_free(r);
        return rc;
    }
    *out = r;
    return SD_OK;
}

/* ---- to-lora ---- */

SVDIFF_API svdiff_lora_params_t svdiff_lora_default_params(void) {
    return (svdiff_lora_params_t){.format = SVDIFF_LORA_KOHYA, .energy = 0.99, .dtype = SVDIFF_DTYPE_F16};
}

SVDIFF_API int svdiff_shifts_to_lora(const svdiff_shifts_t *in, const char *model, const svdiff_lora_params_t *pr,
                                     const char *out, svdiff_lora_stats_t stats[2]) {
    int rc = API_NEED(in, "svdiff_shifts_to_lora");
    if (!rc) rc = API_NEED(model, "svdiff_shifts_to_lora");
    if (!rc) rc = API_NEED(pr, "svdiff_shifts_to_lora");
    if (!rc) rc = API_NEED(out, "svdiff_shifts_to_lora");
    if (rc) return rc;
    if (pr->format != SVDIFF_LORA_KOHYA && pr->format != SVDIFF_LORA_DIFFUSERS)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_to_lora: unknown format %d", (int)pr->format);
    if (pr->dtype != SVDIFF_DTYPE_F32 && pr->dtype != SVDIFF_DTYPE_F16 && pr->dtype != SVDIFF_DTYPE_BF16)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_to_lora: unknown dtype %d", (int)pr->dtype);
    if (!(pr->energy > 0 && pr->energy <= 1))
        return sd_error(SD_ERR_ARG, "svdiff_shifts_to_lora: energy must be in (0, 1], got %g", pr->energy);
    if (pr->max_rank < 0) return sd_error(SD_ERR_ARG, "svdiff_shifts_to_lora: max_rank must be >= 0, got %d", pr->max_rank);
    static const st_dtype_t DT[3] = {ST_F32, ST_F16, ST_BF16};
    char cache_dir[4096];
    if (!pr->svd_cache_dir) svd_cache_default_dir(cache_dir, sizeof cache_dir);
    else snprintf(cache_dir, sizeof cache_dir, "%s", pr->svd_cache_dir);
    lora_export_opts_t o = {.format = pr->format == SVDIFF_LORA_DIFFUSERS ? LORA_FORMAT_DIFFUSERS : LORA_FORMAT_KOHYA,
                            .max_rank = pr->max_rank, .energy = pr->energy, .dtype = DT[pr->dtype],
                            .no_norms = pr->no_norms, .no_embeddings = pr->no_embeddings, .force = pr->force,
                            .svd_cache_dir = cache_dir, .source = in->path, .check = pr->check};
    const shift_set_t *sets[SVDIFF_SHIFTS_PARTS];
    int n = 0;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++)
        if (in->present[p]) sets[n++] = &in->part[p];
    pipeline_t pl;
    if ((rc = pipeline_open(&pl, model, NULL))) return rc;
    lora_export_stats_t st[2];
    rc = lora_export(&pl, sets, n, &o, out, st);
    pipeline_close(&pl);
    if (rc || !stats) return rc;
    for (int p = 0; p < 2; p++)
        stats[p] = (svdiff_lora_stats_t){.layers = st[p].layers, .zero_layers = st[p].zero_layers, .norms = st[p].norms,
                                         .dropped = st[p].dropped, .rank_min = st[p].rank_min, .rank_max = st[p].rank_max,
                                         .energy_total = st[p].energy_total, .energy_kept = st[p].energy_kept,
                                         .bytes = st[p].bytes, .err2 = st[p].err2, .ref2 = st[p].ref2};
    return SD_OK;
}
