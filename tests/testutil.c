/* Shared test helpers (see testutil.h). */
#define _GNU_SOURCE   /* nftw */
#include "testutil.h"

#include <fnmatch.h>
#include <ftw.h>
#include <sys/stat.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "io/image.h"

/* Under ASan an allocation it cannot serve aborts by default; plain malloc returns NULL, and
 * the tests of the library's out-of-memory errors (base/error.h's policy) need that. Read by
 * the ASan runtime before ASAN_OPTIONS, which still overrides it; unused in other builds. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void trng_seed(trng_t *r, uint64_t seed) { r->s = splitmix(&seed) | 1; }

static uint64_t trng_next(trng_t *r) {
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return r->s;
}

float trng_uniform(trng_t *r) { return (float)((trng_next(r) >> 40) * (1.0 / 16777216.0)); }

float trng_normal(trng_t *r) {
    double u1 = ((trng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (trng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void fill_normal(trng_t *r, float *x, size_t n, float stddev) {
    for (size_t i = 0; i < n; i++) x[i] = stddev * trng_normal(r);
}

void fill_uniform(trng_t *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * trng_uniform(r);
}

float *alloc_normal(trng_t *r, size_t n, float stddev) {
    float *x = sd_xmalloc(n * sizeof(float));
    fill_normal(r, x, n, stddev);
    return x;
}

float *alloc_zeros(size_t n) { return sd_xcalloc(n, sizeof(float)); }

double rel_error(const float *a, const float *b, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxdiff || d != d) maxdiff = d;
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    if (maxref < 1e-12) maxref = 1e-12;
    return maxdiff / maxref;
}

void assert_close(const char *name, const float *got, const float *want, size_t n, double tol) {
    double e = rel_error(got, want, n);
    if (!(e <= tol)) {
        print_error("%s: relative error %.3g > %.3g (n=%zu)\n", name, e, tol, n);
        fail();
    }
}

double dot_loss(const float *out, const float *w, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * (double)w[i];
    return s;
}

double fd_check(const char *name, float *x, const float *grad, size_t n, size_t max_probe,
                double (*loss)(void *ctx), void *ctx, float h, double tol) {
    double scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(grad[i]));
    if (scale < 1e-12) scale = 1e-12;
    size_t probes = n < max_probe ? n : max_probe;
    double worst = 0;
    for (size_t p = 0; p < probes; p++) {
        size_t i = probes == n ? p : (size_t)(((double)p + 0.5) * n / probes);
        float x0 = x[i];
        x[i] = x0 + 2 * h; double lp2 = loss(ctx);
        x[i] = x0 + h;     double lp1 = loss(ctx);
        x[i] = x0 - h;     double lm1 = loss(ctx);
        x[i] = x0 - 2 * h; double lm2 = loss(ctx);
        x[i] = x0;
        /* Use the actually representable step sizes. */
        double hh = ((double)(x0 + h) - (double)(x0 - h)) / 2.0;
        double g = (-lp2 + 8 * lp1 - 8 * lm1 + lm2) / (12 * hh);
        double dev = fabs(g - grad[i]) / fmax(scale, fabs(grad[i]));
        if (dev > worst) worst = dev;
        if (!(dev <= tol)) {
            print_error("%s: fd gradient mismatch at %zu: numeric %.6g analytic %.6g (rel %.3g > %.3g)\n",
                        name, i, g, grad[i], dev, tol);
            fail();
        }
    }
    return worst;
}

const char *source_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("SVDIFF_SOURCE_DIR");
    snprintf(buf, sizeof buf, "%s/%s", root && *root ? root : ".", rel);
    return buf;
}

void golden_open(st_file_t *f, const char *fixture) {
    char rel[512];
    snprintf(rel, sizeof rel, "tests/fixtures/%s", fixture);
    if (st_open(f, source_path(rel)) != 0) {
        print_error("cannot open golden fixture: %s\n"
                    "regenerate with: tests/reference/regenerate.sh\n", sd_last_error());
        fail();
    }
}

float *golden_get_opt(const st_file_t *f, const char *name) {
    const st_tensor_t *t = st_find(f, name);
    if (!t) return NULL;
    float *x = sd_xmalloc((size_t)t->numel * sizeof(float) + 1);
    if (st_read_f32(x, t) != 0) {
        print_error("%s\n", sd_last_error());
        fail();
    }
    return x;
}

