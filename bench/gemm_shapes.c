/* The bf16 GEMM at the shapes SD 1.5 really runs at 64x64 latents (UNet forward at batch 2,
 * SVDiff training step at batch 1), each as GFLOP/s and as a share of the 2048^3 rate measured
 * in the same run (wall time, and GFLOP per CPU second of all threads, which the other jobs of a
 * shared machine disturb less). The shapes are the largest groups of a trace of both workloads by time:
 * convolutions (A = kernel or a spectral factor Vt, B = the image's columns packed straight
 * from the image), linears (fp32 x fp32), spectral products (one operand a factor stored in
 * bf16), and the [OC, IC] x [IC, tiles] products of a Winograd conv. Only the public entry
 * points of ops/gemm.h are called, so the same source built at two commits compares them.
 * Not part of the tests.
 * Usage: bench_gemm_shapes [--reps N (default 5)] [--threads N] [--filter SUBSTRING] [--dump DIR]
 * (--dump: also writes each product's C to DIR/<index>.f32, to compare the bytes of two builds) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "base/error.h"
#include "base/runtime.h"
#include "ops/gemm.h"
#include "lib/benchutil.h"

typedef enum { B_MAT, B_IMG } bkind_t;

typedef struct {
    const char *what;        /* where the shape comes from */
    char ta, tb;             /* 'N' / 'T' (matrix products) */
    int M, N, K;
    int ah, bh;              /* operand stored in bf16 */
    bkind_t bk;              /* B_IMG: B = im2col of an image IC x H x H, 3x3 kernel, padding 1 */
    int IC, H, stride;
} shape_t;

static const shape_t g_shapes[] = {
    /* convolutions: M = OC, N = OH*OW, K = IC*9 */
    {"conv 320->320 64x64 (fwd)", 'N', 'N', 320, 4096, 2880, 0, 0, B_IMG, 320, 64, 1},
    {"conv 640->640 32x32 (fwd)", 'N', 'N', 640, 1024, 5760, 0, 0, B_IMG, 640, 32, 1},
    {"conv 1280->1280 16x16 (fwd)", 'N', 'N', 1280, 256, 11520, 0, 0, B_IMG, 1280, 16, 1},
    {"conv 1280->1280 8x8 (fwd)", 'N', 'N', 1280, 64, 11520, 0, 0, B_IMG, 1280, 8, 1},
    {"conv 320 64x64 stride 2 (fwd)", 'N', 'N', 320, 1024, 2880, 0, 0, B_IMG, 320, 64, 2},
    {"conv 640 32x32 stride 2 (fwd)", 'N', 'N', 640, 256, 5760, 0, 0, B_IMG, 640, 32, 2},
    {"spectral conv z = Vt col, 640 32x32", 'N', 'N', 640, 1024, 5760, 1, 0, B_IMG, 640, 32, 1},
    {"spectral conv z = Vt col, 1280 16x16", 'N', 'N', 1280, 256, 11520, 1, 0, B_IMG, 1280, 16, 1},
    {"spectral conv z = Vt col, 1280 8x8", 'N', 'N', 1280, 64, 11520, 1, 0, B_IMG, 1280, 8, 1},
    /* linears, fp32 operands */
    {"linear 8192x320 -> 320 (fwd, batch 2)", 'N', 'T', 8192, 320, 320, 0, 0, B_MAT, 0, 0, 0},
    {"linear 2048x320 -> 2560 (GEGLU, batch 2)", 'N', 'T', 2048, 2560, 320, 0, 0, B_MAT, 0, 0, 0},
    {"linear 512x1280 -> 1280 (batch 2)", 'N', 'T', 512, 1280, 1280, 0, 0, B_MAT, 0, 0, 0},
    {"linear 154x768 -> 1280 (text K/V)", 'N', 'T', 154, 1280, 768, 0, 0, B_MAT, 0, 0, 0},
    {"linear bwd dx 4096x320 <- 2560", 'N', 'N', 4096, 320, 2560, 0, 0, B_MAT, 0, 0, 0},
    {"linear bwd dx 1024x640 <- 640", 'N', 'N', 1024, 640, 640, 0, 0, B_MAT, 0, 0, 0},
    /* spectral linears and convs: one operand a factor stored in bf16 */
    {"spectral out = z U^T 256x1280 r1280", 'N', 'T', 256, 1280, 1280, 0, 1, B_MAT, 0, 0, 0},
    {"spectral g = dout U 256x1280 r1280", 'N', 'N', 256, 1280, 1280, 0, 1, B_MAT, 0, 0, 0},
    {"spectral 4096x320 r320 (NN)", 'N', 'N', 4096, 320, 320, 0, 1, B_MAT, 0, 0, 0},
    {"spectral 1024x640 r640 (NT)", 'N', 'T', 1024, 640, 640, 0, 1, B_MAT, 0, 0, 0},
    {"spectral 256x1280 <- 10240 (NN)", 'N', 'N', 256, 1280, 10240, 0, 1, B_MAT, 0, 0, 0},
    {"spectral bwd dcol = Vt^T g, 11520x256 r1280", 'T', 'N', 11520, 256, 1280, 1, 0, B_MAT, 0, 0, 0},
    {"spectral bwd dcol = Vt^T g, 11520x64 r1280", 'T', 'N', 11520, 64, 1280, 1, 0, B_MAT, 0, 0, 0},
    {"spectral bwd dcol = Vt^T g, 5760x1024 r640", 'T', 'N', 5760, 1024, 640, 1, 0, B_MAT, 0, 0, 0},
    {"time embedding 1x1280 r1280", 'N', 'T', 1, 1280, 1280, 0, 1, B_MAT, 0, 0, 0},
    /* Winograd conv: [OC, IC] x [IC, tiles], 16 per tile block */
    {"winograd 320x320 x 256 tiles", 'N', 'N', 320, 256, 320, 0, 0, B_MAT, 0, 0, 0},
    {"winograd 320x320 x 1024 tiles", 'N', 'N', 320, 1024, 320, 0, 0, B_MAT, 0, 0, 0},
    {"winograd 640x640 x 256 tiles", 'N', 'N', 640, 256, 640, 0, 0, B_MAT, 0, 0, 0},
    {"winograd 1280x1280 x 64 tiles", 'N', 'N', 1280, 64, 1280, 0, 0, B_MAT, 0, 0, 0},
    {"winograd bf16 A 1280x1280 x 64 tiles", 'N', 'N', 1280, 64, 1280, 1, 0, B_MAT, 0, 0, 0},
};

