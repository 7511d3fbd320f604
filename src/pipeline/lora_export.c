/* Spectral shifts to a LoRA file (lora_export.h): the model is made spectral where shifted (the
 * same path as generate --shifts, so the singular vectors are those generate bakes with), then
 * every shifted matrix gives its top-|ds| factors and every shifted norm its gain difference. */
#include "pipeline/lora_export.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "ops/ops.h"
#include "shifts/toolbox.h"

/* ---- the rank of one layer ---- */

static const float *g_ds;   /* qsort has no context argument; set just before each sort */

static int by_abs_desc(const void *a, const void *b) {
    const int i = *(const int *)a, j = *(const int *)b;
    const float x = fabsf(g_ds[i]), y = fabsf(g_ds[j]);
    if (x != y) return x < y ? 1 : -1;
    return i - j;
}

int lora_export_rank(const float *ds, int n, double energy, int max_rank, int *order, double *kept) {
    for (int i = 0; i < n; i++) order[i] = i;
    g_ds = ds;
    qsort(order, (size_t)n, sizeof *order, by_abs_desc);
    /* the total is summed in the same (sorted) order as the prefix, so energy 1 stops exactly at
     * the last non-zero entry */
    double total = 0;
    int nnz = 0;
    for (int k = 0; k < n; k++) {
        const double v = ds[order[k]];
        total += v * v;
        nnz += v != 0;
    }
    int r = 0;
    double acc = 0;
    if (total > 0)
        while (r < nnz && acc < energy * total) {
            const double v = ds[order[r]];
            acc += v * v;
            r++;
        }
    if (max_rank > 0 && r > max_rank) {
        r = max_rank;
        acc = 0;
        for (int k = 0; k < r; k++) acc += (double)ds[order[k]] * ds[order[k]];
    }
    if (kept) *kept = acc;
    return r;
}

/* ---- one exported module ---- */

typedef struct {
    char *path;        /* module path (a text_encoder_2 one without its set prefix) */
    int comp;          /* shift_component_t of the module */
    int te;            /* stats index: 0 UNet, 1 the text encoders (both of SDXL's) */
    int is_norm;
    int rank;          /* matrices: kept rank (before any padding) */
    int rows, cols;    /* matrices: the weight [rows, cols]; norms: rows = C */
    int ndim;          /* of the model's weight tensor: 2 (linear, embedding), 4 (conv) or 1 (norm) */
    int64_t shape[4];  /* of the model's weight tensor */
    float *up;         /* [rows, rank]: U_r diag(ds_r); norms: the gain difference [C] */
    float *down;       /* [rank, cols]: V_r^T */
    const spectral_t *sp;   /* matrices: the model's factors (for check) */
    float *ds;              /* matrices: ReLU(S + s delta) - S [sp->rank]; norms: the exact difference [C] */
} item_t;

static void item_free(item_t *it) {
    free(it->path), free(it->up), free(it->down), free(it->ds);
}

static int is_embedding(const char *path) { return !strncmp(path, "text_model.embeddings.", 22); }


/* The weight tensor of a module in the model file, for its layout (conv or linear) and shape. */
static int tensor_layout(const pipeline_t *p, item_t *it) {
    char key[600];
    const shift_name_t n = {(shift_component_t)it->comp, SHIFT_KIND_UNKNOWN, it->path};
    if (shift_key(key, sizeof key, &n, SHIFT_KEY_WEIGHT)) return SD_ERR_FORMAT;   /* the message names the path */
    const model_component_t *comp = it->comp == SHIFT_TE2 ? &p->model.text_encoder_2
                                    : it->comp == SHIFT_TE ? &p->model.text_encoder : &p->model.unet;
    const st_tensor_t *t = comp ? component_find(comp, key) : NULL;
    if (!t || t->ndim < 1 || t->ndim > 4)
        return sd_error(SD_ERR_FORMAT, "%s: the model has no tensor '%s' to export against", it->path, key);
    it->ndim = t->ndim;
    for (int k = 0; k < t->ndim; k++) it->shape[k] = t->shape[k];
    return SD_OK;
}

