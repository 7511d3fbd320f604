/* Shared by the bench programs (bench/NAME.c): the clock, the GEMM ceilings measured in the calling
 * process, and the switch a profiler attached by bench/profile_step.sh waits on. */
#ifndef SVDIFF_BENCH_BENCHUTIL_H
#define SVDIFF_BENCH_BENCHUTIL_H

/* Monotonic wall clock in seconds. */
double bench_now(void);

/* qsort comparison of doubles, ascending (medians of timings). */
int bench_cmp_double(const void *a, const void *b);

/* GFLOP/s of a 2048^3 product, the median of `reps` timed runs after one warm-up:
 * bench_sgemm_gflops: OpenBLAS cblas_sgemm; bench_bf16_gflops: svdiff's own bf16 GEMM
 * (gemm_bf16, fp32 accumulation), 0 when the CPU has no bf16 kernel. Each allocates and frees
 * its three 16 MB matrices. */
double bench_sgemm_gflops(int reps);
double bench_bf16_gflops(int reps);

/* Profiling window. When SVDIFF_PERF_CTL names a FIFO (perf record --control fifo:CTL,ACK -D -1,
 * as bench/profile_step.sh runs it), bench_profile_on / bench_profile_off write "enable" /
 * "disable" to it and, when SVDIFF_PERF_ACK names the ack FIFO, wait for perf's "ack", so that
 * only the code between the two calls is sampled (not the set-up, not the GEMM rates measured
 * after). No-ops otherwise. */
void bench_profile_on(void);
void bench_profile_off(void);

#endif
