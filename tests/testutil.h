/* Shared helpers for the cmocka tests: deterministic random data, error measures, a
 * finite-difference gradient checker and access to the golden fixtures. */
#ifndef SVDIFF_TESTUTIL_H
#define SVDIFF_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "io/safetensors.h"
#include "train/trainer.h"

/* splitmix64-seeded xorshift; same numbers on every machine. */
typedef struct { uint64_t s; } trng_t;
void trng_seed(trng_t *r, uint64_t seed);
float trng_uniform(trng_t *r);                 /* [0, 1) */
float trng_normal(trng_t *r);                  /* N(0, 1) */
void fill_normal(trng_t *r, float *x, size_t n, float stddev);
void fill_uniform(trng_t *r, float *x, size_t n, float lo, float hi);
float *alloc_normal(trng_t *r, size_t n, float stddev);   /* malloc'ed */
float *alloc_zeros(size_t n);                             /* calloc'ed */

/* max |a - b| / max(max |b|, 1e-12): the relative error used by every comparison. */
double rel_error(const float *a, const float *b, size_t n);
/* Asserts rel_error <= tol, printing name and the error on failure. */
void assert_close(const char *name, const float *got, const float *want, size_t n, double tol);

/* Finite-difference gradient check. `loss(ctx)` must recompute the scalar loss (in double)
 * from the current contents of x. The checker perturbs up to `max_probe` entries of x
 * (spread over the array) with the 4-point stencil
 *   g ~ (-L(x+2h) + 8 L(x+h) - 8 L(x-h) + L(x-2h)) / (12 h)
 * and compares with grad[i]: |g - grad| <= tol * max(scale, |grad|), scale = max |grad|.
 * Returns the worst relative deviation seen; fails the test if it exceeds tol. */
double fd_check(const char *name, float *x, const float *grad, size_t n, size_t max_probe,
                double (*loss)(void *ctx), void *ctx, float h, double tol);

/* ---- files and training runs shared by the trainer tests ---- */
/* Does path exist (stat: a link is followed)? */
int path_exists(const char *path);
/* Writes a w x h PNG of smooth colour gradients plus noise (its content varies with seed). */
void write_test_png(const char *path, int w, int h, uint64_t seed);
/* trainer_open + trainer_run + trainer_close; prints the error of a failed run. Returns its code. */
int train_once(const train_config_t *c);

/* sum_i out[i] * w[i] in double: the usual probe loss (its d/d out is w). */
double dot_loss(const float *out, const float *w, size_t n);

/* Files: removes a folder tree (returns nftw's result, 0 on success); reads a whole file
 * (malloc'ed, NUL-terminated, *n bytes; NULL if unreadable); fails the test unless two files
 * have the same bytes. */
int rm_tree(const char *dir);
char *read_file(const char *path, size_t *n);
void assert_same_file(const char *a, const char *b);

/* Path of a file under the source tree (SVDIFF_SOURCE_DIR, else "."); static buffer. */
const char *source_path(const char *rel);

/* Golden fixtures written by tests/reference/ (PyTorch scripts): opens tests/fixtures/<name> (fails the
 * test with the regeneration command if missing) and reads tensors as float. */
void golden_open(st_file_t *f, const char *fixture);
/* malloc'ed float copy of tensor `name`; checks the element count if expect_numel >= 0. */
float *golden_get(const st_file_t *f, const char *name, int64_t expect_numel);
/* Like golden_get but returns NULL when absent. */
float *golden_get_opt(const st_file_t *f, const char *name);

/* The main of every test binary (CMakeLists.txt registers one ctest entry per unit):
 *   prog              runs every unit of the group
 *   prog PATTERN      runs the units whose names match (cmocka's filter: * and ?)
 *   prog --list       prints the unit names, one a line
 *   prog --check-registered NAME...
 *                     fails, naming them, on units of the group that are not among the NAMEs
 *                     (the units CMake found in the source) and on NAMEs the group lacks
 * Returns the number of failed units (1 if PATTERN matches none), or TEST_SKIP_CODE when every
 * unit that ran called skip(): ctest's SKIP_RETURN_CODE, so a skip is not counted as a pass. */
#define TEST_SKIP_CODE 77
int test_main(int argc, char **argv, const char *group, const struct CMUnitTest *tests, size_t n,
              CMFixtureFunction setup, CMFixtureFunction teardown);
#define RUN_TESTS(argc, argv, group, tests, setup, teardown) \
    test_main(argc, argv, group, tests, sizeof(tests) / sizeof((tests)[0]), setup, teardown)

/* cmocka's skip(), counted for test_main. */
void test_skip(const char *file, int line);
#undef skip
#define skip() test_skip(__FILE__, __LINE__)

#endif
