/* Tests for src/io/safetensors.c: f16/bf16 conversions, writer -> reader round trips of
 * every dtype, sharded index sets, atomic saves, >= 20 malformed files that must be
 * rejected with a message naming file and tensor, and a byte-flip/truncation fuzz loop. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/error.h"
#include "testutil.h"

static char g_dir[256]; /* per-run temp dir under /tmp */

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/svdiff_st_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return rm_tree(g_dir);
}

/* g_dir/name in a rotating set of buffers (tests hold a few paths at once). */
static const char *tpath(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (n) assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
    fclose(fp);
    *n = (size_t)sz;
    return b;
}

/* u64 N = strlen(json), the JSON unpadded, then data_len bytes (0, 1, 2, ...). */
static const char *make_st(const char *name, const char *json, size_t data_len) {
    const char *path = tpath(name);
    size_t n = strlen(json);
    unsigned char *b = malloc(8 + n + data_len + 1);
    uint64_t n64 = n;
    memcpy(b, &n64, 8);
    memcpy(b + 8, json, n);
    for (size_t i = 0; i < data_len; i++) b[8 + n + i] = (unsigned char)i;
    write_bytes(path, b, 8 + n + data_len);
    free(b);
    return path;
}

static int count_tmp_files(void) {
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void assert_contains(const char *msg, const char *sub) {
    if (!sub) return;
    if (!strstr(msg, sub)) {
        print_error("message \"%s\" lacks \"%s\"\n", msg, sub);
        fail();
    }
}

/* Like assert_contains, but sub must come from the message proper, not the file name. */
static void assert_says(const char *msg, const char *path, const char *sub) {
    if (!sub) return;
    assert_null(strstr(path, sub)); /* a test bug: the file name would satisfy it */
    assert_contains(msg, sub);
}

/* st_open must fail with `code`, a message naming the file's base name and sub1/sub2,
 * and leave f closed (zeroed). */
static void expect_open_fail(const char *path, int code, const char *sub1, const char *sub2) {
    st_file_t f;
    sd_clear_error();
    int rc = st_open(&f, path);
    if (rc != code) {
        print_error("%s: st_open returned %d (want %d): %s\n", path, rc, code, sd_last_error());
        fail();
    }
    const char *msg = sd_last_error();
    assert_true(strlen(msg) > 0);
    assert_contains(msg, strrchr(path, '/') + 1);
    assert_says(msg, strrchr(path, '/') + 1, sub1);
    assert_says(msg, strrchr(path, '/') + 1, sub2);
    assert_null(f.map);
    assert_null(f.tensors);
    assert_null(f.path);
    assert_int_equal(f.n_tensors, 0);
}

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---------------------------------------------------------------------------------- */

static void test_f16_known_values(void **state) {
    (void)state;
    assert_true(st_f16_to_f32(0x3C00) == 1.0f);
    assert_true(st_f16_to_f32(0xC000) == -2.0f);
    assert_true(st_f16_to_f32(0x7BFF) == 65504.0f);
    assert_true(st_f16_to_f32(0x0001) == ldexpf(1.0f, -24));   /* smallest subnormal */
    assert_true(st_f16_to_f32(0x03FF) == 1023.0f * ldexpf(1.0f, -24)); /* largest subnormal */
    assert_true(st_f16_to_f32(0x0400) == ldexpf(1.0f, -14));   /* smallest normal */
    assert_true(st_f16_to_f32(0x3555) == 0.333251953125f);
    assert_int_equal(fbits(st_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
    assert_true(isinf(st_f16_to_f32(0x7C00)) && st_f16_to_f32(0x7C00) > 0);
    assert_true(isinf(st_f16_to_f32(0xFC00)) && st_f16_to_f32(0xFC00) < 0);
    assert_true(isnan(st_f16_to_f32(0x7E00)) && isnan(st_f16_to_f32(0x7C01)));

    assert_int_equal(st_f32_to_f16(1.0f), 0x3C00);
    assert_int_equal(st_f32_to_f16(-2.0f), 0xC000);
    assert_int_equal(st_f32_to_f16(65504.0f), 0x7BFF);
    assert_int_equal(st_f32_to_f16(65519.99f), 0x7BFF);
    assert_int_equal(st_f32_to_f16(65520.0f), 0x7C00);   /* tie rounds to even = inf */
    assert_int_equal(st_f32_to_f16(1e10f), 0x7C00);
    assert_int_equal(st_f32_to_f16(-INFINITY), 0xFC00);
    assert_int_equal(st_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(st_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    assert_int_equal(st_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);        /* tie -> even 0 */
    assert_int_equal(st_f32_to_f16(ldexpf(1.0f, -25) * 1.0000001f), 0x0001);
    assert_int_equal(st_f32_to_f16(3.0f * ldexpf(1.0f, -25)), 0x0002); /* 1.5 ulp -> 2 */
    assert_int_equal(st_f32_to_f16(5.0f * ldexpf(1.0f, -25)), 0x0002); /* 2.5 ulp -> 2 */
    assert_int_equal(st_f32_to_f16(1e-9f), 0x0000);
    assert_int_equal(st_f32_to_f16(1023.5f * ldexpf(1.0f, -24)), 0x0400); /* into normals */
    assert_int_equal(st_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3C00);     /* tie -> even */
    assert_int_equal(st_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3C02); /* tie -> even */
    assert_int_equal(st_f32_to_f16(1.0f + ldexpf(1.0f, -11) + ldexpf(1.0f, -20)), 0x3C01);
    assert_int_equal(st_f32_to_f16(bitsf(0x00000001u)), 0x0000);  /* f32 subnormal */
    uint16_t hn = st_f32_to_f16(NAN);
    assert_true((hn & 0x7C00) == 0x7C00 && (hn & 0x3FF) != 0);
    uint16_t hs = st_f32_to_f16(bitsf(0x7F800001u)); /* NaN with only low payload bits */
    assert_true((hs & 0x7C00) == 0x7C00 && (hs & 0x3FF) != 0);
}

/* Every f16 value: exact against a double-precision decode, and f16 -> f32 -> f16 is the
 * identity (NaNs: stay NaN). */
static void test_f16_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        int e = (h >> 10) & 31, m = h & 1023;
        double want = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                        : ldexp(1024 + m, e - 25);
        if (h & 0x8000) want = -want;
        if (isnan(want)) {
            assert_true(isnan(f));
            assert_true(isnan(st_f16_to_f32(st_f32_to_f16(f))));
            continue;
        }
        if ((double)f != want || !signbit(f) != !signbit(want)) {
            print_error("f16 %04x -> %.9g, want %.9g\n", h, f, want);
            fail();
        }
        assert_int_equal(st_f32_to_f16(f), h);
    }
#ifdef __FLT16_MAX__
    /* The compiler's own conversions round to nearest even: compare on random bit patterns
     * (biased towards the f16 range so the interesting paths are hit). */
    trng_t r;
    trng_seed(&r, 16);
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)(trng_uniform(&r) * 16777216.0f) << 8 ^
                     (uint32_t)(trng_uniform(&r) * 256.0f);
        if (i & 1) u = (u & 0x80ffffffu) | ((0x60u + (u >> 24) % 0x30u) << 23); /* |x| ~ 2^-31..2^16 */
        float f = bitsf(u);
        if (isnan(f)) continue;
        _Float16 c = (_Float16)f;
        uint16_t want;
        memcpy(&want, &c, 2);
        uint16_t got = st_f32_to_f16(f);
        if (got != want) {
            print_error("f32 %08x -> f16 %04x, compiler says %04x\n", u, got, want);
            fail();
        }
    }
#endif
}

static void test_bf16(void **state) {
    (void)state;
    assert_true(st_bf16_to_f32(0x3F80) == 1.0f);
    assert_true(st_bf16_to_f32(0xC040) == -3.0f);
    assert_int_equal(st_f32_to_bf16(1.0f), 0x3F80);
    assert_int_equal(st_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3F80);           /* tie -> even */
    assert_int_equal(st_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3F82);       /* tie -> even */
    assert_int_equal(st_f32_to_bf16(1.0f + ldexpf(1.0f, -8) + ldexpf(1.0f, -20)), 0x3F81);
    assert_int_equal(st_f32_to_bf16(bitsf(0x7F7FFFFFu)), 0x7F80);  /* FLT_MAX rounds to inf */
    assert_int_equal(st_f32_to_bf16(INFINITY), 0x7F80);
    assert_int_equal(st_f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(st_f32_to_bf16(bitsf(0x00018000u)), 0x0002); /* subnormal tie -> even */
    uint16_t n = st_f32_to_bf16(bitsf(0x7F800001u)); /* NaN whose payload is all truncated */
    assert_true(isnan(st_bf16_to_f32(n)));
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        assert_int_equal(fbits(f), h << 16);
        if (!isnan(f)) assert_int_equal(st_f32_to_bf16(f), h);
    }
}

/* ---------------------------------------------------------------------------------- */

static void fill_bytes(trng_t *r, unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(trng_uniform(r) * 256.0f);
}

static void test_roundtrip_all_dtypes(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 1);
    st_writer_t *w = st_writer_new();
    enum { NT = ST_DTYPE_COUNT };
    unsigned char *bufs[NT];
    int64_t shape[2] = {3, 5};
    char names[NT][32];
    /* A 4-byte U8 tensor first, so that F16 and F32 below sit at odd (unaligned) addresses. */
    unsigned char odd[4] = {7, 8, 9, 10};
    int64_t s3 = 4;
    assert_int_equal(st_writer_add(w, "odd", ST_U8, 1, &s3, odd), 0);
    float f16src[15], bf16src[15];
    for (int d = 0; d < NT; d++) {
        size_t nb = 15 * st_dtype_size((st_dtype_t)d);
        bufs[d] = malloc(nb);
        fill_bytes(&r, bufs[d], nb);
        if (d == ST_F16 || d == ST_BF16) {
            float *src = d == ST_F16 ? f16src : bf16src;
            for (int i = 0; i < 15; i++) {
                src[i] = trng_normal(&r) * (i == 3 ? 1e-6f : 10.0f); /* one f16 subnormal */
                uint16_t h = d == ST_F16 ? st_f32_to_f16(src[i]) : st_f32_to_bf16(src[i]);
                memcpy(bufs[d] + 2 * i, &h, 2);
            }
        }
        snprintf(names[d], sizeof names[d], "layer.%s.weight", st_dtype_name((st_dtype_t)d));
        assert_int_equal(st_writer_add(w, names[d], (st_dtype_t)d, 2, shape, bufs[d]), 0);
    }
    float scalar = 3.25f;
    int64_t zshape[2] = {0, 4}, z3[3] = {3, 0, 2};
    assert_int_equal(st_writer_add(w, "scalar", ST_F32, 0, NULL, &scalar), 0);
    assert_int_equal(st_writer_add(w, "empty", ST_F32, 2, zshape, NULL), 0);
    assert_int_equal(st_writer_add(w, "empty3", ST_I64, 3, z3, NULL), 0);
    assert_int_equal(st_writer_meta(w, "format", "pt"), 0);
    assert_int_equal(st_writer_meta(w, "note", "ünïcode \"quoted\" \n"), 0);
    assert_int_equal(st_writer_meta(w, "format", "pt2"), 0); /* last value wins */
    const char *path = tpath("all.safetensors");
    assert_int_equal(st_writer_save(w, path), 0);
    st_writer_free(w);
    assert_int_equal(count_tmp_files(), 0);

    /* header: u64 N with 8 + N a multiple of 8, padded with spaces */
    size_t fsz;
    unsigned char *raw = read_bytes(path, &fsz);
    uint64_t n;
    memcpy(&n, raw, 8);
    assert_int_equal((8 + n) % 8, 0);
    assert_true(raw[8] == '{');
    assert_non_null(strstr((const char *)raw + 8, "\"__metadata__\""));
    free(raw);

    st_file_t f;
    assert_int_equal(st_open(&f, path), 0);
    assert_int_equal(f.n_tensors, NT + 4);
    assert_int_equal(f.n_meta, 2);
    assert_string_equal(st_meta(&f, "format"), "pt2");
    assert_string_equal(st_meta(&f, "note"), "ünïcode \"quoted\" \n");
    assert_null(st_meta(&f, "missing"));
    /* offset order == insertion order here, and the data is contiguous */
    assert_string_equal(f.tensors[0].name, "odd");
    assert_ptr_equal(f.tensors[0].data, (const unsigned char *)f.map + 8 + n);
    for (int i = 1; i < f.n_tensors; i++)
        assert_ptr_equal(f.tensors[i].data,
                         (const unsigned char *)f.tensors[i - 1].data + f.tensors[i - 1].nbytes);
    assert_memory_equal(st_find(&f, "odd")->data, odd, 4);
    for (int d = 0; d < NT; d++) {
        const st_tensor_t *t = st_find(&f, names[d]);
        assert_non_null(t);
        assert_string_equal(t->name, names[d]);
        assert_int_equal(t->dtype, d);
        assert_int_equal(t->ndim, 2);
        assert_int_equal(t->shape[0], 3);
        assert_int_equal(t->shape[1], 5);
        assert_int_equal(t->numel, 15);
        assert_int_equal(t->nbytes, 15 * st_dtype_size((st_dtype_t)d));
        assert_memory_equal(t->data, bufs[d], t->nbytes);
    }
    /* F16/BF16/F32 through st_read_f32, from unaligned addresses */
    float got[15];
    const st_tensor_t *th = st_find(&f, names[ST_F16]);
    assert_true(((uintptr_t)th->data & 1) != 0);
    assert_int_equal(st_read_f32(got, th), 0);
    for (int i = 0; i < 15; i++) {
        uint16_t h;
        memcpy(&h, bufs[ST_F16] + 2 * i, 2);
        assert_int_equal(fbits(got[i]), fbits(st_f16_to_f32(h)));
        assert_true(fabsf(got[i] - f16src[i]) <= fabsf(f16src[i]) * 1e-3f + 1e-7f);
    }
    assert_int_equal(st_read_f32(got, st_find(&f, names[ST_BF16])), 0);
    for (int i = 0; i < 15; i++)
        assert_true(fabsf(got[i] - bf16src[i]) <= fabsf(bf16src[i]) * 4e-3f);
    const st_tensor_t *tf = st_find(&f, names[ST_F32]);
    assert_true(((uintptr_t)tf->data & 3) != 0);
    assert_int_equal(st_read_f32(got, tf), 0);
    assert_memory_equal(got, bufs[ST_F32], 60);
    int64_t ig[15];
    assert_int_equal(st_read_i64(ig, st_find(&f, names[ST_I64])), 0);
    assert_memory_equal(ig, bufs[ST_I64], 120);
    assert_int_equal(st_read_i64(ig, st_find(&f, names[ST_I32])), 0);
    for (int i = 0; i < 15; i++) {
        int32_t v;
        memcpy(&v, bufs[ST_I32] + 4 * i, 4);
        assert_int_equal(ig[i], v);
    }
    /* wrong dtypes name the tensor */
    assert_int_equal(st_read_f32(got, st_find(&f, names[ST_U8])), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), names[ST_U8]);
    assert_int_equal(st_read_i64(ig, st_find(&f, names[ST_F32])), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), names[ST_F32]);
    /* scalar and zero-size tensors */
    const st_tensor_t *ts = st_find(&f, "scalar");
    assert_int_equal(ts->ndim, 0);
    assert_int_equal(ts->numel, 1);
    assert_int_equal(st_read_f32(got, ts), 0);
    assert_true(got[0] == 3.25f);
    const st_tensor_t *te = st_find(&f, "empty");
    assert_int_equal(te->numel, 0);
    assert_int_equal(te->nbytes, 0);
    assert_int_equal(te->shape[0], 0);
    assert_int_equal(te->shape[1], 4);
    assert_int_equal(st_read_f32(got, te), 0);
    assert_int_equal(st_find(&f, "empty3")->ndim, 3);
    assert_null(st_find(&f, "layer"));
    assert_null(st_find(&f, ""));
    st_close(&f);
    assert_null(f.map);

    /* a plain file opened as a set */
    st_set_t s;
    assert_int_equal(st_set_open(&s, path), 0);
    assert_int_equal(s.n_files, 1);
    assert_int_equal(s.n_tensors, NT + 4);
    for (int i = 1; i < s.n_tensors; i++) assert_true(strcmp(s.tensors[i - 1]->name, s.tensors[i]->name) < 0);
    assert_memory_equal(st_set_find(&s, names[ST_F64])->data, bufs[ST_F64], 120);
    assert_null(st_set_find(&s, "nope"));
    st_set_close(&s);
    for (int d = 0; d < NT; d++) free(bufs[d]);

    /* no metadata -> no "__metadata__" key; a file of no tensors is valid too */
    w = st_writer_new();
    path = tpath("none.safetensors");
    assert_int_equal(st_writer_save(w, path), 0);
    st_writer_free(w);
    raw = read_bytes(path, &fsz);
    assert_int_equal(fsz, 16); /* "{}" padded to 8 */
    assert_null(memmem(raw, fsz, "__metadata__", 12));
    free(raw);
    assert_int_equal(st_open(&f, path), 0);
    assert_int_equal(f.n_tensors, 0);
    assert_null(st_find(&f, "x"));
    st_close(&f);
}

