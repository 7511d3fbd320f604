/* Cut-Mix-Unmix (see unmix.h): site selection, the row specification, and the loss / gradient /
 * leakage sums on cross-attention probabilities recomputed from the log-sum-exp. */
#include "models/unmix.h"

#include <cblas.h>
#include <ctype.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/ops.h"

#define QBLK 128   /* query rows per recomputed probability block */

static int is_digits(const char *s, size_t n) {
    if (!n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i])) return 0;
    return 1;
}

/* Does item (not NUL-terminated, n chars) choose the site at `level` with module path `path`? */
static int item_matches(const char *item, size_t n, const char *path, int level, int H) {
    if (is_digits(item, n)) return (H >> level) == atoi(item);
    char pat[256];
    if (n >= sizeof pat) n = sizeof pat - 1;
    memcpy(pat, item, n), pat[n] = 0;
    if (strpbrk(pat, "*?[")) return fnmatch(pat, path, 0) == 0;
    return strncmp(path, pat, n) == 0;
}

static int all_layers(const char *layers) { return !layers || !*layers || !strcmp(layers, "all"); }

int unmix_attach(unmix_t *u, unet_t *m, const char *layers, int rows, int H, int W, int T) {
    memset(u, 0, sizeof *u);
    u->rows = rows, u->H = H, u->W = W, u->T = T, u->model = m;
    /* count the candidates */
    int cap = 0;
    for (int i = 0; i < m->n_stages; i++)
        if (m->stages[i].kind == UNET_STAGE_TRANSFORMER) cap += m->transformers[m->stages[i].index].n_blocks;
    if (!cap) return sd_error(SD_ERR_ARG, "--unmix-layers: this model has no cross-attention layers");
    u->sites = sd_xcalloc((size_t)cap, sizeof *u->sites);
    /* items: every one must choose at least one site */
    const char *p = all_layers(layers) ? "" : layers;
    for (const char *it = p; *p;) {
        const char *end = strchr(it, ',');
        size_t n = end ? (size_t)(end - it) : strlen(it);
        int hits = 0;
        for (int i = 0; i < m->n_stages; i++) {
            if (m->stages[i].kind != UNET_STAGE_TRANSFORMER) continue;
            const unet_transformer_t *tr = &m->transformers[m->stages[i].index];
            for (int l = 0; l < tr->n_blocks; l++) {
                char path[512];
                snprintf(path, sizeof path, "%s", tr->blocks[l].attn2.to_q.name);
                char *dot = strrchr(path, '.');
                if (dot) *dot = 0;   /* ".to_q" */
                hits += item_matches(it, n, path, m->stages[i].level, H);
            }
        }
        if (!hits) {
            unmix_detach(u);
            return sd_error(SD_ERR_ARG, "--unmix-layers: '%.*s' selects no cross-attention layer (a latent "
                            "resolution such as %d, or a module path pattern such as 'up_blocks.*')", (int)n, it, H);
        }
        if (!end) break;
        it = end + 1;
    }
    for (int i = 0; i < m->n_stages; i++) {
        if (m->stages[i].kind != UNET_STAGE_TRANSFORMER) continue;
        unet_transformer_t *tr = &m->transformers[m->stages[i].index];
        for (int l = 0; l < tr->n_blocks; l++) {
            char path[512];
            snprintf(path, sizeof path, "%s", tr->blocks[l].attn2.to_q.name);
            char *dot = strrchr(path, '.');
            if (dot) *dot = 0;
            int want = all_layers(layers);
            for (const char *it = layers; !want && it && *it;) {
                const char *end = strchr(it, ',');
                size_t n = end ? (size_t)(end - it) : strlen(it);
                want = item_matches(it, n, path, m->stages[i].level, H);
                if (!end) break;
                it = end + 1;
            }
            if (!want) continue;
            unmix_site_t *s = &u->sites[u->n_sites++];
            s->u = u, s->level = m->stages[i].level;
            s->name = sd_xmalloc(strlen(path) + 1);
            strcpy(s->name, path);
            tr->blocks[l].unmix = s;
        }
    }
    u->tokw = calloc((size_t)rows * 2 * T, sizeof(float));
    u->region = calloc((size_t)rows * 2 * H * W, sizeof(float));
    if (!u->tokw || !u->region) {
        unmix_detach(u);
        return sd_nomem("--unmix: attention maps", sizeof(float) * (size_t)rows * 2 * ((size_t)T + (size_t)H * W));
    }
    u->gscale = 1.0f;
    return SD_OK;
}