float *golden_get(const st_file_t *f, const char *name, int64_t expect_numel) {
    const st_tensor_t *t = st_find(f, name);
    if (!t) {
        print_error("golden fixture %s has no tensor '%s'\n", f->path, name);
        fail();
    }
    if (expect_numel >= 0 && t->numel != expect_numel) {
        print_error("golden tensor '%s': %lld elements, expected %lld\n", name,
                    (long long)t->numel, (long long)expect_numel);
        fail();
    }
    return golden_get_opt(f, name);
}

#include "base/runtime.h"

/* Runs before each test's main: the same OpenBLAS kernel fix as the CLI (runtime.h), so
 * tests exercise the kernels users get. argv comes from /proc/self/cmdline. */
__attribute__((constructor)) static void testutil_runtime_init(void) {
    static char buf[8192];
    static char *argv[64];
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    int argc = 0;
    for (size_t i = 0; i < n && argc < 63; i += strlen(buf + i) + 1) argv[argc++] = buf + i;
    argv[argc] = NULL;
    if (argc > 0) sd_runtime_init(argc, argv);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int rm_tree(const char *dir) { return nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)(len > 0 ? len : 0) + 1);
    *n = fread(buf, 1, (size_t)(len > 0 ? len : 0), f);
    buf[*n] = 0;
    fclose(f);
    return buf;
}

void assert_same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    if (!x || !y || na != nb || memcmp(x, y, na)) {
        print_error("files differ: %s (%zu bytes) and %s (%zu bytes)\n", a, x ? na : 0, b, y ? nb : 0);
        free(x), free(y);
        fail();
    }
    free(x), free(y);
}

/* ---------------------------------------------------------------- test_main */

static int n_skipped;

void test_skip(const char *file, int line) {
    n_skipped++;
    _skip(file, line);
}

static int in_list(const char *name, char **names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(name, names[i])) return 1;
    return 0;
}

int test_main(int argc, char **argv, const char *group, const struct CMUnitTest *tests, size_t n,
              CMFixtureFunction setup, CMFixtureFunction teardown) {
    if (argc > 1 && !strcmp(argv[1], "--list")) {
        for (size_t i = 0; i < n; i++) printf("%s\n", tests[i].name);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--check-registered")) {
        /* CMake registers the units it finds in the source text; a unit it missed never runs. */
        int bad = 0;
        for (size_t i = 0; i < n; i++)
            if (!in_list(tests[i].name, argv + 2, argc - 2)) {
                fprintf(stderr, "%s: unit %s is in the group but has no ctest entry\n", group, tests[i].name);
                bad++;
            }
        for (int k = 2; k < argc; k++) {
            size_t i = 0;
            while (i < n && strcmp(tests[i].name, argv[k])) i++;
            if (i == n) {
                fprintf(stderr, "%s: ctest entry %s names no unit of the group\n", group, argv[k]);
                bad++;
            }
        }
        printf("%s: %zu units, %d registration errors\n", group, n, bad);
        return bad != 0;
    }
    size_t ran = n;
    if (argc > 1) {
        ran = 0;
        for (size_t i = 0; i < n; i++) ran += fnmatch(argv[1], tests[i].name, 0) == 0;
        if (ran == 0) {
            fprintf(stderr, "%s: no unit matches '%s'\n", group, argv[1]);
            return 1;
        }
        cmocka_set_test_filter(argv[1]);
    }
    n_skipped = 0;
    int failed = _cmocka_run_group_tests(group, tests, n, setup, teardown);
    if (failed == 0 && n_skipped > 0 && (size_t)n_skipped == ran) return TEST_SKIP_CODE;
    return failed;
}

int path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

void write_test_png(const char *path, int w, int h, uint64_t seed) {
    image_t img;
    assert_int_equal(image_alloc(&img, w, h), 0);
    trng_t r;
    trng_seed(&r, seed);
    const float a = trng_uniform(&r), b = trng_uniform(&r);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < 3; k++) {
                float v = 127.5f + 100.0f * sinf(a * 6.0f * x / w + b * 5.0f * y / h + 2.0f * k) +
                          20.0f * (trng_uniform(&r) - 0.5f);
                img.rgb[((size_t)y * w + x) * 3 + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    assert_int_equal(image_save_png(&img, path, NULL, NULL, 0), 0);
    image_free(&img);
}

int train_once(const train_config_t *c) {
    trainer_t t;
    int rc = trainer_open(&t, c);
    if (!rc) rc = trainer_run(&t);
    if (rc) print_message("train: %s\n", sd_last_error());
    trainer_close(&t);
    return rc;
}
