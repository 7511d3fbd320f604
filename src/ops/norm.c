/* Normalisation operators: GroupNorm over [B, C, S] and LayerNorm over the last dim of
 * [N, C], forward and backward (see ops.h). Statistics and all reductions are formed in
 * double in a fixed order, so results are identical for any thread count. */
#include <math.h>
#include <stddef.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/ops.h"

/* Below this many elements the OpenMP fork/join costs more than the work. */
#define NORM_PAR_MIN 16384

/* Sums in double with NACC independent accumulators combined in a fixed order: the
 * compiler can vectorise them (a single double accumulator is latency-bound), and the
 * result depends only on n, never on threads or alignment. */
#define NACC 8

static double sum_f(const float *x, size_t n) {
    double acc[NACC] = {0};
    size_t i = 0;
    for (; i + NACC <= n; i += NACC)
        for (int j = 0; j < NACC; j++) acc[j] += x[i + j];
    for (; i < n; i++) acc[0] += x[i];
    double s = 0;
    for (int j = 0; j < NACC; j++) s += acc[j];
    return s;
}

static double sum_sqdev(const float *x, size_t n, double m) {
    double acc[NACC] = {0};
    size_t i = 0;
    for (; i + NACC <= n; i += NACC)
        for (int j = 0; j < NACC; j++) {
            const double d = (double)x[i + j] - m;
            acc[j] += d * d;
        }
    for (; i < n; i++) acc[0] += ((double)x[i] - m) * ((double)x[i] - m);
    double s = 0;
    for (int j = 0; j < NACC; j++) s += acc[j];
    return s;
}

/* *sd = sum g dy, *sdx = sum g dy (x - m) r over n values (g NULL: all ones). */
static void sum_dy_dyxhat(const float *dy, const float *x, const float *g, size_t n, double m,
                          double r, double *sd, double *sdx) {
    double a[NACC] = {0}, b[NACC] = {0};
    size_t i = 0;
    if (g) {
        for (; i + NACC <= n; i += NACC)
            for (int j = 0; j < NACC; j++) {
                const double d = (double)dy[i + j] * g[i + j];
                a[j] += d;
                b[j] += d * ((double)x[i + j] - m);
            }
    } else {
        for (; i + NACC <= n; i += NACC)
            for (int j = 0; j < NACC; j++) {
                a[j] += dy[i + j];
                b[j] += (double)dy[i + j] * ((double)x[i + j] - m);
            }
    }
    for (; i < n; i++) {
        const double d = (double)dy[i] * (g ? g[i] : 1.0f);
        a[0] += d;
        b[0] += d * ((double)x[i] - m);
    }
    double s = 0, t = 0;
    for (int j = 0; j < NACC; j++) {
        s += a[j];
        t += b[j];
    }
    *sd = s;
    *sdx = t * r;
}

/* Mean and rstd of n values, two-pass in double: a one-pass E[x^2]-E[x]^2 in float loses
 * most digits when |mean| >> std (e.g. latents with an offset). Biased variance, eps
 * inside the sqrt, as torch. */
static void moments(const float *x, size_t n, float eps, float *mean_out, float *rstd_out) {
    const double m = sum_f(x, n) / (double)n;
    const double v = sum_sqdev(x, n, m) / (double)n;
    *mean_out = (float)m;
    *rstd_out = (float)(1.0 / sqrt(v + (double)eps));
}

