/* Process-wide set-up shared by every svdiff program (CLI, benchmarks, tests). */
#ifndef SVDIFF_BASE_RUNTIME_H
#define SVDIFF_BASE_RUNTIME_H

/* OpenBLAS 0.3.21 (Debian 12) does not recognise recent Xeons (e.g. family 6 model 207)
 * and falls back to its generic "Prescott" kernels, which run sgemm about 5x slower
 * (measured here: 58 vs 281 GFLOP/s at 2048^3). OpenBLAS picks its kernels when the
 * library loads, before main, so the only fix is to set OPENBLAS_CORETYPE and re-execute
 * the program. Call this first thing in main(): when OpenBLAS chose a generic core on a
 * CPU with AVX-512 or AVX2, it sets OPENBLAS_CORETYPE (Cooperlake/SkylakeX/Haswell) and
 * execv()s /proc/self/exe with the same argv. The same re-exec sets OMP_WAIT_POLICY=passive
 * when the user has not chosen one (libgomp also reads it only at load time; see runtime.c
 * for the measurements). A variable the user set is never overridden; if re-exec fails the
 * program carries on unchanged. */
void sd_runtime_init(int argc, char **argv);

/* Sets the thread count of OpenMP and OpenBLAS together (n <= 0: leave the default). */
void sd_set_threads(int n);

/* Seconds on the monotonic clock (for rates and elapsed times; not wall-clock dates). */
double sd_now_s(void);

#endif
