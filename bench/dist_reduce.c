/* Gradient exchange benchmark for data-parallel training (base/dist.h): the time per step of
 * what the trainer does after the backward with N MPI ranks (src/train/trainer.c,
 * dp_micro_batches): the exact path (allgather of every micro-batch's gradient, then the sum in
 * micro-batch order on every rank) and, for comparison, one MPI_Allreduce of the same floats.
 * Not part of the tests; bench/run_mpi.sh runs it.
 * Usage: mpirun -np N bench_dist_reduce FLOATS [MICRO_BATCHES_PER_RANK (1)] [REPS (50)] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/dist.h"
#include "base/runtime.h"
#include "lib/benchutil.h"

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    dist_init(&argc, &argv);
    if (argc < 2) {
        fprintf(stderr, "usage: mpirun -np N %s FLOATS [MICRO_BATCHES_PER_RANK] [REPS]\n", argv[0]);
        dist_finalize();
        return 2;
    }
    const size_t n = strtoull(argv[1], NULL, 10);
    const int A = argc > 2 ? atoi(argv[2]) : 1, reps = argc > 3 ? atoi(argv[3]) : 50;
    const int N = dist_size(), M = N * A;
    float *mine = malloc(sizeof(float) * n * A), *all = malloc(sizeof(float) * n * M), *g = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n * A; i++) mine[i] = (float)((i * 2654435761u + dist_rank()) % 1000) * 1e-3f;
    double *t_exact = malloc(sizeof(double) * reps), *t_ar = malloc(sizeof(double) * reps);
    int rc = 0;
    for (int r = 0; r < reps + 2 && !rc; r++) {   /* 2 warm-up rounds */
        dist_agree(0);                             /* start together */
        double t0 = bench_now();
        rc = dist_allgather_f32(mine, n * A, all);
        memset(g, 0, sizeof(float) * n);
        for (int m = 0; m < M; m++)
            for (size_t k = 0; k < n; k++) g[k] += all[(size_t)m * n + k];
        double t1 = bench_now();
        memcpy(g, mine, sizeof(float) * n);
        dist_agree(0);
        double t2 = bench_now();
        if (!rc) rc = dist_allreduce_sum_f32(g, n);
        double t3 = bench_now();
        if (r >= 2) t_exact[r - 2] = t1 - t0, t_ar[r - 2] = t3 - t2;
    }
    qsort(t_exact, reps, sizeof(double), bench_cmp_double);
    qsort(t_ar, reps, sizeof(double), bench_cmp_double);
    if (dist_rank() == 0 && !rc)
        printf("ranks %d, %zu floats (%.3f MB) x %d micro-batches per rank: exact allgather + ordered sum %.3f ms, "
               "allreduce %.3f ms (medians of %d)\n",
               N, n, 4e-6 * (double)n, A, 1e3 * t_exact[reps / 2], 1e3 * t_ar[reps / 2], reps);
    free(mine), free(all), free(g), free(t_exact), free(t_ar);
    dist_finalize();
    return rc ? 1 : 0;
}