/* ---- GroupNorm ----
 * out/inp [B, C, S]; mean/rstd [B, G] (may be NULL when no backward follows). */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *gamma, const float *beta, int B, int C, int S, int G, float eps) {
    SD_CHECK(G > 0 && C % G == 0, "groupnorm: C=%d not divisible by G=%d", C, G);
    const int cpg = C / G;
    const size_t gsize = (size_t)cpg * S;   /* a group is contiguous: cpg channels of S */
    const long ntask = (long)B * G;
#pragma omp parallel for schedule(static) if ((size_t)B * C * S >= NORM_PAR_MIN)
    for (long t = 0; t < ntask; t++) {
        const int g = (int)(t % G);
        const float *x = inp + (size_t)t * gsize;
        float *y = out + (size_t)t * gsize;
        float m, r;
        moments(x, gsize, eps, &m, &r);
        if (mean) mean[t] = m;
        if (rstd) rstd[t] = r;
        for (int cc = 0; cc < cpg; cc++) {
            const int c = g * cpg + cc;
            const float ga = gamma ? gamma[c] : 1.0f;
            const float be = beta ? beta[c] : 0.0f;
            const float *xc = x + (size_t)cc * S;
            float *yc = y + (size_t)cc * S;
            for (int s = 0; s < S; s++) yc[s] = (xc[s] - m) * r * ga + be;
        }
    }
}

/* With xhat = (x - mean) * rstd and dxhat = dout * gamma, per group of M elements:
 *   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 *   dgamma[c] = sum_{b,s} dout * xhat,  dbeta[c] = sum_{b,s} dout.
 * Pass 1 forms the per-(b, c) sums sum_s dout and sum_s dout*xhat (in double, scratch),
 * which serve both the group means and the parameter gradients; the parameter gradients
 * then sum them over b in order (no float atomics). Pass 2 writes dinp. */
void groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                        const float *inp, const float *gamma, const float *mean, const float *rstd,
                        int B, int C, int S, int G) {
    if (!dinp && !dgamma && !dbeta) return;
    SD_CHECK(G > 0 && C % G == 0, "groupnorm: C=%d not divisible by G=%d", C, G);
    const int cpg = C / G;
    const size_t gsize = (size_t)cpg * S;
    const long ntask = (long)B * G;
    const int par = (size_t)B * C * S >= NORM_PAR_MIN;
    scratch_mark_t mark = scratch_mark();
    /* sums[(b*C + c)*2 + {0,1}] = {sum_s dout, sum_s dout*xhat}; doubles in float scratch
     * (scratch is 64-byte aligned, so the cast is safe). */
    double *sums = (double *)scratch_floats((size_t)B * C * 4);

#pragma omp parallel for schedule(static) if (par)
    for (long t = 0; t < ntask; t++) {
        const int b = (int)(t / G), g = (int)(t % G);
        const float m = mean[t], r = rstd[t];
        for (int cc = 0; cc < cpg; cc++) {
            const int c = g * cpg + cc;
            const size_t off = ((size_t)b * C + c) * S;
            const float *x = inp + off, *dy = dout + off;
            double sd, sdx;
            sum_dy_dyxhat(dy, x, NULL, (size_t)S, m, r, &sd, &sdx);
            sums[((size_t)b * C + c) * 2] = sd;
            sums[((size_t)b * C + c) * 2 + 1] = sdx;
        }
    }

    if (dgamma || dbeta) {
        for (int c = 0; c < C; c++) {
            double sd = 0, sdx = 0;
            for (int b = 0; b < B; b++) {
                sd += sums[((size_t)b * C + c) * 2];
                sdx += sums[((size_t)b * C + c) * 2 + 1];
            }
            if (dbeta) dbeta[c] += (float)sd;
            if (dgamma) dgamma[c] += (float)sdx;
        }
    }

    if (dinp) {
#pragma omp parallel for schedule(static) if (par)
        for (long t = 0; t < ntask; t++) {
            const int b = (int)(t / G), g = (int)(t % G);
            const float m = mean[t], r = rstd[t];
            double mdxh = 0, mdxhx = 0;   /* sums of dxhat and dxhat*xhat over the group */
            for (int cc = 0; cc < cpg; cc++) {
                const int c = g * cpg + cc;
                const double ga = gamma ? gamma[c] : 1.0;
                mdxh += ga * sums[((size_t)b * C + c) * 2];
                mdxhx += ga * sums[((size_t)b * C + c) * 2 + 1];
            }
            mdxh /= (double)gsize;
            mdxhx /= (double)gsize;
            const float a1 = (float)mdxh, a2 = (float)mdxhx;
            for (int cc = 0; cc < cpg; cc++) {
                const int c = g * cpg + cc;
                const float ga = gamma ? gamma[c] : 1.0f;
                const size_t off = ((size_t)b * C + c) * S;
                const float *x = inp + off, *dy = dout + off;
                float *dx = dinp + off;
                for (int s = 0; s < S; s++) {
                    const float xh = (x[s] - m) * r;
                    dx[s] += r * (dy[s] * ga - a1 - xh * a2);
                }
            }
        }
    }
    scratch_release(mark);
}

