/* Micro-benchmark of the elementwise maths of ops/fastmath.h: ns per element of plain loops over
 * exp_approx, sigmoid_approx and erf_approx, and of the operators built on them (silu, gelu,
 * their backward), on 4M floats in [-8, 8) (--elems N: e.g. 16384 to stay in L1/L2 and time the
 * arithmetic alone), one thread. Medians of --reps runs (each repeats the loop to cover at least 4M
 * elements) after a warm-up.
 * Built against two trees it compares two versions of the header (the NaN-safe exp of issue 17
 * against the one before); a loop the compiler stops vectorising shows up as a several-fold
 * slowdown. Not part of the tests.
 * Usage: bench_fastmath [--reps N] [--elems N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "base/runtime.h"
#include "ops/fastmath.h"
#include "ops/ops.h"
#include "lib/benchutil.h"

#define TOTAL (1 << 22)

static int g_reps = 15;
static size_t g_n = TOTAL, g_inner = 1;
static float *g_x, *g_y, *g_d;

static double median_ns_per_elem(void (*fn)(void)) {
    double t[101];
    fn();
    for (int r = 0; r < g_reps; r++) {
        double t0 = bench_now();
        for (size_t k = 0; k < g_inner; k++) fn();
        t[r] = bench_now() - t0;
    }
    qsort(t, g_reps, sizeof *t, bench_cmp_double);
    return 1e9 * t[g_reps / 2] / ((double)g_n * g_inner);
}

static void loop_exp(void) {
    for (size_t i = 0; i < g_n; i++) g_y[i] = exp_approx(g_x[i]);
}
static void loop_sigmoid(void) {
    for (size_t i = 0; i < g_n; i++) g_y[i] = sigmoid_approx(g_x[i]);
}
static void loop_erf(void) {
    for (size_t i = 0; i < g_n; i++) g_y[i] = erf_approx(g_x[i]);
}
static void op_silu(void) { silu_forward(g_y, g_x, g_n); }
static void op_silu_bwd(void) { silu_backward(g_y, g_d, g_x, g_n); }
static void op_gelu(void) { gelu_forward(g_y, g_x, g_n); }
static void op_gelu_bwd(void) { gelu_backward(g_y, g_d, g_x, g_n); }

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--elems") && i + 1 < argc) g_n = (size_t)atol(argv[++i]);
        else { fprintf(stderr, "usage: %s [--reps N] [--elems N]\n", argv[0]); return 2; }
    }
    if (g_reps < 1 || g_reps > 101) g_reps = 15;
    if (g_n < 1 || g_n > TOTAL) g_n = TOTAL;
    g_inner = TOTAL / g_n;
    sd_runtime_init(argc, argv);
    sd_set_threads(1);
    g_x = sd_xmalloc(sizeof(float) * g_n), g_y = sd_xmalloc(sizeof(float) * g_n), g_d = sd_xmalloc(sizeof(float) * g_n);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < g_n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        g_x[i] = 16.0f * (float)((s >> 40) * (1.0 / 16777216.0)) - 8.0f;
        g_d[i] = 1.0f;
    }
    static const struct { const char *name; void (*fn)(void); } rows[] = {
        {"exp_approx loop", loop_exp},   {"sigmoid_approx loop", loop_sigmoid}, {"erf_approx loop", loop_erf},
        {"silu_forward", op_silu},       {"silu_backward", op_silu_bwd},        {"gelu_forward", op_gelu},
        {"gelu_backward", op_gelu_bwd},
    };
    printf("%-22s %10s   (median of %d, %zu floats x %zu, 1 thread)\n", "", "ns/elem", g_reps, g_n, g_inner);
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++)
        printf("%-22s %10.3f\n", rows[k].name, median_ns_per_elem(rows[k].fn));
    free(g_x), free(g_y), free(g_d);
    return 0;
}
