/* Micro-benchmark of the core operators: GFLOP/s of conv3x3, linear, attention and the
 * spectral conv (factored and baked) next to the OpenBLAS sgemm rate measured in the same
 * run, plus the extra memory attention needs. Medians of repeated runs (this machine is
 * noisy). The operators run in the compute dtype of SVDIFF_COMPUTE (fp32 / bf16); the bf16 GEMM's
 * 2048^3 rate is printed next to sgemm's when the CPU has a bf16 kernel. --gemm-only: just the
 * two 2048^3 rates, as RESULT lines (bench/run_all.sh). --attention: attention alone on the SD
 * shapes, the fp32 path against the bf16 one (attention_bf16.c) in the same process, alternating
 * (the machine is shared), medians. Not part of the tests.
 * Usage: bench_micro [--reps N] [--threads N] [--gemm-only | --attention] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "weights/spectral.h"
#include "lib/benchutil.h"

static int g_reps = 5;

/* Median wall time of fn(ctx) over g_reps runs after one warm-up run. */
static double median_time(void (*fn)(void *), void *ctx) {
    double t[64];
    fn(ctx);
    for (int r = 0; r < g_reps; r++) {
        double t0 = bench_now();
        fn(ctx);
        t[r] = bench_now() - t0;
    }
    qsort(t, g_reps, sizeof *t, bench_cmp_double);
    return t[g_reps / 2];
}

static float *randn(size_t n) {
    float *x = sd_xmalloc(n * sizeof(float));
    uint64_t s = 0x9E3779B97F4A7C15ull ^ n;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((s >> 40) * (1.0 / 16777216.0)) - 0.5f;
    }
    return x;
}

static long vm_hwm_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

static double g_sgemm_rate;

static void row(const char *name, double flops, double secs) {
    double rate = flops / secs / 1e9;
    printf("| %-44s | %9.2f | %8.1f | %5.0f%% |\n", name, 1e3 * secs, rate, 100.0 * rate / g_sgemm_rate);
}

/* ---- conv ---- */
typedef struct { conv2d_shape_t s; float *x, *w, *b, *y, *dy, *dx, *dw, *db; } conv_ctx;
static void run_conv_fwd(void *p) { conv_ctx *c = p; conv2d_forward(c->y, c->x, c->w, c->b, &c->s); }
static void run_conv_bwd(void *p) { conv_ctx *c = p; conv2d_backward(c->dx, c->dw, c->db, c->dy, c->x, c->w, &c->s); }

/* ---- spectral conv ---- */
typedef struct { conv_ctx *c; spectral_t sp; float *Weff, *ddelta; } spconv_ctx;
static void run_spconv_fwd_factored(void *p) { spconv_ctx *s = p; spectral_conv2d_forward(s->c->y, s->c->x, s->c->w, &s->sp, NULL, s->c->b, &s->c->s); }
static void run_spconv_fwd_baked(void *p) {
    spconv_ctx *s = p;
    spectral_bake(s->Weff, s->c->w, &s->sp);
    spectral_conv2d_forward(s->c->y, s->c->x, s->c->w, &s->sp, s->Weff, s->c->b, &s->c->s);
}
static void run_spconv_bwd(void *p) {
    spconv_ctx *s = p;
    spectral_conv2d_backward(s->c->dx, s->ddelta, NULL, s->c->dy, s->c->x, s->c->w, &s->sp, s->Weff, &s->c->s);
}

/* ---- linear ---- */
typedef struct { int N, IC, OC; float *x, *w, *b, *y, *dy, *dx, *dw, *db; } lin_ctx;
static void run_lin_fwd(void *p) { lin_ctx *l = p; linear_forward(l->y, l->x, l->w, l->b, l->N, l->IC, l->OC); }
static void run_lin_bwd(void *p) { lin_ctx *l = p; linear_backward(l->dx, l->dw, l->db, l->dy, l->x, l->w, l->N, l->IC, l->OC); }