/* ---- LayerNorm ----
 * out/inp [N, C]; mean/rstd [N] (may be NULL when no backward follows). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *gamma, const float *beta, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= NORM_PAR_MIN)
    for (long n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float m, r;
        moments(x, (size_t)C, eps, &m, &r);
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
        for (int c = 0; c < C; c++) {
            const float ga = gamma ? gamma[c] : 1.0f;
            const float be = beta ? beta[c] : 0.0f;
            y[c] = (x[c] - m) * r * ga + be;
        }
    }
}

/* Rows per task of the dgamma/dbeta reduction: each task sums a fixed slab of rows into
 * its own partial (double), and the partials are then added in slab order, so the sum
 * order never depends on the thread count. */
#define LN_ROW_BLOCK 256

/* Same formulas as GroupNorm with one "group" per row and the mean over C. */
void layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                        const float *inp, const float *gamma, const float *mean, const float *rstd,
                        int N, int C) {
    const int par = (size_t)N * C >= NORM_PAR_MIN;
    if (dinp) {
#pragma omp parallel for schedule(static) if (par)
        for (long n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            const float m = mean[n], r = rstd[n];
            double sdxh, sdxhx;   /* sums of dxhat = dout * gamma and of dxhat * xhat */
            sum_dy_dyxhat(dy, x, gamma, (size_t)C, m, r, &sdxh, &sdxhx);
            const float a1 = (float)(sdxh / C), a2 = (float)(sdxhx / C);
            for (int c = 0; c < C; c++) {
                const float ga = gamma ? gamma[c] : 1.0f;
                const float xh = (x[c] - m) * r;
                dx[c] += r * (dy[c] * ga - a1 - xh * a2);
            }
        }
    }
    if (dgamma || dbeta) {
        const int nblk = (N + LN_ROW_BLOCK - 1) / LN_ROW_BLOCK;
        scratch_mark_t mark = scratch_mark();
        /* part[blk][0..C) = sum dout, part[blk][C..2C) = sum dout*xhat (64-byte aligned). */
        double *part = (double *)scratch_floats((size_t)nblk * C * 4);
#pragma omp parallel for schedule(static) if (par && nblk > 1)
        for (int blk = 0; blk < nblk; blk++) {
            double *sd = part + (size_t)blk * 2 * C, *sdx = sd + C;
            for (int c = 0; c < C; c++) sd[c] = sdx[c] = 0;
            const int n1 = (blk + 1) * LN_ROW_BLOCK < N ? (blk + 1) * LN_ROW_BLOCK : N;
            for (int n = blk * LN_ROW_BLOCK; n < n1; n++) {
                const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
                const float m = mean[n], r = rstd[n];
                for (int c = 0; c < C; c++) {
                    sd[c] += dy[c];
                    sdx[c] += dy[c] * (((double)x[c] - m) * r);
                }
            }
        }
#pragma omp parallel for schedule(static) if (par && C >= 256)
        for (int c = 0; c < C; c++) {
            double sd = 0, sdx = 0;
            for (int blk = 0; blk < nblk; blk++) {
                sd += part[(size_t)blk * 2 * C + c];
                sdx += part[(size_t)blk * 2 * C + C + c];
            }
            if (dbeta) dbeta[c] += (float)sd;
            if (dgamma) dgamma[c] += (float)sdx;
        }
        scratch_release(mark);
    }
}
