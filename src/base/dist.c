/* dist.h over MPI when SVDIFF_HAVE_MPI is defined, else the single-rank implementation. */
#include "base/dist.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

/* Set by Open MPI's mpirun, by MPICH's hydra and srun --mpi=pmi2, and by PMIx launchers (srun). */
static int launched_by_mpi(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

#ifdef SVDIFF_HAVE_MPI
#include <mpi.h>

static int g_rank = 0, g_size = 1, g_on = 0;


void dist_init(int *argc, char ***argv) {
    if (g_on || !launched_by_mpi()) return;
    int provided = 0;
    /* OpenMP threads inside a rank, MPI calls from the main thread only */
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "svdiff: MPI_Init failed: running as a single process\n");
        return;
    }
    g_on = 1;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
}

void dist_finalize(void) {
    if (!g_on) return;
    MPI_Finalize();
    g_on = 0;
}

int dist_rank(void) { return g_rank; }
int dist_size(void) { return g_size; }

const char *dist_mpi_version(void) {
    static char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(v, &len);
    char *nl = strpbrk(v, ",\n");   /* "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4" */
    if (nl) *nl = '\0';
    return v;
}

static int mpi_fail(int err, const char *what) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, s, &len);
    return sd_error(SD_ERR_IO, "rank %d of %d: MPI %s failed: %s", g_rank, g_size, what, s);
}

int dist_agree(int rc) {
    if (g_size == 1) return rc;
    int mine = rc ? g_rank : g_size, first = g_size;
    int err = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (err != MPI_SUCCESS) return mpi_fail(err, "status exchange");
    if (rc) return sd_error_wrap(rc, "rank %d of %d", g_rank, g_size);
    if (first < g_size) return sd_error(SD_ERR_ARG, "stopped: rank %d of %d failed (its message above)", first, g_size);
    return SD_OK;
}

/* Counts above INT_MAX go in chunks of one contiguous type. */
static int allgather(const void *send, size_t n, void *recv, MPI_Datatype type, size_t elem) {
    if (g_size == 1) {
        if (send != recv) memcpy(recv, send, n * elem);
        return SD_OK;
    }
    if (n > INT_MAX) return sd_error(SD_ERR_ARG, "allgather of %zu values: over the MPI count limit", n);
    int err = MPI_Allgather(send, (int)n, type, recv, (int)n, type, MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? SD_OK : mpi_fail(err, "allgather");
}

int dist_allgather_f32(const float *send, size_t n, float *recv) { return allgather(send, n, recv, MPI_FLOAT, sizeof(float)); }
int dist_allgather_f64(const double *send, size_t n, double *recv) { return allgather(send, n, recv, MPI_DOUBLE, sizeof(double)); }

int dist_allreduce_sum_f32(float *x, size_t n) {
    if (g_size == 1) return SD_OK;
    const size_t chunk = (size_t)1 << 28;
    for (size_t i = 0; i < n; i += chunk) {
        const int k = (int)(n - i < chunk ? n - i : chunk);
        int err = MPI_Allreduce(MPI_IN_PLACE, x + i, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) return mpi_fail(err, "allreduce");
    }
    return SD_OK;
}

int dist_bcast(void *buf, size_t bytes, int root) {
    if (g_size == 1) return SD_OK;
    const size_t chunk = (size_t)1 << 30;
    for (size_t i = 0; i < bytes; i += chunk) {
        const int k = (int)(bytes - i < chunk ? bytes - i : chunk);
        int err = MPI_Bcast((char *)buf + i, k, MPI_BYTE, root, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) return mpi_fail(err, "broadcast");
    }
    return SD_OK;
}

#else   /* no MPI: one rank */

void dist_init(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (launched_by_mpi())
        fprintf(stderr, "svdiff: started by an MPI launcher, but built without MPI (cmake -DSVDIFF_MPI=ON): every "
                "process runs alone, as rank 0 of 1\n");
}
void dist_finalize(void) {}
int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
const char *dist_mpi_version(void) { return NULL; }
int dist_agree(int rc) { return rc; }
int dist_allgather_f32(const float *send, size_t n, float *recv) {
    if (send != recv) memcpy(recv, send, n * sizeof(float));
    return SD_OK;
}
int dist_allgather_f64(const double *send, size_t n, double *recv) {
    if (send != recv) memcpy(recv, send, n * sizeof(double));
    return SD_OK;
}
int dist_allreduce_sum_f32(float *x, size_t n) {
    (void)x, (void)n;
    return SD_OK;
}
int dist_bcast(void *buf, size_t bytes, int root) {
    (void)buf, (void)bytes, (void)root;
    return SD_OK;
}

#endif