/* ---- attention ---- */
typedef struct { int B, T, H, D; float *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv; } att_ctx;
static void run_att_fwd(void *p) {
    att_ctx *a = p;
    attention_forward(a->o, a->lse, a->q, a->k, a->v, a->B, a->T, a->T, a->H, a->D, 1.0f / sqrtf((float)a->D), 0);
}
static void run_att_bwd(void *p) {
    att_ctx *a = p;
    attention_backward(a->dq, a->dk, a->dv, a->dout, a->q, a->k, a->v, a->o, a->lse, a->B, a->T, a->T, a->H, a->D,
                       1.0f / sqrtf((float)a->D), 0);
}

/* One attention shape: forward at batch Bf (inference: CFG doubles the batch) and forward +
 * backward at batch 1 (training), each timed in fp32 and bf16 mode alternately g_reps times. */
static void bench_attention_shape(const char *name, int Bf, int Tq, int Tk, int H, int D, int causal) {
    const int nmode = strcmp(sd_bf16_kernel(), "none") ? 2 : 1;
    const size_t nq = (size_t)Bf * Tq * H * D, nk = (size_t)Bf * Tk * H * D;
    float *q = randn(nq), *k = randn(nk), *v = randn(nk), *o = randn(nq), *dout = randn(nq);
    float *lse = sd_xcalloc((size_t)Bf * H * Tq, 4);
    float *dq = sd_xcalloc(nq, 4), *dk = sd_xcalloc(nk, 4), *dv = sd_xcalloc(nk, 4);
    const float scale = 1.0f / sqrtf((float)D);
    double tf[2][64], tt[2][64];
    for (int r = -1; r < g_reps; r++)   /* r = -1: warm-up */
        for (int m = 0; m < nmode; m++) {
            sd_set_compute_dtype(m ? SD_COMPUTE_BF16 : SD_COMPUTE_FP32);
            double t0 = bench_now();
            attention_forward(o, lse, q, k, v, Bf, Tq, Tk, H, D, scale, causal);
            double t1 = bench_now();
            attention_forward(o, lse, q, k, v, 1, Tq, Tk, H, D, scale, causal);
            attention_backward(dq, dk, dv, dout, q, k, v, o, lse, 1, Tq, Tk, H, D, scale, causal);
            double t2 = bench_now();
            if (r >= 0) tf[m][r] = t1 - t0, tt[m][r] = t2 - t1;
        }
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    double med[2][2] = {{0}};
    for (int m = 0; m < nmode; m++) {
        qsort(tf[m], g_reps, sizeof(double), bench_cmp_double);
        qsort(tt[m], g_reps, sizeof(double), bench_cmp_double);
        med[m][0] = tf[m][g_reps / 2], med[m][1] = tt[m][g_reps / 2];
    }
    printf("| %-40s | %8.2f | %8.2f | %5.2f | %8.2f | %8.2f | %5.2f |\n", name, 1e3 * med[0][0], 1e3 * med[1][0],
           nmode > 1 ? med[1][0] / med[0][0] : 0.0, 1e3 * med[0][1], 1e3 * med[1][1],
           nmode > 1 ? med[1][1] / med[0][1] : 0.0);
    fflush(stdout);
    free(q), free(k), free(v), free(o), free(dout), free(lse), free(dq), free(dk), free(dv);
}