void unmix_detach(unmix_t *u) {
    if (u->model)
        for (int i = 0; i < u->model->n_transformers; i++)
            for (int l = 0; l < u->model->transformers[i].n_blocks; l++) {
                unet_tblock_t *tb = &u->model->transformers[i].blocks[l];
                if (tb->unmix && tb->unmix->u == u) tb->unmix = NULL;
            }
    for (int i = 0; i < u->n_sites; i++) free(u->sites[i].name);
    free(u->sites), free(u->tokw), free(u->region);
    memset(u, 0, sizeof *u);
}

void unmix_clear(unmix_t *u) {
    memset(u->tokw, 0, sizeof(float) * (size_t)u->rows * 2 * u->T);
    memset(u->region, 0, sizeof(float) * (size_t)u->rows * 2 * u->H * u->W);
}

int unmix_mark_phrase(unmix_t *u, int r, int s, const int *ids, const int *phrase, int n) {
    SD_CHECK(r >= 0 && r < u->rows && (s == 0 || s == 1), "row %d subject %d", r, s);
    if (n <= 0) return 0;
    for (int j = 0; j + n <= u->T; j++) {
        if (memcmp(ids + j, phrase, sizeof(int) * (size_t)n)) continue;
        float *w = u->tokw + ((size_t)r * 2 + s) * u->T;
        for (int k = 0; k < n; k++) w[j + k] = 1.0f;
        return n;
    }
    return 0;
}

void unmix_set_halves(unmix_t *u, int r, int vertical) {
    SD_CHECK(r >= 0 && r < u->rows, "row %d", r);
    const int H = u->H, W = u->W;
    float *a = u->region + (size_t)r * 2 * H * W, *b = a + (size_t)H * W;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            /* an odd size gives the middle line to the second subject, as the compositor does */
            const int first = vertical ? y < H / 2 : x < W / 2;
            a[(size_t)y * W + x] = (float)first;
            b[(size_t)y * W + x] = (float)!first;
        }
}

double unmix_loss(const unmix_t *u) {
    if (!u || !u->n_sites) return 0.0;
    double acc = 0;
    for (int i = 0; i < u->n_sites; i++) acc += u->sites[i].loss;
    return (double)u->weight * acc / u->n_sites;
}

void unmix_reset_leakage(unmix_t *u) {
    for (int i = 0; i < u->n_sites; i++) memset(u->sites[i].mass, 0, sizeof u->sites[i].mass), u->sites[i].queries = 0;
}

double unmix_leakage(const unmix_t *u, int s) {
    double other = 0, all = 0;
    for (int i = 0; i < u->n_sites; i++) other += u->sites[i].mass[s][0], all += u->sites[i].mass[s][1];
    return all > 0 ? other / all : -1.0;
}

double unmix_token_mass(const unmix_t *u, int s) {
    double all = 0, q = 0;
    for (int i = 0; i < u->n_sites; i++) all += u->sites[i].mass[s][1], q += u->sites[i].queries;
    return q > 0 ? all / q : -1.0;
}

/* ---- the hooks ---- */

/* Mo[b][s] at the layer's resolution (h x w = S): the OTHER subject's region, average-pooled. */
static void other_regions(float *mo, const unmix_t *u, int b, int level, int S) {
    const int f = 1 << level, h = u->H >> level, w = u->W >> level;
    SD_CHECK(h * w == S && h * f == u->H && w * f == u->W,
             "unmix: a %dx%d latent at level %d does not give %d positions", u->H, u->W, level, S);
    for (int s = 0; s < 2; s++) {
        const float *reg = u->region + ((size_t)b * 2 + (1 - s)) * u->H * u->W;
        float *o = mo + (size_t)s * S;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                double acc = 0;
                for (int dy = 0; dy < f; dy++)
                    for (int dx = 0; dx < f; dx++) acc += reg[(size_t)(y * f + dy) * u->W + x * f + dx];
                o[(size_t)y * w + x] = (float)(acc / (f * f));
            }
    }
}

static double sum(const float *x, size_t n) {
    double a = 0;
    for (size_t i = 0; i < n; i++) a += x[i];
    return a;
}

