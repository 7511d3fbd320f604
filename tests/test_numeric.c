/* Non-finite and absurd numbers, and the messages around them: the fast exp/sigmoid/erf on
 * NaN, Inf and huge arguments (bytes of finite results unchanged), the finite scans, error
 * wrapping, and the command line refusing NaN/Inf weights, absurd LoRA alphas, NaN
 * --init-latents, huge shifts and combine weights, a sample_size of 1e12, a symlink loop as the
 * weights and empty captions, each with an exit code of 1 and a message naming the culprit.
 * Every fixture is written here, at test time, from the tiny model in tests/fixtures/tiny-sd.
 * The CLI is the svdiff next to this test binary (both are built into the same folder), or
 * $SVDIFF_CLI. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#include "base/error.h"
#include "io/safetensors.h"
#include "ops/fastmath.h"
#include "ops/ops.h"
#include "shifts/shifts.h"
#include "weights/spectral.h"

#define TINY "tests/fixtures/tiny-sd/diffusers"

/* ---------------------------------------------------------------------------------------
 * helpers */

static float from_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static uint32_t to_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* The exp_approx of commit ee4b08f, for finite arguments only (on NaN its float-to-int
 * conversion is undefined): the finite results of the NaN-safe version must be these bytes. */
static float exp_before(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float t = x * 1.44269504088896341f + 12582912.0f;
    const float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float pow2n;
    memcpy(&pow2n, &bits, sizeof pow2n);
    return p * pow2n;
}