static void bench_attention(void) {
    printf("attention, fp32 path vs bf16 path (ms, medians of %d alternating runs; ratio = bf16 / fp32)\n\n", g_reps);
    printf("| %-40s | %8s | %8s | %5s | %8s | %8s | %5s |\n", "shape (B fwd 2, train B 1)", "fwd fp32", "fwd bf16",
           "ratio", "trn fp32", "trn bf16", "ratio");
    printf("|------------------------------------------|----------|----------|-------|----------|----------|-------|\n");
    bench_attention_shape("SD1.5 L0 self T 4096, 8 x 40", 2, 4096, 4096, 8, 40, 0);
    bench_attention_shape("SD1.5 L0 cross T 4096 x 77, 8 x 40", 2, 4096, 77, 8, 40, 0);
    bench_attention_shape("SD1.5 L1 self T 1024, 8 x 80", 2, 1024, 1024, 8, 80, 0);
    bench_attention_shape("SD1.5 L2 self T 256, 8 x 160", 2, 256, 256, 8, 160, 0);
    bench_attention_shape("SDXL self T 1024, 10 x 64", 2, 1024, 1024, 10, 64, 0);
    bench_attention_shape("VAE mid T 4096, 1 x 512", 2, 4096, 4096, 1, 512, 0);
    bench_attention_shape("CLIP causal T 77, 12 x 64", 2, 77, 77, 12, 64, 1);
}

