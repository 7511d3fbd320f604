/* Process-wide set-up: OpenBLAS kernel selection fix and thread counts (see runtime.h). */
#include "base/runtime.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
    if (getenv("SVDIFF_NO_REEXEC")) return;
    /* Under valgrind /proc/self/exe is valgrind's own tool binary: never re-exec there (set
     * OPENBLAS_CORETYPE / OMP_WAIT_POLICY by hand if the kernels or waiting matter). */
    const char *preload = getenv("LD_PRELOAD");
    if (preload && (strstr(preload, "vgpreload") || strstr(preload, "valgrind"))) return;
    int reexec = 0;
    /* 1. OpenBLAS kernels: only when it fell back to a generic core on a CPU it did not know */
    const char *core = openblas_get_corename();
    const char *want = wanted_coretype();
    if (!getenv("OPENBLAS_CORETYPE") && core && want && strcmp(want, core) != 0 &&
        (!strcmp(core, "Prescott") || !strcmp(core, "Core2") || !strcmp(core, "Katmai") ||
         !strcmp(core, "Nehalem") || !strcmp(core, "Sandybridge"))) {
        setenv("OPENBLAS_CORETYPE", want, 1);
        reexec = 1;
    }
    /* 2. OpenMP waiting: libgomp's default spin-wait costs little alone but, when another
     * process shares the cores, spinning threads steal them: a 32x32 SD 1.5 UNet forward took
     * 12.7-13.9 s beside another 2-thread job with spinning and 4.4-4.7 s with passive
     * waiting (alone: 2.4-2.9 s either way). Passive unless the user chose. */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        reexec = 1;
    }
    if (!reexec) return;
    setenv("SVDIFF_NO_REEXEC", "1", 1);  /* never loop */
    fflush(NULL);
    execv("/proc/self/exe", argv);
    /* execv failed (no /proc?): carry on as we are. */
}

void sd_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

double sd_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