static char *make_tmpdir(void) {
    char *d = strdup("/tmp/svdiff-test-numeric-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

static const char *cli_path(void) {
    static char path[4096];
    const char *env = getenv("SVDIFF_CLI");
    if (env && *env) return env;
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 16);
    assert_true(n > 0);
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    assert_non_null(slash);
    strcpy(slash + 1, "svdiff");
    return path;
}

/* Runs `svdiff <args>` (stdout and stderr into out) and returns its exit code, or 128 + the
 * signal that ended it (a sanitizer abort, a crash). */
static int run_cli(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run_cli(char *out, size_t cap, const char *fmt, ...) {
    char args[8192], cmd[12400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", cli_path(), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    printf("$ svdiff %s\n-> exit %d\n%s\n", args, rc, out);
    return rc;
}

/* Asserts an exit code and that the output holds `want`. */
static void expect(int rc, int want_rc, const char *out, const char *want) {
    if (rc != want_rc || (want && !strstr(out, want)))
        fail_msg("exit %d (expected %d), output:\n%s\nexpected it to contain: %s", rc, want_rc, out, want ? want : "");
}

/* Copies the tiny model to dir/name. */
static void copy_tiny(const char *dir, const char *name, char *model, size_t cap) {
    snprintf(model, cap, "%s/%s", dir, name);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", source_path(TINY), model);
    assert_int_equal(system(cmd), 0);
}

/* Rewrites the safetensors file src into dst (which may be src): element `at` of tensor
 * `victim` (NULL: none) set to `value` (that tensor becomes F32; the others keep their dtype and
 * bytes), and metadata `key` (NULL: none) set to `val`. */
static void rewrite_st(const char *src, const char *dst, const char *victim, int64_t at, float value,
                       const char *key, const char *val) {
    st_file_t f;
    assert_int_equal(st_open(&f, src), 0);
    float *data = NULL;
    st_writer_t *w = st_writer_new();
    int hit = victim == NULL;
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *t = &f.tensors[i];
        if (victim && !strcmp(t->name, victim)) {
            assert_true(at < t->numel);
            data = malloc(sizeof(float) * (size_t)t->numel);
            assert_int_equal(st_read_f32(data, t), 0);
            data[at] = value, hit = 1;
            assert_int_equal(st_writer_add(w, t->name, ST_F32, t->ndim, t->shape, data), 0);
        } else {
            assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
        }
    }
    assert_true(hit);
    for (int i = 0; i < f.n_meta; i++) assert_int_equal(st_writer_meta(w, f.meta_keys[i], f.meta_values[i]), 0);
    if (key) assert_int_equal(st_writer_meta(w, key, val), 0);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.new", dst);   /* the data of src stays mapped until the save */
    assert_int_equal(st_writer_save(w, tmp), 0);
    st_writer_free(w);
    free(data);
    st_close(&f);
    assert_int_equal(rename(tmp, dst), 0);
}

#define GEN "generate --model %s --prompt 'a cat' --steps 2 --seed 3"

/* ---------------------------------------------------------------------------------------
 * fastmath */

/* A dense walk over the float bit patterns (every 509th, so every exponent and both signs,
 * NaNs with many payloads, denormals) plus the special values: no undefined behaviour (this
 * test runs under UBSan in the asan build: the old exp_approx stopped there with "left shift
 * of negative value" on NaN), NaN propagates, the infinities give their limits, and every
 * finite argument gives exactly the bytes of the old formula. */
static void test_fastmath_special_values(void **state) {
    (void)state;
    const float inf = INFINITY;
    assert_true(isnan(exp_approx(NAN)) && isnan(exp_approx(-NAN)));
    assert_true(exp_approx(inf) == inf);
    assert_true(exp_approx(-inf) == 0.0f);
    assert_true(sigmoid_approx(inf) == 1.0f && sigmoid_approx(-inf) == 0.0f && isnan(sigmoid_approx(NAN)));
    assert_true(erf_approx(inf) == 1.0f && erf_approx(-inf) == -1.0f && isnan(erf_approx(NAN)));
    assert_true(erf_approx(3e38f) == 1.0f && erf_approx(-3e38f) == -1.0f);
    assert_true(exp_approx(3e38f) == exp_before(88.0f) && exp_approx(-3e38f) == exp_before(-87.0f));
    long finite = 0, nans = 0;
    for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 509) {
        const float x = from_bits((uint32_t)b);
        const float e = exp_approx(x), s = sigmoid_approx(x), r = erf_approx(x);
        if (isnan(x)) {
            assert_true(isnan(e) && isnan(s) && isnan(r));
            nans++;
        } else if (isinf(x)) {
            assert_true(e == (x > 0 ? inf : 0.0f));
        } else {
            if (to_bits(e) != to_bits(exp_before(x)))
                fail_msg("exp_approx(%a) = %a, before %a", (double)x, (double)e, (double)exp_before(x));
            if (to_bits(s) != to_bits(1.0f / (1.0f + exp_before(-x)))) fail_msg("sigmoid_approx(%a) changed", (double)x);
            assert_true(isfinite(e) && e > 0.0f && s >= 0.0f && s <= 1.0f && r >= -1.0f && r <= 1.0f);
            finite++;
        }
    }
    assert_true(finite > 8000000 && nans > 10000);
}

/* first_nonfinite: F32 at every position of a block boundary, and the raw F16 / BF16 scans at
 * an odd byte offset (tensors in a file need not be aligned). */
static void test_first_nonfinite(void **state) {
    (void)state;
    const size_t n = 10000;
    float *x = calloc(n, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)i - 5000.0f;
    assert_int_equal(first_nonfinite(x, n), n);
    assert_int_equal(first_nonfinite(x, 0), 0);
    const size_t at[] = {0, 1, 4095, 4096, 4097, 8191, 9999};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
        const float bad[3] = {NAN, INFINITY, -INFINITY};
        for (int j = 0; j < 3; j++) {
            const float keep = x[at[k]];
            x[at[k]] = bad[j];
            assert_int_equal(first_nonfinite(x, n), at[k]);
            x[at[k]] = keep;
        }
    }
    x[n - 1] = 3e38f;   /* huge is finite */
    assert_int_equal(first_nonfinite(x, n), n);
    free(x);
    unsigned char raw[2 * 300 + 1] = {0};
    uint16_t h = st_f32_to_f16(1.5f), inf16 = st_f32_to_f16(INFINITY), nan_bf = st_f32_to_bf16(NAN);
    for (int i = 0; i < 300; i++) memcpy(raw + 1 + 2 * i, &h, 2);
    assert_int_equal(first_nonfinite_raw(raw + 1, 2, 0x7C00u, 300), 300);
    memcpy(raw + 1 + 2 * 123, &inf16, 2);
    assert_int_equal(first_nonfinite_raw(raw + 1, 2, 0x7C00u, 300), 123);
    memcpy(raw + 1 + 2 * 7, &nan_bf, 2);
    assert_int_equal(first_nonfinite_raw(raw + 1, 2, 0x7F80u, 300), 7);
}