/* Factors of a spectral weight: ds = ReLU(S + s delta) - S, the top-|ds| entries. */
static int matrix_item(const pipeline_t *p, item_t *it, const weight_t *w, const lora_export_opts_t *o,
                       lora_export_stats_t *st) {
    SD_CHECK(w->kind == WEIGHT_SPECTRAL && w->sp, "%s: not spectral after applying its shifts", it->path);
    const spectral_t *sp = w->sp;
    int rc = tensor_layout(p, it);
    if (rc) return rc;
    const int n = sp->rank;
    float *ds = it->ds = sd_xmalloc(sizeof(float) * n);
    int *order = sd_xmalloc(sizeof(int) * n);
    spectral_coeffs(ds, sp, 1);
    double kept = 0, total = 0;
    for (int i = 0; i < n; i++) total += (double)ds[i] * ds[i];
    const int r = lora_export_rank(ds, n, o->energy, o->max_rank, order, &kept);
    it->rank = r, it->rows = sp->rows, it->cols = sp->cols;
    st->energy_total += total, st->energy_kept += kept;
    if (r > 0) {
        it->up = sd_xmalloc(sizeof(float) * (size_t)sp->rows * r);
        it->down = sd_xmalloc(sizeof(float) * (size_t)r * sp->cols);
        for (int k = 0; k < r; k++) {
            const int j = order[k];
            for (int i = 0; i < sp->rows; i++) it->up[(size_t)i * r + k] = sp->U[(size_t)i * sp->rank + j] * ds[j];
            memcpy(it->down + (size_t)k * sp->cols, sp->Vt + (size_t)j * sp->cols, sizeof(float) * sp->cols);
        }
    }
    it->sp = sp;
    free(order);
    return SD_OK;
}

/* A norm's gain difference: normshift_gain(gamma, shift) - gamma, as the model computes it. */
static void norm_item(item_t *it, const float *gamma, const float *shift, float s, int C, normshift_mode_t mode) {
    it->is_norm = 1, it->rows = C, it->ndim = 1, it->shape[0] = C;
    it->up = sd_xmalloc(sizeof(float) * C);
    normshift_gain(it->up, gamma, shift, s, C, mode);
    for (int c = 0; c < C; c++) it->up[c] -= gamma[c];
    it->ds = sd_xmalloc(sizeof(float) * C);
    memcpy(it->ds, it->up, sizeof(float) * C);
}

/* ---- the check: the written values against the exact differences ---- */

static void round_to(float *x, size_t n, st_dtype_t dt) {
    if (dt == ST_F16)
        for (size_t i = 0; i < n; i++) x[i] = st_f16_to_f32(st_f32_to_f16(x[i]));
    else if (dt == ST_BF16)
        for (size_t i = 0; i < n; i++) x[i] = st_bf16_to_f32(st_f32_to_bf16(x[i]));
}

/* err2 = ||U diag(ds) V^T - up down||_F^2 formed densely as one product [U diag(ds) | -up] [V^T; down]
 * (no cancellation between large sums), ref2 = ||U diag(ds) V^T||_F^2 = sum ds^2. */
static void check_item(const item_t *it, double *err2, double *ref2) {
    if (it->is_norm) {
        for (int c = 0; c < it->rows; c++) {
            *err2 += pow((double)it->up[c] - it->ds[c], 2);
            *ref2 += (double)it->ds[c] * it->ds[c];
        }
        return;
    }
    const spectral_t *sp = it->sp;
    const int n = sp->rank, r = it->rank, K = n + r, rows = sp->rows, cols = sp->cols;
    float *M = sd_xmalloc(sizeof(float) * (size_t)rows * K), *N = sd_xmalloc(sizeof(float) * (size_t)K * cols);
    float *D = sd_xmalloc(sizeof(float) * (size_t)rows * cols);
    for (int i = 0; i < rows; i++) {
        for (int j = 0; j < n; j++) M[(size_t)i * K + j] = sp->U[(size_t)i * n + j] * it->ds[j];
        for (int k = 0; k < r; k++) M[(size_t)i * K + n + k] = -it->up[(size_t)i * r + k];
    }
    memcpy(N, sp->Vt, sizeof(float) * (size_t)n * cols);
    if (r) memcpy(N + (size_t)n * cols, it->down, sizeof(float) * (size_t)r * cols);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, K, 1.0f, M, K, N, cols, 0.0f, D, cols);
    double e = 0, f = 0;
    for (size_t i = 0; i < (size_t)rows * cols; i++) e += (double)D[i] * D[i];
    for (int j = 0; j < n; j++) f += (double)it->ds[j] * it->ds[j];
    *err2 += e, *ref2 += f;
    free(M), free(N), free(D);
}

/* ---- writing ---- */