/* N_site's share of row b (0: the row adds nothing): MSE, heads x positions x tokens weighted by
 * the region shares; share, the number of (head, subject) ratios the row contributes. */
static double row_norm(const float *mo, const float *tw, int S, int T, int heads, unmix_mode_t mode) {
    if (mode == UNMIX_SHARE) {
        int n = 0;
        for (int s = 0; s < 2; s++) n += sum(mo + (size_t)s * S, S) > 0 && sum(tw + (size_t)s * T, T) > 0;
        return (double)heads * n;
    }
    return (double)heads * (sum(mo, S) * sum(tw, T) + sum(mo + S, S) * sum(tw + T, T));
}

void unmix_site_forward(unmix_site_t *st, const float *q, const float *k, const float *lse, int B, int S, int T,
                        int heads, int D, float scale) {
    unmix_t *u = st->u;
    SD_CHECK(T == u->T, "unmix: %d context tokens, specification for %d", T, u->T);
    const int rows = B < u->rows ? B : u->rows;
    double norm = 0, loss = 0, mass[2][2] = {{0, 0}, {0, 0}};
    scratch_mark_t mark0 = scratch_mark();
    float *mo_all = scratch_floats((size_t)(rows ? rows : 1) * 2 * S);
    for (int b = 0; b < rows; b++) {
        other_regions(mo_all + (size_t)b * 2 * S, u, b, st->level, S);
        norm += row_norm(mo_all + (size_t)b * 2 * S, u->tokw + (size_t)b * 2 * T, S, T, heads, u->mode);
    }
    st->norm = norm;
    if (norm == 0) {   /* no row names a subject (no composite in this batch): nothing to compute */
        st->loss = 0;
        scratch_release(mark0);
        return;
    }
    const int pairs = rows * heads;
#pragma omp parallel reduction(+ : loss) reduction(+ : mass[:2][:2])
    {
        scratch_mark_t mark = scratch_mark();
        float *P = scratch_floats((size_t)QBLK * T);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < pairs; bh++) {
            const int b = bh / heads, h = bh % heads;
            const float *tw = u->tokw + (size_t)b * 2 * T, *mo = mo_all + (size_t)b * 2 * S;
            if (sum(tw, 2 * (size_t)T) == 0) continue;
            double inside[2] = {0, 0}, all[2] = {0, 0};   /* this (row, head)'s token mass: other region, all */
            for (int p0 = 0; p0 < S; p0 += QBLK) {
                const int nq = S - p0 < QBLK ? S - p0 : QBLK;
                attention_probs(P, q, k, lse, b, h, p0, nq, S, T, heads, D, scale, 0);
                for (int r = 0; r < nq; r++) {
                    const float *pr = P + (size_t)r * T;
                    for (int s = 0; s < 2; s++) {
                        const float m = mo[(size_t)s * S + p0 + r];
                        const float *w = tw + (size_t)s * T;
                        double a1 = 0, a2 = 0;
                        for (int j = 0; j < T; j++) a1 += (double)w[j] * pr[j], a2 += (double)w[j] * pr[j] * pr[j];
                        if (u->mode == UNMIX_MSE) loss += m * a2;
                        inside[s] += m * a1, all[s] += a1;
                    }
                }
            }
            for (int s = 0; s < 2; s++) {
                mass[s][0] += inside[s], mass[s][1] += all[s];
                if (u->mode == UNMIX_SHARE && all[s] > 0 && sum(mo + (size_t)s * S, S) > 0) {
                    const double ratio = inside[s] / all[s];
                    loss += ratio * ratio;
                }
            }
        }
        scratch_release(mark);
    }
    scratch_release(mark0);
    st->loss = loss / norm;
    if (u->measure) {
        for (int s = 0; s < 2; s++) st->mass[s][0] += mass[s][0], st->mass[s][1] += mass[s][1];
        for (int b = 0; b < rows; b++)   /* rows naming the subjects (the spec marks both or neither) */
            if (sum(u->tokw + (size_t)b * 2 * T, 2 * (size_t)T) != 0) st->queries += (double)heads * S;
    }
}