static void test_writer_rejects(void **state) {
    (void)state;
    st_writer_t *w = st_writer_new();
    float x[4] = {0};
    int64_t sh[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, neg[2] = {2, -1};
    assert_int_equal(st_writer_add(w, "a", ST_F32, 1, sh, x), 0);
    assert_true(st_writer_add(w, "a", ST_F32, 1, sh, x) < 0);
    assert_contains(sd_last_error(), "'a'");
    assert_true(st_writer_add(w, "b", ST_DTYPE_COUNT, 1, sh, x) < 0);
    assert_contains(sd_last_error(), "'b'");
    assert_true(st_writer_add(w, "c", ST_F32, 9, sh, x) < 0);
    assert_contains(sd_last_error(), "'c'");
    assert_true(st_writer_add(w, "d", ST_F32, -1, sh, x) < 0);
    assert_true(st_writer_add(w, "e", ST_F32, 2, neg, x) < 0);
    assert_contains(sd_last_error(), "negative");
    assert_true(st_writer_add(w, "f", ST_F32, 1, sh, NULL) < 0);
    assert_true(st_writer_add(w, "__metadata__", ST_F32, 1, sh, x) < 0);
    int64_t big[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
    assert_true(st_writer_add(w, "g", ST_F32, 2, big, x) < 0);
    assert_contains(sd_last_error(), "'g'");
    int64_t zero[2] = {0, INT64_C(1) << 40};
    assert_int_equal(st_writer_add(w, "zero", ST_F32, 2, zero, NULL), 0);
    assert_int_equal(st_writer_add(w, "A", ST_F32, 8, sh, x), 0);
    const char *path = tpath("rej.safetensors");
    assert_int_equal(st_writer_save(w, path), 0);
    st_writer_free(w);
    st_file_t f;
    assert_int_equal(st_open(&f, path), 0);
    assert_int_equal(f.n_tensors, 3);
    assert_int_equal(st_find(&f, "zero")->shape[1], INT64_C(1) << 40);
    assert_int_equal(st_find(&f, "A")->ndim, 8);
    st_close(&f);
}

/* Big enough for the threaded, vectorised path of st_read_f32 (> 2^18 elements): every
 * f16/bf16 bit pattern, read from an odd address, must match the scalar conversion. */
static void test_read_f32_large(void **state) {
    (void)state;
    enum { N = 1 << 19 };
    uint16_t *h = malloc(N * sizeof(uint16_t));
    for (int i = 0; i < N; i++) h[i] = (uint16_t)(i * 40503u); /* odd multiplier: a permutation */
    unsigned char pad = 1;
    int64_t one = 1, n = N;
    st_writer_t *w = st_writer_new();
    assert_int_equal(st_writer_add(w, "pad", ST_U8, 1, &one, &pad), 0);
    assert_int_equal(st_writer_add(w, "h", ST_F16, 1, &n, h), 0);
    assert_int_equal(st_writer_add(w, "b", ST_BF16, 1, &n, h), 0);
    const char *path = tpath("large.safetensors");
    assert_int_equal(st_writer_save(w, path), 0);
    st_writer_free(w);
    st_file_t f;
    assert_int_equal(st_open(&f, path), 0);
    float *out = malloc(N * sizeof(float));
    const st_tensor_t *t = st_find(&f, "h");
    assert_true(((uintptr_t)t->data & 1) != 0);
    assert_int_equal(st_read_f32(out, t), 0);
    for (int i = 0; i < N; i++)
        if (fbits(out[i]) != fbits(st_f16_to_f32(h[i]))) {
            print_error("f16 %04x at %d: %08x vs %08x\n", h[i], i, fbits(out[i]),
                        fbits(st_f16_to_f32(h[i])));
            fail();
        }
    assert_int_equal(st_read_f32(out, st_find(&f, "b")), 0);
    for (int i = 0; i < N; i++) assert_int_equal(fbits(out[i]), (uint32_t)h[i] << 16);
    st_close(&f);
    free(out);
    free(h);
}

/* st_to_f32, the one fp16 / bf16 widening (weights on the hot path, st_read_f32, the model hash,
 * full fine-tuning's fp32 masters): every one of the 65536 bit patterns, from an odd address,
 * gives the bits of the scalar conversion, signalling NaNs included (F16C's vcvtph2ps would
 * quiet them), in runs of every length around the 8-value vector step and past the parallel
 * threshold. */
static void test_to_f32_all_patterns(void **state) {
    (void)state;
    enum { N = 65536, BIG = 3 * 65536 + 5 };
    unsigned char *raw = malloc(2 * BIG + 1);
    uint16_t *h = malloc(sizeof(uint16_t) * BIG);
    float *out = malloc(sizeof(float) * BIG);
    for (int i = 0; i < BIG; i++) h[i] = (uint16_t)(i < N ? (unsigned)i : (unsigned)i * 40503u);
    memcpy(raw + 1, h, 2 * (size_t)BIG);   /* odd address */
    const st_dtype_t dts[2] = {ST_F16, ST_BF16};
    for (int d = 0; d < 2; d++) {
        st_to_f32(out, raw + 1, dts[d], BIG);
        for (int i = 0; i < BIG; i++) {
            const float want = dts[d] == ST_F16 ? st_f16_to_f32(h[i]) : st_bf16_to_f32(h[i]);
            if (fbits(out[i]) != fbits(want)) {
                print_error("%s %04x at %d: %08x vs %08x\n", st_dtype_name(dts[d]), h[i], i, fbits(out[i]),
                            fbits(want));
                fail();
            }
        }
    }
    /* short runs: a signalling NaN (0x7c01) at each place of a run of n, the rest normal values */
    for (int n = 1; n <= 24; n++)
        for (int at = 0; at < n; at++) {
            uint16_t v[24];
            float f[24];
            for (int i = 0; i < n; i++) v[i] = (uint16_t)(0x3c00 + i);
            v[at] = 0x7c01;
            st_to_f32(f, v, ST_F16, (size_t)n);
            for (int i = 0; i < n; i++) assert_int_equal(fbits(f[i]), fbits(st_f16_to_f32(v[i])));
        }
    const float x[3] = {1.5f, -0.0f, 3e38f};
    float y[3];
    st_to_f32(y, x, ST_F32, 3);
    assert_memory_equal(x, y, sizeof x);
    free(raw);
    free(h);
    free(out);
}

/* 2000 tensors (a model's worth): open stays fast and every name is found. */
static void test_many_tensors(void **state) {
    (void)state;
    enum { N = 2000 };
    st_writer_t *w = st_writer_new();
    float *data = calloc(N * 4, sizeof(float));
    for (int i = 0; i < N * 4; i++) data[i] = (float)i;
    char name[64];
    int64_t sh[2] = {2, 2};
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "model.blocks.%d.attn.proj.weight", (i * 7919) % N);
        assert_int_equal(st_writer_add(w, name, ST_F32, 2, sh, data + 4 * i), 0);
    }
    const char *path = tpath("many.safetensors");
    assert_int_equal(st_writer_save(w, path), 0);
    st_writer_free(w);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    st_file_t f;
    assert_int_equal(st_open(&f, path), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6;
    print_message("st_open of %d tensors: %.2f ms\n", N, ms);
    assert_true(ms < 1000.0);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "model.blocks.%d.attn.proj.weight", (i * 7919) % N);
        const st_tensor_t *t = st_find(&f, name);
        assert_non_null(t);
        float v[4];
        assert_int_equal(st_read_f32(v, t), 0);
        assert_true(v[3] == (float)(4 * i + 3));
    }
    st_close(&f);
    free(data);
}