typedef struct {
    st_writer_t *w;
    void **bufs;
    int n_bufs, cap_bufs;
    st_dtype_t dtype;
} out_t;

static void *keep(out_t *o, void *p) {
    if (o->n_bufs == o->cap_bufs) {
        o->cap_bufs = o->cap_bufs ? 2 * o->cap_bufs : 64;
        o->bufs = realloc(o->bufs, sizeof(void *) * (size_t)o->cap_bufs);
        SD_CHECK(o->bufs, "out of memory");
    }
    return o->bufs[o->n_bufs++] = p;
}

/* Adds x[n] as `name` in the output dtype; returns the bytes written or -1 (error set). */
static long add_tensor(out_t *o, const char *name, const float *x, size_t n, int ndim, const int64_t *shape,
                       st_dtype_t dtype) {
    const void *data = x;
    size_t es = 4;
    if (dtype != ST_F32) {
        uint16_t *h = keep(o, sd_xmalloc(sizeof(uint16_t) * (n ? n : 1)));
        for (size_t i = 0; i < n; i++) {
            h[i] = dtype == ST_F16 ? st_f32_to_f16(x[i]) : st_f32_to_bf16(x[i]);
            const float back = dtype == ST_F16 ? st_f16_to_f32(h[i]) : st_bf16_to_f32(h[i]);
            if (!isfinite(back)) {
                sd_error(SD_ERR_NUMERIC, "%s: value %g at flat index %zu does not fit %s: export as fp32", name,
                         (double)x[i], i, st_dtype_name(dtype));
                return -1;
            }
        }
        data = h, es = 2;
    }
    if (st_writer_add(o->w, name, dtype, ndim, shape, data)) return -1;
    return (long)(n * es);
}

/* Key prefixes per component: diffusers' component names; kohya's lora_unet_ / lora_te_, and on SDXL
 * (two text encoders) lora_te1_ / lora_te2_, the names sd-scripts writes and ComfyUI and A1111 map
 * to CLIP-L and OpenCLIP-G. */
static void key_of(char *buf, size_t cap, lora_format_t f, int comp, int sdxl, const char *path, const char *suffix) {
    static const char *const DIFFUSERS[SHIFT_N_COMPONENTS] = {"unet", "text_encoder", "text_encoder_2"};
    static const char *const KOHYA[SHIFT_N_COMPONENTS] = {"lora_unet_", "lora_te_", "lora_te2_"};
    if (f == LORA_FORMAT_DIFFUSERS) {
        snprintf(buf, cap, "%s.%s%s", DIFFUSERS[comp], path, suffix);
        return;
    }
    int k = snprintf(buf, cap, "%s", comp == SHIFT_TE && sdxl ? "lora_te1_" : KOHYA[comp]);
    for (const char *c = path; *c && k + 1 < (int)cap; c++) buf[k++] = *c == '.' ? '_' : *c;
    buf[k] = '\0';
    snprintf(buf + k, cap - k, "%s", suffix);
}

/* down / up of one matrix at rank R >= it->rank (extra rows and columns zero), with its layout */
static long write_matrix(out_t *o, const item_t *it, int R, lora_format_t f, int sdxl) {
    char key[700];
    float *down = it->down, *up = it->up;
    if (R > it->rank) {   /* zero padding: exact, for a loader that takes one rank per component */
        down = keep(o, sd_xcalloc((size_t)R * it->cols, sizeof(float)));
        up = keep(o, sd_xcalloc((size_t)it->rows * R, sizeof(float)));
        memcpy(down, it->down, sizeof(float) * (size_t)it->rank * it->cols);
        for (int i = 0; i < it->rows; i++)
            memcpy(up + (size_t)i * R, it->up + (size_t)i * it->rank, sizeof(float) * it->rank);
    }
    int64_t ds[4], us[4];
    int dn = 2, un = 2;
    ds[0] = R, ds[1] = it->cols, us[0] = it->rows, us[1] = R;
    if (it->ndim == 4) {   /* conv: down is a conv with the layer's kernel into R channels, up a 1x1 conv */
        dn = un = 4;
        ds[1] = it->shape[1], ds[2] = it->shape[2], ds[3] = it->shape[3];
        us[2] = us[3] = 1;
    }
    const int kohya = f == LORA_FORMAT_KOHYA;
    key_of(key, sizeof key, f, it->comp, sdxl, it->path, kohya ? ".lora_down.weight" : ".lora_A.weight");
    long a = add_tensor(o, key, down, (size_t)R * it->cols, dn, ds, o->dtype);
    if (a < 0) return -1;
    key_of(key, sizeof key, f, it->comp, sdxl, it->path, kohya ? ".lora_up.weight" : ".lora_B.weight");
    long b = add_tensor(o, key, up, (size_t)it->rows * R, un, us, o->dtype);
    if (b < 0) return -1;
    long c = 0;
    if (kohya) {   /* alpha = rank, in fp32 whatever the dtype (bf16 cannot hold every rank) */
        float *alpha = keep(o, sd_xmalloc(sizeof(float)));
        *alpha = (float)R;
        key_of(key, sizeof key, f, it->comp, sdxl, it->path, ".alpha");
        c = add_tensor(o, key, alpha, 1, 0, NULL, ST_F32);
        if (c < 0) return -1;
    }
    return a + b + c;
}