/* ---------------------------------------------------------------------------------------
 * error wrapping */

static void test_error_wrap(void **state) {
    (void)state;
    assert_int_equal(sd_error(SD_ERR_IO, "%s: cannot open: %s", "/x/y.safetensors", "No such file"), SD_ERR_IO);
    assert_int_equal(sd_error_wrap(SD_ERR_IO, "SVD cache"), SD_ERR_IO);
    assert_string_equal(sd_last_error(), "SVD cache: /x/y.safetensors: cannot open: No such file");
    assert_int_equal(sd_error_wrap(SD_ERR_NUMERIC, "SVD of %s failed", "down.0"), SD_ERR_NUMERIC);
    assert_string_equal(sd_last_error(), "SVD of down.0 failed: SVD cache: /x/y.safetensors: cannot open: No such file");
    /* a message filling the buffer: truncated, never overrun */
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    sd_error(SD_ERR_IO, "%s", big);
    sd_error_wrap(SD_ERR_IO, "unet");
    assert_true(!strncmp(sd_last_error(), "unet: aaaa", 10) && strlen(sd_last_error()) < 1024);
    sd_clear_error();
}

/* A real wrapping site: the SVD cache save into a folder that has gone away. The message is
 * "SVD cache: <the writer's message>", with the prefix once (before: the buffer was formatted
 * into itself, "SVD cache: SVD cache: ..." or worse). */
static void test_svd_cache_error_wrapped_once(void **state) {
    (void)state;
    char *dir = make_tmpdir(), cache_dir[512];
    snprintf(cache_dir, sizeof cache_dir, "%s/cache", dir);
    svd_cache_t *c = NULL;
    assert_int_equal(svd_cache_open(&c, cache_dir, "0123456789abcdef"), 0);
    float W[6] = {1, 2, 3, 4, 5, 7};
    spectral_t sp;
    assert_int_equal(spectral_init(&sp, W, 2, 3), 0);
    svd_cache_put(c, &(shift_name_t){SHIFT_UNET, SHIFT_SPECTRAL, "layer"}, &sp);
    assert_int_equal(rm_tree(cache_dir), 0);
    int rc = svd_cache_save(c);
    const char *msg = sd_last_error();
    printf("%s\n", msg);
    assert_true(rc != 0);
    assert_true(!strncmp(msg, "SVD cache: ", 11));
    assert_null(strstr(msg + 11, "SVD cache: "));
    assert_non_null(strstr(msg, cache_dir));   /* the writer's message names the file, intact */
    assert_non_null(strstr(msg, "cannot create temporary file"));
    svd_cache_close(c);
    spectral_free(&sp);
    rm_tree(dir);
    free(dir);
}

/* A --shifts/--lora/--delta strength that is NaN, Inf, overflows a float or is absurd is an
 * error naming it (before: "nan" and "1e39" became part of the path, and 1e30 was applied). */
static void test_spec_scale_refused(void **state) {
    (void)state;
    char p[256];
    float s = 0.0f;
    const char *bad[] = {"out:nan", "out:inf", "out:-inf", "out:1e39", "out:1e30", "out:-2e4"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        assert_int_equal(shift_spec_parse(bad[k], p, sizeof p, &s), SD_ERR_ARG);
        assert_non_null(strstr(sd_last_error(), "is not a finite number in [-10000, 10000]"));
        assert_non_null(strstr(sd_last_error(), strchr(bad[k], ':') + 1));
    }
    assert_int_equal(shift_spec_parse("out:-1e4", p, sizeof p, &s), 0);
    assert_string_equal(p, "out");
    assert_true(s == -1e4f);
    assert_int_equal(shift_spec_parse("out:1e-50", p, sizeof p, &s), 0);   /* underflow to 0 is a scale of 0 */
    assert_true(s == 0.0f);
}

/* ---------------------------------------------------------------------------------------
 * the command line */

/* NaN in a UNet weight, +Inf in a VAE weight: generate refuses the model naming the tensor
 * (before: exit 0 and an all-black PNG, or UB under UBSan), and writes nothing. */
