/* base/dist.h in a process that no MPI launcher started (every test binary): rank 0 of 1, each
 * collective a copy or a no-op, and dist_agree passing the status and the message through
 * unchanged, so single-process runs behave as without MPI. tests/cli_mpi.sh runs real ranks. */
#include "testutil.h"

#include <string.h>

#include "base/dist.h"
#include "base/error.h"

static void test_dist_single_rank(void **state) {
    (void)state;
    assert_int_equal(dist_rank(), 0);
    assert_int_equal(dist_size(), 1);
    const float x[3] = {1.5f, -2.0f, 3.25f};
    float y[3] = {0};
    assert_int_equal(dist_allgather_f32(x, 3, y), 0);
    assert_memory_equal(x, y, sizeof x);
    const double d[2] = {0.1, -7.0};
    double e[2] = {0};
    assert_int_equal(dist_allgather_f64(d, 2, e), 0);
    assert_memory_equal(d, e, sizeof d);
    assert_int_equal(dist_allreduce_sum_f32(y, 3), 0);   /* the sum over one rank: unchanged */
    assert_memory_equal(x, y, sizeof x);
    char b[4] = "abc";
    assert_int_equal(dist_bcast(b, 4, 0), 0);
    assert_string_equal(b, "abc");
}

static void test_dist_agree_single(void **state) {
    (void)state;
    assert_int_equal(dist_agree(SD_OK), SD_OK);
    /* one rank: the failure and its message stay as they were (no "rank 0 of 1" prefix) */
    int rc = sd_error(SD_ERR_IO, "x.png: cannot read image");
    assert_int_equal(dist_agree(rc), SD_ERR_IO);
    assert_string_equal(sd_last_error(), "x.png: cannot read image");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dist_single_rank),
        cmocka_unit_test(test_dist_agree_single),
    };
    return RUN_TESTS(argc, argv, "dist", tests, NULL, NULL);
}