/* ---- the export ---- */

int lora_export(pipeline_t *p, const shift_set_t *const *sets, int n_sets, const lora_export_opts_t *o,
                const char *out, lora_export_stats_t stats[2]) {
    if (!(o->energy > 0 && o->energy <= 1))
        return sd_error(SD_ERR_ARG, "energy %g: must be in (0, 1]", o->energy);
    if (o->max_rank < 0) return sd_error(SD_ERR_ARG, "rank %d: must be positive", o->max_rank);
    if (o->dtype != ST_F32 && o->dtype != ST_F16 && o->dtype != ST_BF16)
        return sd_error(SD_ERR_ARG, "dtype %s: fp32, fp16 or bf16", st_dtype_name(o->dtype));
    memset(stats, 0, 2 * sizeof *stats);
    char hash[17];
    int rc = model_weights_hash(&p->model, hash);
    if (rc) return rc;
    for (int k = 0; k < n_sets; k++) {
        const char *base = shiftset_meta(sets[k], "base_model_hash");
        if (!base)
            fprintf(stderr, "warning: shift set %d has no base_model_hash: cannot check that it was trained on this "
                    "model (%s)\n", k + 1, hash);
        else if (strcmp(base, hash)) {
            if (!o->force)
                return sd_error(SD_ERR_ARG, "the shifts were trained on base model %s, but this model hashes to %s "
                                "(--force exports against it anyway)", base, hash);
            fprintf(stderr, "warning: the shifts were trained on base model %s, not this one (%s): exported anyway "
                    "(--force)\n", base, hash);
        }
    }

    /* what to export: per component, the shifted paths less the dropped ones */
    shift_set_t parts[SHIFT_N_COMPONENTS];
    for (int c = 0; c < SHIFT_N_COMPONENTS; c++) shiftset_init(&parts[c]);
    clip_t *te2 = p->has_te2 ? &p->clip2 : NULL;   /* SDXL */
    const int sdxl = te2 != NULL;
    int dropped_norms = 0, dropped_emb = 0;
    for (int k = 0; k < n_sets; k++)
        for (int i = 0; i < sets[k]->n; i++) {
            const shift_entry_t *e = &sets[k]->entries[i];
            const shift_name_t nm = shift_name_of_entry(e->path);
            const int comp = nm.component, te = comp != SHIFT_UNET;
            const int norm = toolbox_is_norm_path(e->path);
            if (comp == SHIFT_TE2 && !te2) {
                rc = sd_error(SD_ERR_ARG, "%s is a text_encoder_2 shift, but this model has no second text encoder (an "
                              "SDXL shift file on another model?)", e->path);
                goto done;
            }
            if ((norm && o->no_norms) || (is_embedding(nm.path) && o->no_embeddings)) {
                stats[te].dropped++;
                norm ? dropped_norms++ : dropped_emb++;
                continue;
            }
            if (o->format == LORA_FORMAT_DIFFUSERS && norm) {
                rc = sd_error(SD_ERR_ARG, "%s is a norm-gain shift: the diffusers LoRA format has no key for a full "
                              "difference; use --format kohya (ComfyUI and A1111 read its .diff keys) or --no-norms "
                              "to leave the norm shifts out", e->path);
                goto done;
            }
            if (o->format == LORA_FORMAT_DIFFUSERS && is_embedding(nm.path)) {
                rc = sd_error(SD_ERR_ARG, "%s is an embedding shift: diffusers' text-encoder LoRA has no such key; "
                              "use --format kohya or --no-embeddings to leave it out", e->path);
                goto done;
            }
            /* several sets add up, as generate --shifts a --shifts b does */
            const shift_entry_t *have = shiftset_find(&parts[comp], e->path);
            if (!have) shiftset_put(&parts[comp], e->path, e->values, e->n);
            else if (have->n == e->n)
                for (int j = 0; j < e->n; j++) have->values[j] += e->values[j];
            else {
                rc = sd_error(SD_ERR_ARG, "%s: %d values in one shift set and %d in another", e->path, have->n, e->n);
                goto done;
            }
        }
    if (dropped_norms)
        fprintf(stderr, "warning: %d norm-gain shifts left out (--no-norms): the LoRA does not reproduce them\n",
                dropped_norms);
    if (dropped_emb)
        fprintf(stderr, "warning: %d embedding shifts left out (--no-embeddings): the LoRA does not reproduce them\n",
                dropped_emb);

    svd_cache_t *cache = NULL;
    if (o->svd_cache_dir && *o->svd_cache_dir && svd_cache_open(&cache, o->svd_cache_dir, hash)) {
        fprintf(stderr, "warning: %s; going on without an SVD cache\n", sd_last_error());
        cache = NULL;
    }
    rc = shiftset_apply_unet(&p->unet, &parts[0], 1.0f, cache);
    if (!rc) rc = shiftset_apply_clip(&p->clip, &parts[1], 1.0f, cache);
    if (!rc && parts[SHIFT_TE2].n) rc = shiftset_apply_clip_as(te2, SHIFT_TE2, &parts[SHIFT_TE2], 1.0f, cache);
    if (!rc && cache && svd_cache_save(cache))
        fprintf(stderr, "warning: %s (the SVD factors will be recomputed next time)\n", sd_last_error());
    svd_cache_close(cache);
    if (rc) goto done;

    int n_items = parts[0].n + parts[1].n + parts[2].n, n_it = 0;
    item_t *items = sd_xcalloc((size_t)n_items + 1, sizeof *items);
    int emb_written = 0, te_norms = 0;   /* counted when written */
    for (int comp = 0; comp < SHIFT_N_COMPONENTS && !rc; comp++)
        for (int i = 0; i < parts[comp].n && !rc; i++) {
            const shift_entry_t *e = &parts[comp].entries[i];
            item_t *it = &items[n_it++];
            it->path = strdup(shift_name_of_entry(e->path).path), it->comp = comp, it->te = comp != SHIFT_UNET;
            SD_CHECK(it->path, "out of memory");
            if (comp == SHIFT_UNET) {
                layer_t *l = unet_find_layer(&p->unet, e->path);
                if (l) rc = matrix_item(p, it, &l->w, o, &stats[0]);
                else {
                    norm_layer_t *nm = unet_find_norm(&p->unet, e->path);
                    norm_item(it, nm->gamma, nm->shift, nm->scale, nm->C, nm->mode);
                }
            } else {
                clip_t *c = comp == SHIFT_TE2 ? te2 : &p->clip;
                clip_module_t f;
                clip_find_module(c, it->path, &f);
                if (f.w) rc = matrix_item(p, it, f.w, o, &stats[1]);
                else norm_item(it, f.ln->gamma, f.ln->shift, c->norm_shift_scale, c->cfg.hidden_size, c->norm_shift_mode);
            }
        }
    if (rc) goto free_items;

    /* ranks per component (diffusers pads to the largest) */
    int max_r[SHIFT_N_COMPONENTS] = {0, 0, 0};   /* diffusers: one alpha per component */
    for (int k = 0; k < n_it; k++) {
        item_t *it = &items[k];
        lora_export_stats_t *st = &stats[it->te];
        if (it->is_norm) {
            int nz = 0;
            for (int c = 0; c < it->rows; c++) nz |= it->up[c] != 0;
            it->rank = nz;   /* a norm's "rank": 0 when its gain is unchanged (nothing to write) */
            if (nz) st->norms++;
            else st->zero_layers++;
            continue;
        }
        if (it->rank == 0) {
            st->zero_layers++;
            continue;
        }
        st->rank_min = st->layers == 0 || it->rank < st->rank_min ? it->rank : st->rank_min;
        if (it->rank > st->rank_max) st->rank_max = it->rank;
        st->layers++;
        if (it->rank > max_r[it->comp]) max_r[it->comp] = it->rank;
    }
    if (!stats[0].layers && !stats[0].norms && !stats[1].layers && !stats[1].norms) {
        rc = sd_error(SD_ERR_ARG, "nothing to export: every shift is zero or left out");
        goto free_items;
    }

    if (o->check)   /* what the file will hold: the factors rounded to its dtype */
        for (int k = 0; k < n_it; k++) {
            item_t *it = &items[k];
            if (it->rank == 0) continue;
            round_to(it->up, (size_t)it->rows * (it->is_norm ? 1 : it->rank), o->dtype);
            if (!it->is_norm) round_to(it->down, (size_t)it->rank * it->cols, o->dtype);
            check_item(it, &stats[it->te].err2, &stats[it->te].ref2);
        }

    out_t w = {.w = st_writer_new(), .dtype = o->dtype};
    char key[700], val[256];
    for (int k = 0; k < n_it && !rc; k++) {
        const item_t *it = &items[k];
        long b;
        if (it->rank == 0) continue;
        if (it->te) it->is_norm ? te_norms++ : (emb_written += is_embedding(it->path));
        if (it->is_norm) {
            key_of(key, sizeof key, o->format, it->comp, sdxl, it->path, ".diff");
            b = add_tensor(&w, key, it->up, (size_t)it->rows, 1, it->shape, o->dtype);
        } else {
            b = write_matrix(&w, it, o->format == LORA_FORMAT_DIFFUSERS ? max_r[it->comp] : it->rank, o->format, sdxl);
        }
        if (b < 0) rc = SD_ERR_FORMAT;
        else stats[it->te].bytes += b;
    }
    if (!rc) {
        st_writer_meta(w.w, "base_model_hash", hash);
        st_writer_meta(w.w, "svdiff_export", "spectral shifts as LoRA: up = U_r diag(ds_r), down = V_r^T, alpha = r");
        if (o->source) st_writer_meta(w.w, "svdiff_source_shifts", o->source);
        snprintf(val, sizeof val, "%.17g", o->energy);
        st_writer_meta(w.w, "svdiff_energy", val);
        snprintf(val, sizeof val, "%d", o->max_rank);
        st_writer_meta(w.w, "svdiff_max_rank", val);
        st_writer_meta(w.w, "svdiff_format", o->format == LORA_FORMAT_KOHYA ? "kohya" : "diffusers");
        st_writer_meta(w.w, "svdiff_norms", o->no_norms ? "left out" : "full differences (.diff)");
        const char *ip = n_sets ? shiftset_meta(sets[0], "instance_prompt") : NULL;
        if (ip && *ip) st_writer_meta(w.w, "svdiff_instance_prompt", ip);   /* the words that call the subject */
        if (o->format == LORA_FORMAT_KOHYA) {
            /* kohya's own tools write "Dynamic" when layers have different ranks */
            int lo = 0, hi = 0;
            for (int c = 0; c < 2; c++)
                if (stats[c].layers) {
                    lo = lo == 0 || stats[c].rank_min < lo ? stats[c].rank_min : lo;
                    hi = stats[c].rank_max > hi ? stats[c].rank_max : hi;
                }
            st_writer_meta(w.w, "ss_network_module", "networks.lora");
            if (lo == hi && lo > 0) snprintf(val, sizeof val, "%d", lo);
            else snprintf(val, sizeof val, "Dynamic");
            st_writer_meta(w.w, "ss_network_dim", val);
            st_writer_meta(w.w, "ss_network_alpha", val);
        }
        rc = st_writer_save(w.w, out);
    }
    st_writer_free(w.w);
    for (int k = 0; k < w.n_bufs; k++) free(w.bufs[k]);
    free(w.bufs);
    if (!rc && o->format == LORA_FORMAT_KOHYA && emb_written)
        fprintf(stderr, "note: %d text-encoder embedding shifts are written as lora_te_text_model_embeddings_* factors: "
                "svdiff --lora applies them, ComfyUI and A1111 apply LoRA to the encoder layers only and skip them "
                "(--no-embeddings leaves them out)\n", emb_written);
    if (!rc && o->format == LORA_FORMAT_KOHYA && te_norms)
        fprintf(stderr, "note: %d text-encoder LayerNorm shifts are written as lora_te_*.diff: svdiff --lora applies them, "
                "ComfyUI's lora_te_ names cover the encoder layers' linears only and skip them (--no-norms leaves them "
                "out)\n", te_norms);
free_items:
    for (int k = 0; k < n_it; k++) item_free(&items[k]);
    free(items);
done:
    for (int c = 0; c < SHIFT_N_COMPONENTS; c++) shiftset_free(&parts[c]);
    return rc;
}
