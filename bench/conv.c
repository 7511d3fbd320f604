/* 3x3 convolutions of SD 1.5 (UNet at 64x64 latents, VAE decoder at 512 px): im2col against
 * Winograd F(2x2, 3x3), forward and input gradient, in the compute dtype of SVDIFF_COMPUTE
 * (fp32 / bf16). The two paths run alternately, --reps times after a warm-up (this machine is
 * shared and noisy); medians in ms, the speed-up, and the max relative error of each path's
 * output against the fp32 im2col one (max |a - b| / max |b|). Not part of the tests.
 * Usage: bench_conv [--reps N] [--batch N] [--only unet|vae] [--shape IC,OC,HW] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "lib/benchutil.h"

static float *randn(size_t n, uint64_t seed, float scale) {
    float *x = sd_xmalloc(n * sizeof(float));
    uint64_t s = 0x9E3779B97F4A7C15ull ^ (n + seed);
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = scale * ((float)((s >> 40) * (1.0 / 16777216.0)) - 0.5f);
    }
    return x;
}

static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / fmax(den, 1e-30);
}

typedef struct { const char *model; int IC, OC, HW; } shape_t;
static const shape_t g_shapes[] = {
    {"unet", 4, 320, 64},     {"unet", 320, 320, 64},   {"unet", 320, 640, 32},  {"unet", 640, 640, 32},
    {"unet", 640, 1280, 16},  {"unet", 1280, 1280, 16}, {"unet", 1280, 1280, 8}, {"unet", 2560, 1280, 8},
    {"unet", 2560, 1280, 16}, {"unet", 1920, 1280, 16}, {"unet", 1920, 640, 32}, {"unet", 1280, 640, 32},
    {"unet", 960, 640, 32},   {"unet", 960, 320, 64},   {"unet", 640, 320, 64},  {"unet", 320, 4, 64},
    {"vae", 4, 512, 64},      {"vae", 512, 512, 64},    {"vae", 512, 512, 128},  {"vae", 512, 512, 256},
    {"vae", 512, 256, 256},   {"vae", 256, 256, 256},   {"vae", 256, 256, 512},  {"vae", 256, 128, 512},
    {"vae", 128, 128, 512},   {"vae", 128, 3, 512},
};

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    int reps = 3, batch = 1;
    const char *only = NULL;
    shape_t one = {"one", 0, 0, 0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
            if (sscanf(argv[++i], "%d,%d,%d", &one.IC, &one.OC, &one.HW) != 3) return 2;
        }
        else {
            fprintf(stderr, "usage: bench_conv [--reps N] [--batch N] [--only unet|vae] [--shape IC,OC,HW]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 64 || batch < 1) {
        fprintf(stderr, "bench_conv: --reps must be 1..64, --batch >= 1\n");
        return 2;
    }
    const sd_compute_t dt = sd_compute_dtype();
    printf("compute %s, batch %d, medians of %d (ms); error: max rel vs the fp32 im2col output\n",
           sd_compute_dtype_name(dt), batch, reps);
    printf("| model | IC -> OC @ HW | fwd im2col | fwd wino | x | dinp im2col | dinp wino | x | err fwd im2col | "
           "err fwd wino | err dinp im2col | err dinp wino |\n");
    for (size_t si = 0; si < sizeof g_shapes / sizeof g_shapes[0]; si++) {
        const shape_t *sh = &g_shapes[si];
        if (only && strcmp(only, sh->model)) continue;
        if (one.HW && (one.IC != sh->IC || one.OC != sh->OC || one.HW != sh->HW)) continue;
        const conv2d_shape_t s = {.B = batch, .IC = sh->IC, .H = sh->HW, .W = sh->HW, .OC = sh->OC, .KH = 3, .KW = 3,
                                  .stride = 1, .pad = {1, 1, 1, 1}};
        const size_t nin = (size_t)batch * s.IC * s.H * s.W, nout = (size_t)batch * s.OC * s.H * s.W;
        float *x = randn(nin, 1, 2.0f), *w = randn((size_t)s.OC * s.IC * 9, 2, 2.0f / sqrtf(s.IC * 9.0f));
        float *b = randn(s.OC, 3, 0.2f), *dy = randn(nout, 4, 2.0f);
        float *y[2], *dx[2], *yref = sd_xmalloc(nout * sizeof(float)), *dxref = sd_xmalloc(nin * sizeof(float));
        for (int p = 0; p < 2; p++) y[p] = sd_xmalloc(nout * sizeof(float)), dx[p] = sd_xmalloc(nin * sizeof(float));
        /* fp32 im2col reference */
        sd_set_compute_dtype(SD_COMPUTE_FP32);
        conv2d_set_winograd(CONV_WINOGRAD_OFF);
        conv2d_forward(yref, x, w, b, &s);
        memset(dxref, 0, nin * sizeof(float));
        conv2d_backward(dxref, NULL, NULL, dy, x, w, &s);
        sd_set_compute_dtype(dt);
        double tf[2][64], tb[2][64];
        for (int r = -1; r < reps; r++)   /* r = -1: warm-up */
            for (int p = 0; p < 2; p++) {
                conv2d_set_winograd(p ? CONV_WINOGRAD_ALWAYS : CONV_WINOGRAD_OFF);
                double t0 = bench_now();
                conv2d_forward(y[p], x, w, b, &s);
                double t1 = bench_now();
                memset(dx[p], 0, nin * sizeof(float));
                double t2 = bench_now();
                conv2d_backward(dx[p], NULL, NULL, dy, x, w, &s);
                double t3 = bench_now();
                if (r >= 0) tf[p][r] = t1 - t0, tb[p][r] = t3 - t2;
            }
        conv2d_set_winograd(CONV_WINOGRAD_AUTO);
        double mf[2], mb[2];
        for (int p = 0; p < 2; p++) {
            qsort(tf[p], reps, sizeof(double), bench_cmp_double);
            qsort(tb[p], reps, sizeof(double), bench_cmp_double);
            mf[p] = 1e3 * tf[p][reps / 2], mb[p] = 1e3 * tb[p][reps / 2];
        }
        printf("| %s | %d -> %d @ %d | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %.1e | %.1e | %.1e | %.1e |\n",
               sh->model, s.IC, s.OC, sh->HW, mf[0], mf[1], mf[0] / mf[1], mb[0], mb[1], mb[0] / mb[1],
               rel_err(y[0], yref, nout), rel_err(y[1], yref, nout), rel_err(dx[0], dxref, nin),
               rel_err(dx[1], dxref, nin));
        fflush(stdout);
        for (int p = 0; p < 2; p++) free(y[p]), free(dx[p]);
        free(x), free(w), free(b), free(dy), free(yref), free(dxref);
        scratch_free_all();
    }
    return 0;
}