static int g_reps = 5;
static const char *g_dump;   /* --dump DIR: the C of each shape (alpha 0.7, beta 0.5) to DIR/<index>.f32 */

static float *randn(size_t n, uint64_t seed) {
    float *x = sd_xmalloc(n * sizeof(float));
    uint64_t s = 0x9E3779B97F4A7C15ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((s >> 40) * (1.0 / 16777216.0)) - 0.5f;
    }
    return x;
}

static uint16_t *to_bf16(const float *x, size_t n) {
    uint16_t *h = sd_xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) h[i] = sd_f32_to_bf16(x[i]);
    return h;
}

typedef struct {
    const shape_t *s;
    float *A, *B, *C;
    uint16_t *Ah, *Bh;
    conv2d_shape_t cs;
} run_t;

static float g_alpha = 1.0f, g_beta = 0.0f;

static void run_once(const run_t *r) {
    const shape_t *s = r->s;
    const CBLAS_TRANSPOSE ta = s->ta == 'T' ? CblasTrans : CblasNoTrans, tb = s->tb == 'T' ? CblasTrans : CblasNoTrans;
    const int lda = s->ta == 'T' ? s->M : s->K, ldb = s->tb == 'T' ? s->K : s->N;
    if (s->bk == B_IMG) {
        if (s->ah) gemm_bf16h_im2col(s->M, g_alpha, r->Ah, s->K, r->B, &r->cs, g_beta, r->C);
        else gemm_bf16_im2col(s->M, g_alpha, r->A, s->K, r->B, &r->cs, g_beta, r->C);
    } else if (s->ah || s->bh) {
        gemm_bf16h(ta, tb, s->M, s->N, s->K, g_alpha, s->ah ? NULL : r->A, s->ah ? r->Ah : NULL, lda,
                   s->bh ? NULL : r->B, s->bh ? r->Bh : NULL, ldb, g_beta, r->C, s->N);
    } else {
        gemm_bf16(ta, tb, s->M, s->N, s->K, g_alpha, r->A, lda, r->B, ldb, g_beta, r->C, s->N);
    }
}

/* CPU seconds of all the process's threads (threads waiting for work sleep: OMP_WAIT_POLICY is
 * passive, see base/runtime.h). On a machine shared with other jobs wall time also counts the
 * time slices others take; CPU time does not. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* Median wall and CPU seconds of one product (*cpu); each timed rep runs it enough times to
 * last >= 20 ms. */