static void test_cli_nonfinite_weights(void **state) {
    (void)state;
    char *dir = make_tmpdir(), model[512], file[1024], png[1024], out[16384];
    snprintf(png, sizeof png, "%s/a.png", dir);
    copy_tiny(dir, "nan", model, sizeof model);
    snprintf(file, sizeof file, "%s/unet/diffusion_pytorch_model.safetensors", model);
    rewrite_st(file, file, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.weight", 5, NAN, NULL, NULL);
    expect(run_cli(out, sizeof out, GEN " -o %s", model, png), 1, out,
           "unet: tensor 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.weight' holds a non-finite value");
    assert_false(exists(png));
    copy_tiny(dir, "inf", model, sizeof model);
    snprintf(file, sizeof file, "%s/vae/diffusion_pytorch_model.fp16.safetensors", model);
    rewrite_st(file, file, "decoder.conv_out.weight", 0, INFINITY, NULL, NULL);
    expect(run_cli(out, sizeof out, GEN " -o %s", model, png), 1, out,
           "vae: tensor 'decoder.conv_out.weight' holds a non-finite value");
    assert_false(exists(png));
    rm_tree(dir);
    free(dir);
}

/* A rank-1 LoRA of one UNet projection with metadata lora_alpha: "nan", "1e39" (Inf as a
 * float) and "1e30" are refused naming the file and key; "2" is applied. */
static void test_cli_lora_alpha(void **state) {
    (void)state;
    char *dir = make_tmpdir(), lora[1024], png[1024], out[16384];
    snprintf(png, sizeof png, "%s/a.png", dir);
    const char *mod = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v";
    float A[4] = {0.1f, -0.2f, 0.3f, 0.05f}, B[4] = {0.2f, 0.1f, -0.1f, 0.3f};
    const int64_t sa[2] = {1, 4}, sb[2] = {4, 1};
    const char *alphas[4] = {"nan", "1e39", "1e30", "2"};
    for (int k = 0; k < 4; k++) {
        snprintf(lora, sizeof lora, "%s/lora%d.safetensors", dir, k);
        st_writer_t *w = st_writer_new();
        char na[256], nb[256];
        snprintf(na, sizeof na, "%s.lora_A.weight", mod), snprintf(nb, sizeof nb, "%s.lora_B.weight", mod);
        assert_int_equal(st_writer_add(w, na, ST_F32, 2, sa, A), 0);
        assert_int_equal(st_writer_add(w, nb, ST_F32, 2, sb, B), 0);
        assert_int_equal(st_writer_meta(w, "lora_alpha", alphas[k]), 0);
        assert_int_equal(st_writer_save(w, lora), 0);
        st_writer_free(w);
        int rc = run_cli(out, sizeof out, GEN " --lora %s -o %s", source_path(TINY), lora, png);
        if (k < 3) {
            char want[1200];
            snprintf(want, sizeof want, "%s: metadata 'lora_alpha' = '%s' is not a finite number", lora, alphas[k]);
            expect(rc, 1, out, want);
            assert_false(exists(png));
        } else {
            expect(rc, 0, out, "wrote ");
            assert_true(exists(png));
        }
    }
    rm_tree(dir);
    free(dir);
}

/* --init-latents holding a NaN: refused naming the file (before: exit 0, a black PNG). */
static void test_cli_init_latents_nan(void **state) {
    (void)state;
    char *dir = make_tmpdir(), lat[1024], png[1024], out[16384];
    snprintf(lat, sizeof lat, "%s/lat.safetensors", dir);
    snprintf(png, sizeof png, "%s/a.png", dir);
    expect(run_cli(out, sizeof out, GEN " --save-latents %s -o %s", source_path(TINY), lat, png), 0, out, NULL);
    assert_int_equal(unlink(png), 0);
    rewrite_st(lat, lat, "latents", 3, NAN, NULL, NULL);
    expect(run_cli(out, sizeof out, GEN " --init-latents %s -o %s", source_path(TINY), lat, png), 1, out,
           "lat.safetensors: tensor 'latents' holds a non-finite value (NaN or Inf) at flat index 3");
    assert_false(exists(png));
    rm_tree(dir);
    free(dir);
}

/* Every shift 3e38 (finite, and accepted by the shift reader): the weights blow up, and
 * generate and edit stop at the first UNet output, naming the stage (before: UB in
 * exp_approx under UBSan, an all-black PNG and exit 0 in the release build). */
static void test_cli_huge_shifts(void **state) {
    (void)state;
    char *dir = make_tmpdir(), sh[1024], png[1024], out[16384];
    snprintf(sh, sizeof sh, "%s/huge.safetensors", dir);
    snprintf(png, sizeof png, "%s/a.png", dir);
    shift_set_t s;
    assert_int_equal(shiftset_load(&s, source_path("tests/fixtures/shifts/zero/spectral_shifts.safetensors")), 0);
    for (int i = 0; i < s.n; i++)
        for (int j = 0; j < s.entries[i].n; j++) s.entries[i].values[j] = 3e38f;
    assert_int_equal(shiftset_save(&s, sh, ST_F32), 0);
    shiftset_free(&s);
    expect(run_cli(out, sizeof out, GEN " --shifts %s --svd-cache %s/cache -o %s", source_path(TINY), sh, dir, png), 1,
           out, "the UNet output at step 1 (timestep");
    assert_false(exists(png));
    char odir[1024], img[1024];
    snprintf(odir, sizeof odir, "%s/edit", dir);
    snprintf(img, sizeof img, "%s", source_path("tests/fixtures/train/images/dog1.png"));   /* a static buffer */
    expect(run_cli(out, sizeof out, "edit --model %s --image %s --prompt 'a cat' --edit 'a dog' --shifts %s --sample-steps 2 "
                   "--svd-cache %s/cache -o %s", source_path(TINY), img, sh, dir, odir),
           1, out, "is not finite");
    rm_tree(dir);
    free(dir);
}

/* shifts combine --weights 3e38,3e38 overflows to Inf: refused naming the shift, nothing
 * written (before: exit 0 and a file every reader refuses). */
static void test_cli_combine_huge_weights(void **state) {
    (void)state;
    char *dir = make_tmpdir(), o[1024], out[16384];
    snprintf(o, sizeof o, "%s/c.safetensors", dir);
    char a[1024];
    snprintf(a, sizeof a, "%s", source_path("tests/fixtures/toolbox/a.safetensors"));   /* a static buffer */
    expect(run_cli(out, sizeof out, "shifts combine %s %s --weights 3e38,3e38 -o %s", a,
                   source_path("tests/fixtures/toolbox/b.safetensors"), o),
           1, out, "not written: shift '");
    assert_non_null(strstr(out, "is not finite"));
    assert_false(exists(o));
    expect(run_cli(out, sizeof out, "shifts scale %s 3e38 -o %s", a, o),
           1, out, "is not finite");
    assert_false(exists(o));
    rm_tree(dir);
    free(dir);
}

/* A UNet sample_size of 1e12 is reported as written (before: "-2147483648", from an undefined
 * double-to-int conversion). */
static void test_cli_sample_size(void **state) {
    (void)state;
    char *dir = make_tmpdir(), model[512], cfg[1024], png[1024], out[16384];
    snprintf(png, sizeof png, "%s/a.png", dir);
    copy_tiny(dir, "m", model, sizeof model);
    snprintf(cfg, sizeof cfg, "%s/unet/config.json", model);
    size_t n = 0;
    char *json = read_file(cfg, &n);
    assert_non_null(json);
    char *at = strstr(json, "\"sample_size\": 8");
    assert_non_null(at);
    FILE *f = fopen(cfg, "wb");
    fprintf(f, "%.*s\"sample_size\": 1e12%s", (int)(at - json), json, at + strlen("\"sample_size\": 8"));
    fclose(f);
    free(json);
    expect(run_cli(out, sizeof out, GEN " -o %s", model, png), 1, out, "\"sample_size\" is 1000000000000");
    assert_null(strstr(out, "-2147483648"));
    assert_false(exists(png));
    rm_tree(dir);
    free(dir);
}

/* The UNet weights file is a symlink loop: the error names it with the OS's reason (before:
 * "no weights: expected diffusion_pytorch_model.safetensors ..."). */
static void test_cli_symlink_loop(void **state) {
    (void)state;
    char *dir = make_tmpdir(), model[512], file[1024], png[1024], out[16384];
    snprintf(png, sizeof png, "%s/a.png", dir);
    copy_tiny(dir, "m", model, sizeof model);
    snprintf(file, sizeof file, "%s/unet/diffusion_pytorch_model.safetensors", model);
    assert_int_equal(unlink(file), 0);
    assert_int_equal(symlink(file, file), 0);
    char want[1200];
    snprintf(want, sizeof want, "%s: cannot open: %s", file, strerror(ELOOP));
    expect(run_cli(out, sizeof out, GEN " -o %s", model, png), 1, out, want);
    assert_null(strstr(out, "no weights"));
    rm_tree(dir);
    free(dir);
}

/* tokenizer-train on a captions file without captions (before: "bpe_learn: NULL argument"). */
static void test_cli_tokenizer_train_empty(void **state) {
    (void)state;
    char *dir = make_tmpdir(), caps[1024], out[16384];
    snprintf(caps, sizeof caps, "%s/captions.txt", dir);
    FILE *f = fopen(caps, "wb");
    fputs("\n\r\n\n", f);
    fclose(f);
    expect(run_cli(out, sizeof out, "tokenizer-train --captions %s -o %s/tok", caps, dir), 1, out,
           "captions.txt: no captions: the file is empty or holds only empty lines");
    assert_null(strstr(out, "NULL argument"));
    rm_tree(dir);
    free(dir);
}

/* --resume from a checkpoint whose metadata holds "nan", "1e999" or a non-number where a number
 * belongs: refused naming the file and key (before: the run resumed, exit 0, "nan" in its
 * loss). The checkpoint is left by a run ended after step 2 (SVDIFF_TEST_ABORT_AT_STEP). */
static void test_cli_checkpoint_metadata(void **state) {
    (void)state;
    char *dir = make_tmpdir(), o[1024], ck[1200], keep[1200], args[4096], out[16384];
    snprintf(o, sizeof o, "%s/run", dir);
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", o);
    snprintf(keep, sizeof keep, "%s/checkpoint.keep", dir);
    char images[1024];
    snprintf(images, sizeof images, "%s", source_path("tests/fixtures/train/images"));   /* a static buffer */
    snprintf(args, sizeof args, "train --model %s --instance-dir %s --instance-prompt 'a photo of sks dog' "
             "--resolution 16 --steps 4 --checkpoint-every 1 --svd-cache none --threads 1 --quiet -o %s",
             source_path(TINY), images, o);
    setenv("SVDIFF_TEST_ABORT_AT_STEP", "2", 1);
    int rc = run_cli(out, sizeof out, "%s", args);
    unsetenv("SVDIFF_TEST_ABORT_AT_STEP");
    expect(rc, 137, out, NULL);
    assert_true(exists(ck));
    rewrite_st(ck, keep, NULL, 0, 0.0f, NULL, NULL);
    static const char *const cases[][3] = {
        {"loss_ema", "nan", "checkpoint metadata 'loss_ema' = 'nan' is not a number"},
        {"elapsed", "1e999", "checkpoint metadata 'elapsed' = '1e999' is not a number"},
        {"threads", "two", "checkpoint metadata 'threads' = 'two' is not a thread count"},
    };
    for (int k = 0; k < 3; k++) {
        rewrite_st(keep, ck, NULL, 0, 0.0f, cases[k][0], cases[k][1]);
        expect(run_cli(out, sizeof out, "%s --resume", args), 1, out, cases[k][2]);
        assert_non_null(strstr(out, ck));
    }
    rewrite_st(keep, ck, NULL, 0, 0.0f, NULL, NULL);   /* the untouched checkpoint resumes */
    expect(run_cli(out, sizeof out, "%s --resume", args), 0, out, NULL);
    rm_tree(dir);
    free(dir);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fastmath_special_values),
        cmocka_unit_test(test_first_nonfinite),
        cmocka_unit_test(test_error_wrap),
        cmocka_unit_test(test_svd_cache_error_wrapped_once),
        cmocka_unit_test(test_spec_scale_refused),
        cmocka_unit_test(test_cli_nonfinite_weights),
        cmocka_unit_test(test_cli_lora_alpha),
        cmocka_unit_test(test_cli_init_latents_nan),
        cmocka_unit_test(test_cli_huge_shifts),
        cmocka_unit_test(test_cli_combine_huge_weights),
        cmocka_unit_test(test_cli_sample_size),
        cmocka_unit_test(test_cli_symlink_loop),
        cmocka_unit_test(test_cli_tokenizer_train_empty),
        cmocka_unit_test(test_cli_checkpoint_metadata),
    };
    return RUN_TESTS(argc, argv, "numeric", tests, NULL, NULL);
}