static void bench_conv(int hw) {
    conv_ctx c = {.s = {.B = 1, .IC = 320, .H = hw, .W = hw, .OC = 320, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}}};
    size_t nx = (size_t)320 * hw * hw, nw = (size_t)320 * 320 * 9;
    c.x = randn(nx), c.w = randn(nw), c.b = randn(320), c.y = randn(nx), c.dy = randn(nx);
    c.dx = sd_xcalloc(nx, 4), c.dw = sd_xcalloc(nw, 4), c.db = sd_xcalloc(320, 4);
    double flops = 2.0 * nw * hw * hw;
    char name[96];
    snprintf(name, sizeof name, "conv3x3 320->320 %dx%d forward", hw, hw);
    row(name, flops, median_time(run_conv_fwd, &c));
    snprintf(name, sizeof name, "conv3x3 320->320 %dx%d backward (dx, dW, db)", hw, hw);
    row(name, 2 * flops, median_time(run_conv_bwd, &c));

    spconv_ctx s = {.c = &c};
    if (spectral_init(&s.sp, c.w, 320, 2880)) { fprintf(stderr, "%s\n", sd_last_error()); exit(1); }
    for (int i = 0; i < 320; i++) s.sp.delta[i] = 0.01f * (i % 7);
    s.Weff = sd_xmalloc(nw * 4), s.ddelta = sd_xcalloc(320, 4);
    const double r = 320, K = 2880, P = (double)hw * hw;
    snprintf(name, sizeof name, "spectral conv %dx%d fwd, factored (+W)", hw, hw);
    row(name, flops + 2 * P * r * (K + 320), median_time(run_spconv_fwd_factored, &s));
    snprintf(name, sizeof name, "spectral conv %dx%d fwd, bake + dense", hw, hw);
    row(name, flops + 2 * 320 * r * K, median_time(run_spconv_fwd_baked, &s));
    snprintf(name, sizeof name, "spectral conv %dx%d bwd (dx, d delta), baked", hw, hw);
    row(name, flops + 2 * P * r * (K + 320), median_time(run_spconv_bwd, &s));
    spectral_free(&s.sp);
    free(s.Weff), free(s.ddelta);
    free(c.x), free(c.w), free(c.b), free(c.y), free(c.dy), free(c.dx), free(c.dw), free(c.db);
}

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    int gemm_only = 0, attention_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) sd_set_threads(atoi(argv[++i]));
        else if (!strcmp(argv[i], "--gemm-only")) gemm_only = 1;
        else if (!strcmp(argv[i], "--attention")) attention_only = 1;
        else { fprintf(stderr, "usage: %s [--reps N] [--threads N] [--gemm-only | --attention]\n", argv[0]); return 2; }
    }
    if (g_reps < 1 || g_reps > 64) g_reps = 5;
    printf("svdiff micro-benchmark: OpenBLAS kernel %s, %d threads, median of %d runs, compute %s (bf16 kernel %s)\n\n",
           openblas_get_corename(), openblas_get_num_threads(), g_reps, sd_compute_dtype_name(sd_compute_dtype()),
           sd_bf16_kernel());
    if (attention_only) {
        bench_attention();
        scratch_free_all();
        return 0;
    }
    printf("| %-44s | %9s | %8s | %6s |\n", "operation", "ms", "GFLOP/s", "sgemm");
    printf("|%s|%s|%s|%s|\n", "----------------------------------------------", "-----------", "----------", "--------");

    const double gemm_flop = 2.0 * 2048 * 2048 * 2048;
    g_sgemm_rate = bench_sgemm_gflops(g_reps);
    row("sgemm 2048^3 (the ceiling)", gemm_flop, gemm_flop / g_sgemm_rate / 1e9);
    const double bf16_rate = bench_bf16_gflops(g_reps);   /* 0: no bf16 kernel */
    if (bf16_rate > 0) row("bf16 GEMM 2048^3 (fp32 accumulation)", gemm_flop, gemm_flop / bf16_rate / 1e9);
    if (gemm_only) {
        printf("RESULT side=svdiff case=gemm2048 sgemm_gflops=%.1f bf16_gflops=%.1f bf16_kernel=%s\n", g_sgemm_rate,
               bf16_rate, sd_bf16_kernel());
        return 0;
    }

    bench_conv(32);
    bench_conv(64);

    lin_ctx l = {.N = 4096, .IC = 320, .OC = 320};
    l.x = randn(4096 * 320), l.w = randn(320 * 320), l.b = randn(320), l.y = randn(4096 * 320), l.dy = randn(4096 * 320);
    l.dx = sd_xcalloc(4096 * 320, 4), l.dw = sd_xcalloc(320 * 320, 4), l.db = sd_xcalloc(320, 4);
    double lf = 2.0 * 4096 * 320 * 320;
    row("linear 4096x320 -> 320 forward", lf, median_time(run_lin_fwd, &l));
    row("linear 4096x320 -> 320 backward (dx, dW, db)", 2 * lf, median_time(run_lin_bwd, &l));
    free(l.x), free(l.w), free(l.b), free(l.y), free(l.dy), free(l.dx), free(l.dw), free(l.db);

    att_ctx a = {.B = 1, .T = 4096, .H = 8, .D = 40};
    size_t na = (size_t)a.B * a.T * a.H * a.D;
    a.q = randn(na), a.k = randn(na), a.v = randn(na), a.o = randn(na), a.dout = randn(na);
    a.lse = sd_xcalloc((size_t)a.B * a.H * a.T, 4);
    a.dq = sd_xcalloc(na, 4), a.dk = sd_xcalloc(na, 4), a.dv = sd_xcalloc(na, 4);
    double af = 4.0 * a.B * a.H * (double)a.T * a.T * a.D;
    long hwm0 = vm_hwm_kb();
    scratch_reset_peak();
    row("attention 4096 tok, 8 heads x 40, forward", af, median_time(run_att_fwd, &a));
    /* backward: recompute QK^T, dP = dO V^T, dQ, dK, dV: 5 matmuls of the forward's size/2 */
    row("attention 4096 tok, 8 heads x 40, backward", 2.5 * af, median_time(run_att_bwd, &a));
    long hwm1 = vm_hwm_kb();
    printf("\nattention 4096 tokens x 8 heads x 40: extra memory (peak RSS growth over its inputs/outputs) "
           "%.1f MB; calling thread's scratch peak %.2f MB; the full score matrix would be %.0f MB\n",
           (hwm1 - hwm0) / 1024.0, scratch_peak_bytes() / 1048576.0, 8.0 * 4096 * 4096 * 4 / 1048576.0);
    printf("peak RSS of the whole benchmark: %.0f MB\n", vm_hwm_kb() / 1024.0);
    free(a.q), free(a.k), free(a.v), free(a.o), free(a.dout), free(a.lse), free(a.dq), free(a.dk), free(a.dv);
    scratch_free_all();
    return 0;
}
