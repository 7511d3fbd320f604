/* The shift toolbox (toolbox.h): combine, scale, limit rank, style mix, norm-form conversion on
 * in-memory shift sets. Pure functions of their inputs; files and folders are the CLI's job
 * (src/cli/shifts.c). */
#include "shifts/toolbox.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

static const char *last_component(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

int toolbox_is_norm_path(const char *path) { return strstr(last_component(path), "norm") != NULL; }

/* "<prefix><digits>" at the start of path: the index, else -1; *rest points after the digits */
static int indexed_prefix(const char *path, const char *prefix, const char **rest) {
    const size_t k = strlen(prefix);
    if (strncmp(path, prefix, k) != 0) return -1;
    const char *p = path + k;
    if (*p < '0' || *p > '9') return -1;
    int i = 0;
    while (*p >= '0' && *p <= '9') i = i * 10 + (*p++ - '0');
    if (*p != '.' && *p != '\0') return -1;
    if (rest) *rest = p;
    return i;
}

void toolbox_block_of(const char *path, char *buf, size_t cap) {
    int i;
    if (!strncmp(path, SHIFT_TE2_PREFIX, strlen(SHIFT_TE2_PREFIX))) {   /* SDXL's second text encoder */
        const size_t k = strlen(SHIFT_TE2_PREFIX);
        char inner[128];
        toolbox_block_of(path + k, inner, sizeof inner);
        snprintf(buf, cap, "%.*s%s", (int)k, path, inner);
        return;
    }
    if ((i = indexed_prefix(path, "down_blocks.", NULL)) >= 0) snprintf(buf, cap, "down_blocks.%d", i);
    else if ((i = indexed_prefix(path, "up_blocks.", NULL)) >= 0) snprintf(buf, cap, "up_blocks.%d", i);
    else if (!strncmp(path, "mid_block.", 10)) snprintf(buf, cap, "mid_block");
    else if ((i = indexed_prefix(path, "text_model.encoder.layers.", NULL)) >= 0)
        snprintf(buf, cap, "text_model.encoder.layers.%d", i);
    else if (!strncmp(path, "text_model.", 11) || !strcmp(path, "text_projection")) snprintf(buf, cap, "text_model (other)");
    else snprintf(buf, cap, "other");
}

static const char *hash_of(const shift_set_t *s) {
    const char *h = shiftset_meta(s, "base_model_hash");
    return h && *h ? h : "none";
}

int toolbox_check_compatible(const shift_set_t *a, const char *name_a, const shift_set_t *b,
                             const char *name_b, int ignore_hash) {
    if (!ignore_hash && strcmp(hash_of(a), hash_of(b)) != 0)
        return sd_error(SD_ERR_ARG, "%s was trained on base model %s but %s on %s: shifts of different base models do not combine",
                        name_a, hash_of(a), name_b, hash_of(b));
    /* entries are sorted by path: walk both in step, the first mismatch is the smallest path */
    int i = 0, j = 0;
    while (i < a->n || j < b->n) {
        const int c = i == a->n ? 1 : j == b->n ? -1 : strcmp(a->entries[i].path, b->entries[j].path);
        if (c < 0)
            return sd_error(SD_ERR_ARG, "%s has a shift for %s that %s lacks: the layer sets differ", name_a,
                            a->entries[i].path, name_b);
        if (c > 0)
            return sd_error(SD_ERR_ARG, "%s has a shift for %s that %s lacks: the layer sets differ", name_b,
                            b->entries[j].path, name_a);
        if (a->entries[i].n != b->entries[j].n)
            return sd_error(SD_ERR_ARG, "%s: %s has %d values but %s has %d", a->entries[i].path, name_a,
                            a->entries[i].n, name_b, b->entries[j].n);
        i++, j++;
    }
    return SD_OK;
}

static void copy_meta(shift_set_t *dst, const shift_set_t *src) {
    for (int i = 0; i < src->n_meta; i++) shiftset_set_meta(dst, src->meta_keys[i], src->meta_values[i]);
}

int toolbox_combine(shift_set_t *out, const shift_set_t *const *in, const float *w, int n_in,
                    int ignore_hash) {
    shiftset_init(out);
    if (n_in < 1) return sd_error(SD_ERR_ARG, "combine needs at least one shift set");
    for (int k = 1; k < n_in; k++) {
        char na[32], nb[32];
        snprintf(na, sizeof na, "input 1"), snprintf(nb, sizeof nb, "input %d", k + 1);
        int rc = toolbox_check_compatible(in[0], na, in[k], nb, ignore_hash);
        if (rc) return rc;
    }
    const shift_set_t *a = in[0];
    for (int i = 0; i < a->n; i++) {
        const int n = a->entries[i].n;
        float *acc = sd_xcalloc((size_t)n, sizeof(float));
        int started = 0;
        for (int k = 0; k < n_in; k++) {
            const float wk = w ? w[k] : 1.0f;
            if (wk == 0.0f) continue;   /* 0 * x would add a signed zero: skip, keeping -0.0 of others */
            const float *x = in[k]->entries[i].values;   /* same sorted paths: same index */
            if (!started) {
                if (wk == 1.0f) memcpy(acc, x, sizeof(float) * n);
                else for (int j = 0; j < n; j++) acc[j] = wk * x[j];
                started = 1;
            } else if (wk == 1.0f) {
                for (int j = 0; j < n; j++) acc[j] += x[j];
            } else {
                for (int j = 0; j < n; j++) acc[j] += wk * x[j];
            }
        }
        shiftset_put(out, a->entries[i].path, acc, n);
        free(acc);
    }
    copy_meta(out, a);
    return SD_OK;
}

void toolbox_scale(shift_set_t *out, const shift_set_t *in, float s) {
    shiftset_init(out);
    for (int i = 0; i < in->n; i++) {
        const shift_entry_t *e = &in->entries[i];
        float *v = sd_xmalloc(sizeof(float) * e->n);
        if (s == 1.0f) memcpy(v, e->values, sizeof(float) * e->n);
        else for (int j = 0; j < e->n; j++) v[j] = s * e->values[j];
        shiftset_put(out, e->path, v, e->n);
        free(v);
    }
    copy_meta(out, in);
}

long toolbox_limit_rank(shift_set_t *out, const shift_set_t *in, int R) {
    shiftset_init(out);
    long kept = 0;
    if (R < 0) R = 0;
    for (int i = 0; i < in->n; i++) {
        const shift_entry_t *e = &in->entries[i];
        float *v = sd_xmalloc(sizeof(float) * e->n);
        memcpy(v, e->values, sizeof(float) * e->n);
        if (toolbox_is_norm_path(e->path)) {
            kept += e->n;
        } else {
            const int keep = R < e->n ? R : e->n;
            for (int j = keep; j < e->n; j++) v[j] = 0.0f;
            kept += keep;
        }
        shiftset_put(out, e->path, v, e->n);
        free(v);
    }
    copy_meta(out, in);
    return kept;
}

int toolbox_latent_res(const char *path, int levels, int latent) {
    int i;
    if ((i = indexed_prefix(path, "down_blocks.", NULL)) >= 0) return i < levels ? latent >> i : 0;
    if ((i = indexed_prefix(path, "up_blocks.", NULL)) >= 0) return i < levels ? latent >> (levels - 1 - i) : 0;
    if (!strncmp(path, "mid_block.", 10)) return latent >> (levels - 1);
    if (!strncmp(path, "conv_in.", 8) || !strcmp(path, "conv_in") || !strcmp(path, "conv_norm_out") ||
        !strcmp(path, "conv_out"))
        return latent;
    return 0;
}

/* the presets of docs/method.md section 6 (see toolbox.h for why these modules): SD 1.x / 2.x (4
 * levels) and SDXL (3 levels, the first without attention); each runs from the second attention of
 * the next-to-last level through the mid block's attention, in forward order */
static const char *const GEOMETRY[] = {"down_blocks.2.attentions.1", "down_blocks.2.downsamplers.0",
                                       "down_blocks.3", "mid_block.resnets.0", "mid_block.attentions.0"};
static const char *const GEOMETRY_SDXL[] = {"down_blocks.1.attentions.1", "down_blocks.1.downsamplers.0",
                                            "down_blocks.2", "mid_block.resnets.0", "mid_block.attentions.0"};
/* SDXL's two transformers of the first up level: the first shapes the content of the image, the
 * second its style (docs/method.md section 6) */
static const char *const CONTENT_SDXL[] = {"up_blocks.0.attentions.0"};
static const char *const STYLE_SDXL[] = {"up_blocks.0.attentions.1"};

static int glob_matches(const char *pat, const char *path) {
    if (fnmatch(pat, path, 0) == 0) return 1;
    char buf[1024];
    if ((size_t)snprintf(buf, sizeof buf, "%s.*", pat) >= sizeof buf) return 0;
    return fnmatch(buf, path, 0) == 0;
}

static int any_glob(const char *const *pats, size_t n, const char *path) {
    for (size_t k = 0; k < n; k++)
        if (glob_matches(pats[k], path)) return 1;
    return 0;
}

#define ANY(list, path) any_glob(list, sizeof list / sizeof *list, path)

int toolbox_level_of(const char *path, int levels) {
    int i;
    if ((i = indexed_prefix(path, "down_blocks.", NULL)) >= 0) return i < levels ? i : -1;
    if ((i = indexed_prefix(path, "up_blocks.", NULL)) >= 0) return i < levels ? levels - 1 - i : -1;
    if (!strncmp(path, "mid_block.", 10)) return levels - 1;
    return -1;
}

int toolbox_selector_check(const char *selector, int levels) {
    if (!strncmp(selector, "res:", 4)) {
        char *end;
        const long h = strtol(selector + 4, &end, 10);
        if (*end == 'x') strtol(end + 1, &end, 10);
        if (*end || h <= 0)
            return sd_error(SD_ERR_ARG, "layer selector '%s': a resolution selector reads res:HxW or res:H", selector);
    }
    if (!strncmp(selector, "level:", 6)) {
        char *end;
        const long l = strtol(selector + 6, &end, 10);
        if (*end || end == selector + 6 || l < 0 || l >= levels)
            return sd_error(SD_ERR_ARG, "layer selector '%s': a level selector reads level:N with N in [0, %d] for a "
                            "%d-level UNet", selector, levels - 1, levels);
    }
    if ((!strcmp(selector, "content") || !strcmp(selector, "style")) && levels != 3)
        return sd_error(SD_ERR_ARG, "layer selector '%s' is an SDXL preset (a 3-level UNet), not for a %d-level one "
                        "(--levels)", selector, levels);
    return SD_OK;
}

int toolbox_selector_matches(const char *selector, const char *path, int levels, int latent) {
    if (!strcmp(selector, "geometry")) return levels == 3 ? ANY(GEOMETRY_SDXL, path) : ANY(GEOMETRY, path);
    if (!strcmp(selector, "content")) return levels == 3 && ANY(CONTENT_SDXL, path);
    if (!strcmp(selector, "style")) return levels == 3 && ANY(STYLE_SDXL, path);
    if (!strncmp(selector, "level:", 6)) {
        char *end;
        const long l = strtol(selector + 6, &end, 10);
        return !*end && end != selector + 6 && l >= 0 && toolbox_level_of(path, levels) == l;
    }
    if (!strncmp(selector, "res:", 4)) {
        char *end;
        const long h = strtol(selector + 4, &end, 10);
        if (*end == 'x') {
            const long w = strtol(end + 1, &end, 10);
            if (w != h) return 0;
        }
        if (*end || h <= 0) return 0;
        const int r = toolbox_latent_res(path, levels, latent);
        return r > 0 && r == h;
    }
    return glob_matches(selector, path);
}

static int selected(const char *const *sel, int n_sel, const char *path, int levels, int latent) {
    for (int k = 0; k < n_sel; k++)
        if (toolbox_selector_matches(sel[k], path, levels, latent)) return 1;
    return 0;
}

int toolbox_mix(shift_set_t *out, const shift_set_t *from, const shift_set_t *rest,
                const char *const *selectors, int n_sel, int levels, int latent, int ignore_hash,
                int *n_from) {
    shiftset_init(out);
    if (n_from) *n_from = 0;
    if (!ignore_hash && strcmp(hash_of(from), hash_of(rest)) != 0)
        return sd_error(SD_ERR_ARG, "--from was trained on base model %s but --rest on %s: shifts of different base models do not mix",
                        hash_of(from), hash_of(rest));
    for (int k = 0; k < n_sel; k++) {
        int rc = toolbox_selector_check(selectors[k], levels);
        if (rc) return rc;
        int hits = 0;
        for (int i = 0; i < from->n && !hits; i++)
            hits = toolbox_selector_matches(selectors[k], from->entries[i].path, levels, latent);
        for (int i = 0; i < rest->n && !hits; i++)
            hits = toolbox_selector_matches(selectors[k], rest->entries[i].path, levels, latent);
        if (!hits) return sd_error(SD_ERR_ARG, "layer selector '%s' selects no shift of either file", selectors[k]);
    }
    for (int i = 0; i < from->n; i++) {
        const shift_entry_t *e = &from->entries[i], *r = shiftset_find(rest, e->path);
        if (r && r->n != e->n)
            return sd_error(SD_ERR_ARG, "%s: --from has %d values but --rest has %d", e->path, e->n, r->n);
    }
    for (int i = 0; i < from->n; i++)
        if (selected(selectors, n_sel, from->entries[i].path, levels, latent)) {
            shiftset_put(out, from->entries[i].path, from->entries[i].values, from->entries[i].n);
            if (n_from) (*n_from)++;
        }
    for (int i = 0; i < rest->n; i++)
        if (!selected(selectors, n_sel, rest->entries[i].path, levels, latent))
            shiftset_put(out, rest->entries[i].path, rest->entries[i].values, rest->entries[i].n);
    copy_meta(out, rest);
    return SD_OK;
}

double toolbox_fit_lost(const toolbox_fit_t *f) { return f->err2 > 0 ? sqrt(f->err2 / f->shift2) : 0; }

int toolbox_convert_norms(shift_set_t *out, const shift_set_t *in, int to_scalar,
                          toolbox_gamma_fn get_gamma, void *ctx, double *max_err, toolbox_fit_t *fit) {
    shiftset_init(out);
    double worst = 0;
    if (fit) *fit = (toolbox_fit_t){.report = fit->report, .ctx = fit->ctx};   /* keeps the callback */
    for (int i = 0; i < in->n; i++) {
        const shift_entry_t *e = &in->entries[i];
        if (!toolbox_is_norm_path(e->path) || (e->n == 1) == (to_scalar != 0)) {
            shiftset_put(out, e->path, e->values, e->n);
            continue;
        }
        int C = 0;
        const float *g = get_gamma(ctx, e->path, &C);
        if (!g || (to_scalar && C != e->n)) {
            shiftset_free(out);
            return sd_error(SD_ERR_ARG, "%s: the model has no norm of that name with %d channels to convert against",
                            e->path, to_scalar ? e->n : C);
        }
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)g[c] * g[c];
        const double sigma = sqrt(ss);
        if (sigma == 0) {
            shiftset_free(out);
            return sd_error(SD_ERR_ARG, "%s: the norm's gain is all zero, its scalar form is undefined", e->path);
        }
        if (to_scalar) {
            /* least squares: min_t |gamma * t - (gamma + d)|, t = (sigma + delta) / sigma */
            double dot = 0;
            for (int c = 0; c < C; c++) dot += (double)g[c] * e->values[c];
            const float delta = (float)(dot / sigma);
            const double t = fmax(sigma + delta, 0.0) / sigma;
            double e2 = 0, d2 = 0, lw = 0;
            for (int c = 0; c < C; c++) {
                const double err = fabs(g[c] * t - (g[c] + (double)e->values[c]));
                if (err > lw) lw = err;
                e2 += err * err, d2 += (double)e->values[c] * e->values[c];
            }
            if (lw > worst) worst = lw;
            if (fit) {
                /* the share of the shift the scalar cannot hold: 0 exact, 1 all of it lost */
                const double lost = e2 > 0 ? sqrt(e2 / d2) : 0;
                if (fit->report) fit->report(fit->ctx, e->path, lost, lw);
                fit->err2 += e2, fit->shift2 += d2, fit->n_fitted++;
                if (lost > fit->worst_lost) {
                    fit->worst_lost = lost;
                    snprintf(fit->worst_path, sizeof fit->worst_path, "%s", e->path);
                }
            }
            shiftset_put(out, e->path, &delta, 1);
        } else {
            const double t = fmax(sigma + e->values[0], 0.0) / sigma;
            float *d = sd_xmalloc(sizeof(float) * C);
            for (int c = 0; c < C; c++) d[c] = (float)(g[c] * t - g[c]);
            shiftset_put(out, e->path, d, C);
            free(d);
        }
    }
    if (max_err) *max_err = worst;
    copy_meta(out, in);
    shiftset_set_meta(out, "norm_shift", to_scalar ? "scalar" : "element");
    return SD_OK;
}

void toolbox_add_history(shift_set_t *s, const char *entry) {
    const char *old = shiftset_meta(s, "history");
    if (!old || !*old) {
        shiftset_set_meta(s, "history", entry);
        return;
    }
    char *buf = sd_xmalloc(strlen(old) + strlen(entry) + 3);
    sprintf(buf, "%s; %s", old, entry);
    shiftset_set_meta(s, "history", buf);
    free(buf);
}

double toolbox_l2(const shift_entry_t *e) {
    double s = 0;
    for (int j = 0; j < e->n; j++) s += (double)e->values[j] * e->values[j];
    return sqrt(s);
}
