/* Process-wide set-up: OpenBLAS kernel selection fix and thread counts (see runtime.h). */
#include "base/runtime.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *wanted_coretype(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        /* Cooperlake adds the avx512_bf16 kernels (sbgemm) to SkylakeX's. */
        return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return NULL;
}

void sd_runtime_init(int argc, char **argv) {
    (void)argc;
    if (getenv("OPENBLAS_CORETYPE") || getenv("SVDIFF_NO_REEXEC")) return;
    const char *core = openblas_get_corename();
    if (!core || (strcmp(core, "Prescott") != 0 && strcmp(core, "Core2") != 0 &&
                  strcmp(core, "Katmai") != 0 && strcmp(core, "Nehalem") != 0 &&
                  strcmp(core, "Sandybridge") != 0))
        return;
    const char *want = wanted_coretype();
    if (!want || !strcmp(want, core)) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("SVDIFF_NO_REEXEC", "1", 1);  /* never loop, whatever OpenBLAS does with it */
    fflush(NULL);
    execv("/proc/self/exe", argv);
    /* execv failed (no /proc?): carry on with the slow kernels. */
    unsetenv("OPENBLAS_CORETYPE");
}

void sd_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}