static double time_shape(const run_t *r, double *cpu) {
    run_once(r);
    double t0 = sd_now_s();
    run_once(r);
    const double one = sd_now_s() - t0;
    const int inner = one >= 0.02 ? 1 : (int)(0.02 / (one > 1e-6 ? one : 1e-6)) + 1;
    double t[64], c[64];
    for (int k = 0; k < g_reps; k++) {
        const double c0 = cpu_s();
        t0 = sd_now_s();
        for (int i = 0; i < inner; i++) run_once(r);
        t[k] = (sd_now_s() - t0) / inner;
        c[k] = (cpu_s() - c0) / inner;
    }
    qsort(t, g_reps, sizeof *t, bench_cmp_double);
    qsort(c, g_reps, sizeof *c, bench_cmp_double);
    *cpu = c[g_reps / 2];
    return t[g_reps / 2];
}

static double measure(const shape_t *s, double *cpu, int index) {
    run_t r = {.s = s};
    const size_t na = (size_t)s->M * s->K;
    size_t nb = (size_t)s->K * s->N;
    if (s->bk == B_IMG) {
        r.cs = (conv2d_shape_t){.B = 1, .IC = s->IC, .H = s->H, .W = s->H, .OC = s->M, .KH = 3, .KW = 3,
                                .stride = s->stride, .pad = {1, 1, 1, 1}};
        SD_CHECK(r.cs.IC * 9 == s->K && conv2d_out_h(&r.cs) * conv2d_out_w(&r.cs) == s->N, "bad conv shape %s", s->what);
        nb = (size_t)s->IC * s->H * s->H;
    }
    r.A = randn(na, 1), r.B = randn(nb, 2), r.C = randn((size_t)s->M * s->N, 3);
    if (s->ah) r.Ah = to_bf16(r.A, na);
    if (s->bh) r.Bh = to_bf16(r.B, nb);
    if (g_dump && index >= 0) {   /* the bytes, to compare two builds */
        char path[4096];
        snprintf(path, sizeof path, "%s/%d.f32", g_dump, index);
        g_alpha = 0.7f, g_beta = 0.5f;
        run_once(&r);
        g_alpha = 1.0f, g_beta = 0.0f;
        FILE *f = fopen(path, "wb");
        SD_CHECK(f && fwrite(r.C, sizeof(float), (size_t)s->M * s->N, f) == (size_t)s->M * s->N && !fclose(f),
                 "bench_gemm_shapes: cannot write %s", path);
    }
    const double t = time_shape(&r, cpu);
    free(r.A), free(r.B), free(r.C), free(r.Ah), free(r.Bh);
    return t;
}

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) sd_set_threads(atoi(argv[++i]));
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc) g_dump = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--reps N] [--threads N] [--filter SUBSTRING] [--dump DIR]\n", argv[0]);
            return 2;
        }
    }
    if (g_reps < 1 || g_reps > 64) g_reps = 5;
    if (!strcmp(sd_bf16_kernel(), "none")) {
        fprintf(stderr, "bench_gemm_shapes: this CPU has no bf16 kernel\n");
        return 1;
    }
    const shape_t sq = {"square 2048^3", 'N', 'N', 2048, 2048, 2048, 0, 0, B_MAT, 0, 0, 0};
    double cpu;
    const double peak = 2.0 * 2048 * 2048 * 2048 / measure(&sq, &cpu, -1) / 1e9, peak_cpu = 2.0 * 2048 * 2048 * 2048 / cpu / 1e9;
    printf("bf16 GEMM (kernel %s), %d threads, median of %d reps; 2048^3: %.1f GFLOP/s, %.1f GFLOP per CPU second\n\n",
           sd_bf16_kernel(), omp_get_max_threads(), g_reps, peak, peak_cpu);
    printf("| %-44s | %2s | %5s | %5s | %5s | %4s | %8s | %7s | %6s | %7s | %6s |\n", "shape", "tr", "M", "N", "K", "bf16",
           "ms", "GFLOP/s", "2048^3", "per CPU", "2048^3");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof g_shapes / sizeof *g_shapes; i++) {
        const shape_t *s = &g_shapes[i];
        if (filter && !strstr(s->what, filter)) continue;
        const double t = measure(s, &cpu, (int)i), rate = 2.0 * s->M * s->N * s->K / t / 1e9, rcpu = 2.0 * s->M * s->N * s->K / cpu / 1e9;
        printf("| %-44s | %c%c | %5d | %5d | %5d | %4s | %8.3f | %7.1f | %5.0f%% | %7.1f | %5.0f%% |\n", s->what, s->ta,
               s->tb, s->M, s->N, s->K, s->ah ? "A" : s->bh ? "B" : "-", 1e3 * t, rate, 100.0 * rate / peak, rcpu,
               100.0 * rcpu / peak_cpu);
        fflush(stdout);
    }
    return 0;
}