/* ---------------------------------------------------------------------------------- */

static void write_shard(const char *name, const char *t1, const char *t2, float base) {
    st_writer_t *w = st_writer_new();
    float a[6], b[2];
    for (int i = 0; i < 6; i++) a[i] = base + i;
    b[0] = -base;
    b[1] = base * 2;
    int64_t sa[2] = {2, 3}, sb[1] = {2};
    assert_int_equal(st_writer_add(w, t1, ST_F32, 2, sa, a), 0);
    if (t2) assert_int_equal(st_writer_add(w, t2, ST_F32, 1, sb, b), 0);
    assert_int_equal(st_writer_save(w, tpath(name)), 0);
    st_writer_free(w);
}

static void test_sharded(void **state) {
    (void)state;
    write_shard("model-00001-of-00002.safetensors", "enc.w", "enc.b", 1.0f);
    write_shard("model-00002-of-00002.safetensors", "dec.w", "unlisted", 10.0f);
    const char *idx = "{\"metadata\": {\"total_size\": 80}, \"weight_map\": {"
                      "\"enc.w\": \"model-00001-of-00002.safetensors\", "
                      "\"dec.w\": \"model-00002-of-00002.safetensors\", "
                      "\"enc.b\": \"model-00001-of-00002.safetensors\"}}";
    const char *ipath = tpath("model.safetensors.index.json");
    write_bytes(ipath, idx, strlen(idx));
    st_set_t s;
    assert_int_equal(st_set_open(&s, ipath), 0);
    assert_int_equal(s.n_files, 2);
    assert_int_equal(s.n_tensors, 3);
    float v[6];
    const st_tensor_t *t = st_set_find(&s, "dec.w");
    assert_non_null(t);
    assert_int_equal(st_read_f32(v, t), 0);
    assert_true(v[0] == 10.0f && v[5] == 15.0f);
    t = st_set_find(&s, "enc.w");
    assert_non_null(t);
    assert_int_equal(st_read_f32(v, t), 0);
    assert_true(v[0] == 1.0f && v[5] == 6.0f);
    t = st_set_find(&s, "enc.b");
    assert_non_null(t);
    assert_int_equal(st_read_f32(v, t), 0);
    assert_true(v[0] == -1.0f && v[1] == 2.0f);
    assert_null(st_set_find(&s, "unlisted")); /* only the weight map's tensors */
    assert_null(st_set_find(&s, "zzz"));
    st_set_close(&s);
    assert_null(s.files);

    /* a mapped tensor missing from its shard */
    const char *bad1 = "{\"weight_map\": {\"enc.w\": \"model-00001-of-00002.safetensors\", "
                       "\"ghost.weight\": \"model-00002-of-00002.safetensors\"}}";
    ipath = tpath("bad1.index.json");
    write_bytes(ipath, bad1, strlen(bad1));
    assert_int_equal(st_set_open(&s, ipath), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "ghost.weight");
    assert_contains(sd_last_error(), "model-00002-of-00002.safetensors");
    assert_contains(sd_last_error(), "bad1.index.json");
    assert_null(s.files);

    /* a shard file that does not exist */
    const char *bad2 = "{\"weight_map\": {\"enc.w\": \"model-00001-of-00002.safetensors\", "
                       "\"x\": \"model-00003-of-00002.safetensors\"}}";
    ipath = tpath("bad2.index.json");
    write_bytes(ipath, bad2, strlen(bad2));
    assert_int_equal(st_set_open(&s, ipath), SD_ERR_IO);
    assert_contains(sd_last_error(), "model-00003-of-00002.safetensors");
    assert_null(s.files);

    /* not JSON, no weight_map, non-string shard */
    ipath = tpath("bad3.index.json");
    write_bytes(ipath, "{\"weight_map\": ", 15);
    assert_int_equal(st_set_open(&s, ipath), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "bad3.index.json");
    ipath = tpath("bad4.index.json");
    write_bytes(ipath, "{\"metadata\": {}}", 16);
    assert_int_equal(st_set_open(&s, ipath), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "weight_map");
    ipath = tpath("bad5.index.json");
    write_bytes(ipath, "{\"weight_map\": {\"t5\": 3}}", 25);
    assert_int_equal(st_set_open(&s, ipath), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "t5");
    assert_int_equal(st_set_open(&s, tpath("absent.index.json")), SD_ERR_IO);
    assert_contains(sd_last_error(), "absent.index.json");
}