void unmix_site_backward(float *dq, float *dk, const unmix_site_t *st, const float *q, const float *k,
                         const float *lse, int B, int S, int T, int heads, int D, float scale) {
    const unmix_t *u = st->u;
    if (st->norm <= 0 || u->weight == 0 || !u->n_sites) return;
    const int rows = B < u->rows ? B : u->rows, HD = heads * D, share = u->mode == UNMIX_SHARE;
    /* MSE: d L / d P = c * 2 G P; share: d L / d P[p, j] = c * sum_s 2 r_s W[s, j] (Mo[s, p] - r_s) / z_s
     * with r_s = a_s / z_s the (row, head)'s share (a_s its token mass in the other region, z_s all of
     * it; a first pass over the positions); c = gscale * weight / (n_sites * N_site) */
    const float c = (float)((double)u->gscale * u->weight / ((double)u->n_sites * st->norm));
    scratch_mark_t mark0 = scratch_mark();
    float *mo_all = scratch_floats((size_t)rows * 2 * S);
    for (int b = 0; b < rows; b++) other_regions(mo_all + (size_t)b * 2 * S, u, b, st->level, S);
    const int pairs = rows * heads;
#pragma omp parallel
    {
        scratch_mark_t mark = scratch_mark();
        float *P = scratch_floats((size_t)QBLK * T), *dS = scratch_floats((size_t)QBLK * T);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < pairs; bh++) {
            const int b = bh / heads, h = bh % heads;
            const float *tw = u->tokw + (size_t)b * 2 * T, *mo = mo_all + (size_t)b * 2 * S;
            if (sum(tw, 2 * (size_t)T) == 0) continue;
            const size_t koff = (size_t)b * T * HD + (size_t)h * D;
            float gs[2] = {0, 0}, rs[2] = {0, 0};   /* share: 2 r_s / z_s and r_s */
            if (share) {
                double inside[2] = {0, 0}, all[2] = {0, 0};
                for (int p0 = 0; p0 < S; p0 += QBLK) {
                    const int nq = S - p0 < QBLK ? S - p0 : QBLK;
                    attention_probs(P, q, k, lse, b, h, p0, nq, S, T, heads, D, scale, 0);
                    for (int r = 0; r < nq; r++)
                        for (int s = 0; s < 2; s++) {
                            double a1 = 0;
                            for (int j = 0; j < T; j++) a1 += (double)tw[(size_t)s * T + j] * P[(size_t)r * T + j];
                            inside[s] += mo[(size_t)s * S + p0 + r] * a1, all[s] += a1;
                        }
                }
                for (int s = 0; s < 2; s++)
                    if (all[s] > 0 && sum(mo + (size_t)s * S, S) > 0)
                        rs[s] = (float)(inside[s] / all[s]), gs[s] = (float)(2.0 * rs[s] / all[s]);
            }
            for (int p0 = 0; p0 < S; p0 += QBLK) {
                const int nq = S - p0 < QBLK ? S - p0 : QBLK;
                /* MSE: skip blocks that lie wholly inside both subjects' own regions */
                int any = share;
                for (int r = 0; r < nq && !any; r++) any = mo[p0 + r] != 0 || mo[(size_t)S + p0 + r] != 0;
                if (!any) continue;
                attention_probs(P, q, k, lse, b, h, p0, nq, S, T, heads, D, scale, 0);
                for (int r = 0; r < nq; r++) {
                    const float *pr = P + (size_t)r * T;
                    float *ds = dS + (size_t)r * T;
                    const float m0 = mo[p0 + r], m1 = mo[(size_t)S + p0 + r];
                    double dot = 0;
                    for (int j = 0; j < T; j++) {   /* dP, then dS = P (dP - sum_j P dP) */
                        ds[j] = share ? c * (gs[0] * (m0 - rs[0]) * tw[j] + gs[1] * (m1 - rs[1]) * tw[T + j])
                                      : c * 2.0f * (m0 * tw[j] + m1 * tw[T + j]) * pr[j];
                        dot += (double)ds[j] * pr[j];
                    }
                    for (int j = 0; j < T; j++) ds[j] = pr[j] * (ds[j] - (float)dot);
                }
                const size_t qoff = ((size_t)b * S + p0) * HD + (size_t)h * D;
                if (dq)  /* dQ_blk += scale dS K */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, D, T, scale, dS, T, k + koff, HD,
                                1.0f, dq + qoff, HD);
                if (dk)  /* dK += scale dS^T Q_blk */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, nq, scale, dS, T, q + qoff, HD,
                                1.0f, dk + koff, HD);
            }
        }
        scratch_release(mark);
    }
    scratch_release(mark0);
}
