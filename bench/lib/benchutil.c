#include "benchutil.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "base/error.h"
#include "ops/gemm.h"

double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *rand_matrix(size_t n, uint64_t s) { /* xorshift64, uniform in [-0.5, 0.5) */
    float *x = sd_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((s >> 40) * (1.0 / 16777216.0)) - 0.5f;
    }
    return x;
}

static double gemm_gflops(int bf16, int reps) {
    const int n = 2048;
    if (reps < 1) reps = 1;
    if (reps > 64) reps = 64;
    float *a = rand_matrix((size_t)n * n, 0x9E3779B97F4A7C15ull), *b = rand_matrix((size_t)n * n, 0xD1B54A32D192ED03ull);
    float *c = sd_xmalloc(sizeof(float) * n * n);
    double t[64];
    for (int r = -1; r < reps; r++) {   /* r = -1: warm-up (first touch, packing buffers) */
        const double t0 = bench_now();
        if (bf16) gemm_bf16(CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        if (r >= 0) t[r] = bench_now() - t0;
    }
    qsort(t, reps, sizeof *t, bench_cmp_double);
    free(a), free(b), free(c);
    return 2.0 * n * n * (double)n / t[reps / 2] / 1e9;
}

double bench_sgemm_gflops(int reps) { return gemm_gflops(0, reps); }

double bench_bf16_gflops(int reps) { return strcmp(sd_bf16_kernel(), "none") ? gemm_gflops(1, reps) : 0.0; }

static void profile_ctl(const char *cmd) {
    const char *ctl = getenv("SVDIFF_PERF_CTL"), *ack = getenv("SVDIFF_PERF_ACK");
    if (!ctl || !ctl[0]) return;
    int fd = open(ctl, O_WRONLY);
    if (fd < 0) {
        fprintf(stderr, "bench: SVDIFF_PERF_CTL %s: cannot open (profile window ignored)\n", ctl);
        return;
    }
    if (write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd))
        fprintf(stderr, "bench: SVDIFF_PERF_CTL %s: short write\n", ctl);
    close(fd);
    if (!ack || !ack[0]) return;
    int afd = open(ack, O_RDONLY);
    char buf[16];
    if (afd >= 0) {   /* perf answers "ack\n" once the events are switched */
        if (read(afd, buf, sizeof buf) <= 0) fprintf(stderr, "bench: SVDIFF_PERF_ACK %s: no answer\n", ack);
        close(afd);
    }
}

void bench_profile_on(void) { profile_ctl("enable\n"); }

void bench_profile_off(void) { profile_ctl("disable\n"); }