/* ---------------------------------------------------------------------------------- */

static st_writer_t *small_writer(float *buf, int n) {
    st_writer_t *w = st_writer_new();
    int64_t sh = n;
    assert_int_equal(st_writer_add(w, "w", ST_F32, 1, &sh, buf), 0);
    return w;
}

static void test_atomic_write(void **state) {
    (void)state;
    float small[4] = {1, 2, 3, 4};
    st_writer_t *w = small_writer(small, 4);
    const char *target = tpath("keep.safetensors");
    assert_int_equal(st_writer_save(w, target), 0);
    size_t n0;
    unsigned char *orig = read_bytes(target, &n0);

    /* 1. the folder does not exist */
    const char *nodir = tpath("no_such_dir/x.safetensors");
    assert_int_equal(st_writer_save(w, nodir), SD_ERR_IO);
    assert_contains(sd_last_error(), "no_such_dir/x.safetensors");
    assert_true(access(nodir, F_OK) != 0);

    /* 2. the target is a directory: refused before anything is written (it was a failed rename
     * after the whole temp file; an empty folder was even replaced) */
    const char *dirt = tpath("isdir.safetensors");
    assert_int_equal(mkdir(dirt, 0755), 0);
    char inner[600];
    snprintf(inner, sizeof inner, "%s/f", dirt);
    write_bytes(inner, "x", 1);
    assert_int_equal(st_writer_save(w, dirt), SD_ERR_IO);
    assert_contains(sd_last_error(), "isdir.safetensors: exists and is a folder");
    struct stat sb;
    assert_int_equal(stat(dirt, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(count_tmp_files(), 0);
    st_writer_free(w);

    /* 3. a write fails half way (file size limit): the old target stays byte-identical */
    enum { BIG = 1 << 16 };
    float *big = calloc(BIG, sizeof(float));
    w = small_writer(big, BIG);
    /* (limit 4096: fails in the tensor data; limit 5: already in the 8-byte length, with a
     * writer of no tensors so that nothing after the header could fail instead) */
    st_writer_t *wmeta = st_writer_new();
    assert_int_equal(st_writer_meta(wmeta, "only", "metadata"), 0);
    for (int lim_bytes = 4096; lim_bytes > 0; lim_bytes = lim_bytes == 4096 ? 5 : 0) {
        struct rlimit old, lim;
        assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
        lim = old;
        lim.rlim_cur = (rlim_t)lim_bytes;
        void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
        int rc = st_writer_save(lim_bytes == 5 ? wmeta : w, target);
        setrlimit(RLIMIT_FSIZE, &old);
        signal(SIGXFSZ, oldsig);
        assert_int_equal(rc, SD_ERR_IO);
        assert_contains(sd_last_error(), "keep.safetensors");
        assert_contains(sd_last_error(), "write");
        size_t n1;
        unsigned char *now = read_bytes(target, &n1);
        assert_int_equal(n1, n0);
        assert_memory_equal(now, orig, n0);
        free(now);
        assert_int_equal(count_tmp_files(), 0);
    }
    st_writer_free(wmeta);

    /* 4. read-only folder (meaningless as root, who may write anywhere) */
    if (geteuid() != 0) {
        const char *ro = tpath("ro");
        assert_int_equal(mkdir(ro, 0755), 0);
        char rt[600];
        snprintf(rt, sizeof rt, "%s/t.safetensors", ro);
        assert_int_equal(chmod(ro, 0555), 0);
        assert_int_equal(st_writer_save(w, rt), SD_ERR_IO);
        assert_contains(sd_last_error(), "t.safetensors");
        assert_true(access(rt, F_OK) != 0);
        chmod(ro, 0755);
    }

    /* 5. a successful save replaces the target */
    assert_int_equal(st_writer_save(w, target), 0);
    st_file_t f;
    assert_int_equal(st_open(&f, target), 0);
    assert_int_equal(st_find(&f, "w")->numel, BIG);
    st_close(&f);
    assert_int_equal(count_tmp_files(), 0);
    st_writer_free(w);
    free(big);
    free(orig);
}

/* Files written together carry one pair id: a hash of both, so the same content gives the same
 * id (and bytes), other content another one; st_pair_check refuses files of two saves unless
 * force, and accepts files without ids (older versions). */
static void test_pair_id(void **state) {
    (void)state;
    float x[4] = {1, 2, 3, 4}, y[2] = {5, 6};
    char a1[600], b1[600], a2[600], b2[600];
    snprintf(a1, sizeof a1, "%s", tpath("p1_a.safetensors"));
    snprintf(b1, sizeof b1, "%s", tpath("p1_b.safetensors"));
    snprintf(a2, sizeof a2, "%s", tpath("p2_a.safetensors"));
    snprintf(b2, sizeof b2, "%s", tpath("p2_b.safetensors"));
    for (int k = 0; k < 2; k++) {   /* twice the same content */
        st_writer_t *wa = small_writer(x, 4), *wb = small_writer(y, 2);
        assert_int_equal(st_writer_meta(wa, ST_PAIR_ID_KEY, "stale id of an input"), 0);
        assert_int_equal(st_writer_save_pair(wa, k ? a2 : a1, wb, k ? b2 : b1), 0);
        st_writer_free(wa), st_writer_free(wb);
    }
    size_t n1, n2;
    unsigned char *c1 = read_bytes(a1, &n1), *c2 = read_bytes(a2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(c1, c2, n1);
    free(c1), free(c2);
    st_file_t fa, fb;
    assert_int_equal(st_open(&fa, a1), 0);
    assert_int_equal(st_open(&fb, b1), 0);
    const char *ia = st_meta(&fa, ST_PAIR_ID_KEY), *ib = st_meta(&fb, ST_PAIR_ID_KEY);
    assert_non_null(ia);
    assert_non_null(ib);
    assert_int_equal(strlen(ia), 16);
    assert_string_equal(ia, ib);
    assert_int_equal(st_pair_check(a1, b1, 0), 0);
    /* another content of the second file: another id for both */
    y[1] = 7;
    st_writer_t *wa = small_writer(x, 4), *wb = small_writer(y, 2);
    assert_int_equal(st_writer_save_pair(wa, a2, wb, b2), 0);
    st_writer_free(wa), st_writer_free(wb);
    st_file_t f2;
    assert_int_equal(st_open(&f2, a2), 0);
    assert_string_not_equal(st_meta(&f2, ST_PAIR_ID_KEY), ia);
    st_close(&f2);
    st_close(&fa), st_close(&fb);
    /* a1 with b2: refused (naming both), or a warning with force */
    assert_int_equal(st_pair_check(a1, b2, 0), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "p1_a.safetensors and ");
    assert_contains(sd_last_error(), "p2_b.safetensors were not written together");
    assert_int_equal(st_pair_check(a1, b2, 1), 0);
    /* files without ids pass; one id without the other does not; a single file passes */
    char c[600], d[600];
    snprintf(c, sizeof c, "%s", tpath("old_a.safetensors"));
    snprintf(d, sizeof d, "%s", tpath("old_b.safetensors"));
    wa = small_writer(x, 4), wb = small_writer(y, 2);
    assert_int_equal(st_writer_save(wa, c), 0);
    assert_int_equal(st_writer_save(wb, d), 0);
    st_writer_free(wa), st_writer_free(wb);
    assert_int_equal(st_pair_check(c, d, 0), 0);
    assert_int_equal(st_pair_check(a1, d, 0), SD_ERR_FORMAT);
    assert_int_equal(st_pair_check(a1, "", 0), 0);
    /* a bad second target: refused before the first file is replaced */
    char dir[600];
    snprintf(dir, sizeof dir, "%s", tpath("pair_dir"));
    assert_int_equal(mkdir(dir, 0755), 0);
    c1 = read_bytes(a1, &n1);
    wa = small_writer(y, 2), wb = small_writer(y, 2);
    assert_int_equal(st_writer_save_pair(wa, a1, wb, dir), SD_ERR_IO);
    st_writer_free(wa), st_writer_free(wb);
    c2 = read_bytes(a1, &n2);
    assert_true(n1 == n2 && !memcmp(c1, c2, n1));
    free(c1), free(c2);
    assert_int_equal(count_tmp_files(), 0);
}

/* ---------------------------------------------------------------------------------- */

#define T(name, dtype, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_malformed(void **state) {
    (void)state;
    const char *p;
    /* sizes */
    p = tpath("empty.safetensors");
    write_bytes(p, "", 0);
    expect_open_fail(p, SD_ERR_FORMAT, "too short", NULL);
    p = tpath("five.safetensors");
    write_bytes(p, "\x02\0\0\0\0", 5);
    expect_open_fail(p, SD_ERR_FORMAT, "too short", NULL);
    unsigned char hb[8 + 20] = {100};
    memcpy(hb + 8, "{}                  ", 20);
    p = tpath("past_eof.safetensors");
    write_bytes(p, hb, sizeof hb);
    expect_open_fail(p, SD_ERR_FORMAT, "past the end", NULL);
    uint64_t huge = UINT64_C(1) << 63;
    memcpy(hb, &huge, 8);
    p = tpath("huge.safetensors");
    write_bytes(p, hb, sizeof hb);
    expect_open_fail(p, SD_ERR_FORMAT, "exceeds", NULL);
    huge = ST_MAX_HEADER_BYTES + 1u;
    memcpy(hb, &huge, 8);
    p = tpath("huge2.safetensors");
    write_bytes(p, hb, sizeof hb);
    expect_open_fail(p, SD_ERR_FORMAT, "exceeds", NULL);
    p = tpath("zero_hdr.safetensors");
    write_bytes(p, "\0\0\0\0\0\0\0\0", 8);
    expect_open_fail(p, SD_ERR_FORMAT, "'{'", NULL);

    /* JSON level */
    expect_open_fail(make_st("badjson.safetensors", "{\"a\": ", 0), SD_ERR_FORMAT, "JSON", NULL);
    expect_open_fail(make_st("array.safetensors", "[1, 2]", 0), SD_ERR_FORMAT, "'{'", NULL);
    expect_open_fail(make_st("trail.safetensors", "{} x", 0), SD_ERR_FORMAT, "trailing", NULL);
    expect_open_fail(make_st("utf8.safetensors", "{\"a\xff\": 1}", 0), SD_ERR_FORMAT, "UTF-8", NULL);
    expect_open_fail(make_st("surrogate.safetensors", "{\"\xed\xa0\x80\": 1}", 0), SD_ERR_FORMAT,
                     "UTF-8", NULL);
    p = tpath("nul.safetensors");
    write_bytes(p, "\x04\0\0\0\0\0\0\0{}\0 ", 12);
    expect_open_fail(p, SD_ERR_FORMAT, "NUL", NULL);
    expect_open_fail(make_st("dupkey.safetensors",
                             "{" T("conv.w", "F32", "[1]", 0, 4) "," T("conv.w", "F32", "[1]", 4, 8) "}", 8),
                     SD_ERR_FORMAT, "duplicate", "'conv.w'");
    expect_open_fail(make_st("dupfield.safetensors",
                             "{\"t1\":{\"dtype\":\"F32\",\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                     SD_ERR_FORMAT, "'t1'", "duplicate");
    expect_open_fail(make_st("dupmeta.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0),
                     SD_ERR_FORMAT, "__metadata__", NULL);
    {
        char big[2048] = "{\"__metadata__\":{";
        for (int i = 0; i < 40; i++)
            snprintf(big + strlen(big), sizeof big - strlen(big), "\"key%d\":\"v\",", i == 33 ? 7 : i);
        strcpy(big + strlen(big) - 1, "}}");
        expect_open_fail(make_st("dupmeta40.safetensors", big, 0), SD_ERR_FORMAT, "'key7'", "duplicate");
    }
    expect_open_fail(make_st("meta_num.safetensors", "{\"__metadata__\":{\"epochs\":3}}", 0),
                     SD_ERR_FORMAT, "'epochs'", "not a string");
    expect_open_fail(make_st("meta_arr.safetensors", "{\"__metadata__\":[\"a\"]}", 0),
                     SD_ERR_FORMAT, "__metadata__", NULL);
    expect_open_fail(make_st("entry_num.safetensors", "{\"t2\": 5}", 0), SD_ERR_FORMAT, "'t2'", NULL);

    /* tensor entries */
    expect_open_fail(make_st("dtype.safetensors", "{" T("w.q", "F128", "[1]", 0, 16) "}", 16),
                     SD_ERR_FORMAT, "'w.q'", "F128");
    expect_open_fail(make_st("no_type.safetensors", "{\"w.r\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                     SD_ERR_FORMAT, "'w.r'", "dtype");
    expect_open_fail(make_st("negdim.safetensors", "{" T("w.n", "F32", "[2,-1]", 0, 8) "}", 8),
                     SD_ERR_FORMAT, "'w.n'", "negative");
    expect_open_fail(make_st("fracdim.safetensors", "{" T("w.f", "F32", "[1.5]", 0, 4) "}", 4),
                     SD_ERR_FORMAT, "'w.f'", "shape");
    expect_open_fail(make_st("dims_str.safetensors", "{" T("w.s", "F32", "\"3\"", 0, 12) "}", 12),
                     SD_ERR_FORMAT, "'w.s'", "shape");
    expect_open_fail(make_st("mismatch.safetensors", "{" T("conv.weight", "F32", "[3,4]", 0, 40) "}", 40),
                     SD_ERR_FORMAT, "'conv.weight'", "shape [3,4] x F32 = 48 bytes but data_offsets span 40");
    expect_open_fail(make_st("dims9.safetensors",
                             "{" T("w.9", "U8", "[1,1,1,1,1,1,1,1,1]", 0, 1) "}", 1),
                     SD_ERR_FORMAT, "'w.9'", "9 dims");
    expect_open_fail(make_st("numel_big.safetensors",
                             "{" T("w.o", "F32", "[1099511627776,1099511627776]", 0, 4) "}", 4),
                     SD_ERR_FORMAT, "'w.o'", "overflow");
    expect_open_fail(make_st("numel_big2.safetensors",
                             "{" T("w.o2", "F64", "[4294967296,536870912]", 0, 4) "}", 4),
                     SD_ERR_FORMAT, "'w.o2'", "overflow");
    expect_open_fail(make_st("bigdim.safetensors", "{" T("w.b", "F32", "[1e300]", 0, 4) "}", 4),
                     SD_ERR_FORMAT, "'w.b'", "too large");
    expect_open_fail(make_st("beginend.safetensors", "{" T("w.be", "F32", "[2]", 8, 0) "}", 8),
                     SD_ERR_FORMAT, "'w.be'", "begin > end");
    expect_open_fail(make_st("oob.safetensors", "{" T("w.oob", "F32", "[4]", 0, 16) "}", 8),
                     SD_ERR_FORMAT, "'w.oob'", "past the end");
    expect_open_fail(make_st("offs1.safetensors",
                             "{\"w.o1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4),
                     SD_ERR_FORMAT, "'w.o1'", "data_offsets");
    expect_open_fail(make_st("offs3.safetensors",
                             "{\"w.o3\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8),
                     SD_ERR_FORMAT, "'w.o3'", "data_offsets");
    expect_open_fail(make_st("offsstr.safetensors",
                             "{\"w.os\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}", 4),
                     SD_ERR_FORMAT, "'w.os'", "data_offsets");
    expect_open_fail(make_st("offsneg.safetensors",
                             "{\"w.on\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4),
                     SD_ERR_FORMAT, "'w.on'", "data_offsets");

    /* tiling of the data region */
    expect_open_fail(make_st("collide.safetensors",
                             "{" T("a.w", "F32", "[4]", 0, 16) "," T("b.w", "F32", "[4]", 8, 24) "}", 24),
                     SD_ERR_FORMAT, "'b.w'", "overlap");
    expect_open_fail(make_st("hole.safetensors",
                             "{" T("a.w", "F32", "[2]", 0, 8) "," T("c.w", "F32", "[2]", 16, 24) "}", 24),
                     SD_ERR_FORMAT, "'c.w'", "gap");
    expect_open_fail(make_st("late_start.safetensors", "{" T("d.w", "F32", "[2]", 4, 12) "}", 12),
                     SD_ERR_FORMAT, "'d.w'", "gap");
    expect_open_fail(make_st("leftover.safetensors", "{" T("a.w", "F32", "[2]", 0, 8) "}", 12),
                     SD_ERR_FORMAT, "4 trailing bytes", NULL);
    expect_open_fail(make_st("leftover0.safetensors", "{}", 3), SD_ERR_FORMAT, "trailing", NULL);

    /* I/O errors */
    expect_open_fail(tpath("does_not_exist.safetensors"), SD_ERR_IO, "cannot open", NULL);
    assert_int_equal(mkdir(tpath("adir.safetensors"), 0755), 0);
    expect_open_fail(tpath("adir.safetensors"), SD_ERR_IO, "not a regular file", NULL);

    /* and valid corner cases that must be accepted */
    st_file_t f;
    p = make_st("ok_zero.safetensors",
                "{\"__metadata__\":null," T("z1", "F32", "[0]", 8, 8) "," T("a", "F32", "[2]", 0, 8) ","
                T("z0", "BF16", "[3,0]", 0, 0) ",\"b\":{\"extra\":1,\"dtype\":\"U8\",\"shape\":[],"
                "\"data_offsets\":[8,9]}}   \n", 9);
    assert_int_equal(st_open(&f, p), 0);
    assert_int_equal(f.n_tensors, 4);
    assert_string_equal(f.tensors[0].name, "z0");
    assert_string_equal(f.tensors[1].name, "a");
    assert_string_equal(f.tensors[2].name, "z1");
    assert_string_equal(f.tensors[3].name, "b");
    assert_int_equal(*(const unsigned char *)st_find(&f, "b")->data, 8);
    st_close(&f);
}

/* ---------------------------------------------------------------------------------- */

/* Flip bits, overwrite bytes and truncate a valid file at 300 deterministic places: every
 * open succeeds (and then reads every tensor) or fails with a message; nothing crashes. */
/* Overlapping data in other layouts than test_malformed's (a second check of the tiling):
 * two tensors aliasing the same bytes (the data would otherwise tile the file exactly), one
 * inside another, and an overlap between the second and third of three tensors. The error
 * names the later tensor and says "overlap". */
static void test_overlap_layouts(void **state) {
    (void)state;
    expect_open_fail(make_st("alias.safetensors", "{" T("a.w", "F32", "[2]", 0, 8) "," T("b.w", "F32", "[2]", 0, 8) "}", 8),
                     SD_ERR_FORMAT, "'b.w'", "overlap");
    expect_open_fail(make_st("inside.safetensors",
                             "{" T("a.w", "F32", "[4]", 0, 16) "," T("b.w", "F32", "[1]", 4, 8) "}", 16),
                     SD_ERR_FORMAT, "'b.w'", "overlap");
    expect_open_fail(make_st("third.safetensors",
                             "{" T("a.w", "F32", "[1]", 0, 4) "," T("b.w", "F32", "[2]", 4, 12) ","
                             T("c.w", "F32", "[2]", 8, 16) "}", 16),
                     SD_ERR_FORMAT, "'c.w'", "overlap");
}

static void test_fuzz(void **state) {
    (void)state;
    st_writer_t *w = st_writer_new();
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[3] = {0x3C00, 0x0001, 0x7BFF};
    int32_t ids[2] = {7, -7};
    int64_t s23[2] = {2, 3}, s3 = 3, s2 = 2;
    assert_int_equal(st_writer_add(w, "blk.0.w", ST_F32, 2, s23, a), 0);
    assert_int_equal(st_writer_add(w, "blk.0.h", ST_F16, 1, &s3, h), 0);
    assert_int_equal(st_writer_add(w, "ids", ST_I32, 1, &s2, ids), 0);
    assert_int_equal(st_writer_add(w, "blk.0.bf", ST_BF16, 1, &s3, h), 0);
    assert_int_equal(st_writer_meta(w, "k", "v"), 0);
    const char *src = tpath("fuzz_src.safetensors");
    assert_int_equal(st_writer_save(w, src), 0);
    st_writer_free(w);
    size_t n;
    unsigned char *orig = read_bytes(src, &n);
    uint64_t hlen;
    memcpy(&hlen, orig, 8);
    unsigned char *buf = malloc(n);
    const char *p = tpath("fuzz.safetensors");
    trng_t r;
    trng_seed(&r, 300);
    int ok = 0, bad = 0;
    for (int it = 0; it < 300; it++) {
        memcpy(buf, orig, n);
        size_t len = n;
        int kind = it % 4;
        /* most positions in the 8-byte length + JSON header, where the parser lives */
        size_t pos = trng_uniform(&r) < 0.85f ? (size_t)(trng_uniform(&r) * (float)(8 + hlen))
                                               : (size_t)(trng_uniform(&r) * (float)n);
        if (pos >= n) pos = n - 1;
        if (kind == 0 || kind == 1) buf[pos] ^= (unsigned char)(1u << (it % 8));
        else if (kind == 2) buf[pos] = "{}[]\",:-019e \xff\x80"[(size_t)(trng_uniform(&r) * 16)];
        else len = pos;
        write_bytes(p, buf, len);
        st_file_t f;
        sd_clear_error();
        int rc = st_open(&f, p);
        if (rc == 0) {
            ok++;
            for (int i = 0; i < f.n_tensors; i++) {
                const st_tensor_t *t = &f.tensors[i];
                assert_ptr_equal(st_find(&f, t->name), t);
                assert_true((const unsigned char *)t->data + t->nbytes <=
                            (const unsigned char *)f.map + f.map_size);
                void *dst = malloc(t->nbytes * 8 + 8);
                if (st_read_f32(dst, t) != 0) st_read_i64(dst, t);
                free(dst);
            }
            st_close(&f);
        } else {
            bad++;
            assert_true(rc == SD_ERR_FORMAT);
            assert_true(strlen(sd_last_error()) > 0);
            assert_contains(sd_last_error(), "fuzz.safetensors");
            assert_null(f.map);
        }
    }
    print_message("fuzz: %d opened, %d rejected\n", ok, bad);
    assert_true(bad > 100);
    free(buf);
    free(orig);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_roundtrip_all_dtypes),
        cmocka_unit_test(test_writer_rejects),
        cmocka_unit_test(test_read_f32_large),
        cmocka_unit_test(test_to_f32_all_patterns),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_atomic_write),
        cmocka_unit_test(test_pair_id),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_overlap_layouts),
        cmocka_unit_test(test_fuzz),
    };
    return RUN_TESTS(argc, argv, "safetensors", tests, setup, teardown);
}
