/* The process group of a data-parallel run (`mpirun -np N svdiff train ...`): rank, size and the
 * few collectives the trainer and the samplers need. Built with MPI (CMake option SVDIFF_MPI),
 * a process started by an MPI launcher (mpirun, srun) joins MPI_COMM_WORLD; any other process,
 * and every process of a build without MPI, is rank 0 of 1 and every collective is a copy or a
 * no-op, so the callers need no #ifdef.
 *
 * Errors: collectives return 0 or SD_ERR_IO with the message set (MPI_ERRORS_RETURN, not MPI's
 * default abort). A rank that fails on its own (a bad image, a full disk) must not leave the others
 * waiting in a collective: every rank calls dist_agree at the same points, and they all stop
 * together with the failing rank's message on that rank. A rank that dies (kill -9) is Open MPI's
 * case: mpirun sees the process end abnormally and terminates the whole job. */
#ifndef SVDIFF_BASE_DIST_H
#define SVDIFF_BASE_DIST_H

#include <stddef.h>

/* Joins MPI when the process was started by an MPI launcher (OMPI_COMM_WORLD_SIZE, PMI_SIZE or
 * PMIX_RANK in the environment) and MPI is compiled in; otherwise (and on failure, with a
 * message) stays a single rank. Call once, early in main. */
void dist_init(int *argc, char ***argv);
/* Leaves MPI (a no-op without it); call once before main returns. */
void dist_finalize(void);
int dist_rank(void);
int dist_size(void);
/* Whether MPI support is compiled in ("Open MPI 4.1.4" style description, or NULL). */
const char *dist_mpi_version(void);

/* Every rank calls it with its own status (0 or SD_ERR_*). Returns 0 when all ranks are fine;
 * else the rank's own rc (its message kept, prefixed "rank R of N: "), or, on a rank that was
 * fine, SD_ERR_ARG with "stopped: rank R failed (its message above)" for the lowest failing rank.
 * Also a barrier. */
int dist_agree(int rc);
/* recv[size * n] = the n floats of every rank, in rank order (MPI_Allgather). */
int dist_allgather_f32(const float *send, size_t n, float *recv);
/* The same for doubles. */
int dist_allgather_f64(const double *send, size_t n, double *recv);
/* x[n] = the element-wise sum over the ranks (MPI_Allreduce; the order of the additions is
 * MPI's, the result the same on every rank). */
int dist_allreduce_sum_f32(float *x, size_t n);
/* bytes of buf from rank `root` to every rank. */
int dist_bcast(void *buf, size_t bytes, int root);

#endif
