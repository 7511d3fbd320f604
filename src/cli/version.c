/* `svdiff --version`: our version plus the numerical libraries actually linked. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#include "base/dist.h"
#include "cli/commands.h"
#include "ops/gemm.h"

void print_version(FILE *f) {
    fprintf(f, "svdiff %s\n", SVDIFF_VERSION);
    fprintf(f, "BLAS: %s, kernel %s (%d threads, %s)\n", openblas_get_config(), openblas_get_corename(), openblas_get_num_threads(),
            openblas_get_parallel() == 2 ? "OpenMP" : openblas_get_parallel() == 1 ? "pthreads" : "serial");
    const char *wait = getenv("OMP_WAIT_POLICY");
    fprintf(f, "OpenMP: %d threads max, wait policy %s\n", omp_get_max_threads(), wait ? wait : "default");
    fprintf(f, "bf16 kernel: %s (--compute-dtype bf16); compute dtype now %s\n", sd_bf16_kernel(),
            sd_compute_dtype_name(sd_compute_dtype()));
    const char *mpi = dist_mpi_version();
    if (mpi) fprintf(f, "MPI: %s (mpirun -np N svdiff train|pretrain|generate; this process is rank %d of %d)\n", mpi,
                     dist_rank(), dist_size());
    else fprintf(f, "MPI: not built in (cmake -DSVDIFF_MPI=ON with Open MPI installed)\n");
}
