/* Shift files and the SVD cache (src/shifts): save/load round trips, svdiff-pytorch files,
 * malformed files, applying shifts to the tiny UNet / text encoder (zero shifts and scale 0
 * leave outputs bit-identical, scales add up), the base-model hash across file layouts, the
 * SVD cache (reuse, corrupt files), --shifts parsing and the pipeline's hash check. */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "base/error.h"
#include "base/scratch.h"
#include "ops/gemm.h"
#include "pipeline/pipeline.h"
#include "shifts/shifts.h"

#define TINY "tests/fixtures/tiny-sd/diffusers"

/* ---------------------------------------------------------------------------------------
 * helpers: temp folders, files */

static char *make_tmpdir(void) {
    char *d = strdup("/tmp/svdiff-test-shifts-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            remove_tree(sub);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in), fclose(out);
}

static void copy_tree(const char *src, const char *dst) {
    struct stat st;
    assert_int_equal(stat(src, &st), 0);
    if (!S_ISDIR(st.st_mode)) {
        copy_file(src, dst);
        return;
    }
    assert_int_equal(mkdir(dst, 0777), 0);
    DIR *d = opendir(src);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char s[1024], t[1024];
        snprintf(s, sizeof s, "%s/%s", src, e->d_name);
        snprintf(t, sizeof t, "%s/%s", dst, e->d_name);
        copy_tree(s, t);
    }
    closedir(d);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* Adds `delta` to byte `off` of the data region (after the header) of a safetensors file. */
static void poke_data_byte(const char *path, size_t off, int delta) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    uint64_t hlen;
    assert_int_equal(fread(&hlen, 8, 1, f), 1);
    assert_int_equal(fseek(f, (long)(8 + hlen + off), SEEK_SET), 0);
    int c = fgetc(f);
    assert_true(c != EOF);
    assert_int_equal(fseek(f, (long)(8 + hlen + off), SEEK_SET), 0);
    fputc((c + delta) & 0xff, f);
    fclose(f);
}

/* The message of the last error must contain `want`. */
static void assert_error_mentions(const char *want) {
    if (!strstr(sd_last_error(), want)) fail_msg("error '%s' does not mention '%s'", sd_last_error(), want);
}

/* ---------------------------------------------------------------------------------------
 * the tiny model */

typedef struct {
    model_t model;
    unet_t unet;
    clip_t clip;
} tiny_t;

static void tiny_open_at(tiny_t *t, const char *path) {
    memset(t, 0, sizeof *t);
    if (model_open(&t->model, path, NULL)) fail_msg("model_open(%s): %s", path, sd_last_error());
    assert_int_equal(build_unet_from_component(&t->unet, &t->model.unet), 0);
    assert_int_equal(build_clip_from_component(&t->clip, &t->model.text_encoder), 0);
}

static void tiny_open(tiny_t *t) { tiny_open_at(t, source_path(TINY)); }

static void tiny_close(tiny_t *t) {
    free_unet(&t->unet);
    free_clip(&t->clip);
    model_close(&t->model);
}

enum { UB = 1, UH = 8, UW = 8, UT = 5 };

/* UNet output for fixed inputs (malloc'ed [UB, out_ch, UH, UW]). */
static float *unet_run(const unet_t *m) {
    trng_t r;
    trng_seed(&r, 11);
    const size_t n_in = (size_t)UB * m->cfg.in_channels * UH * UW, n_out = (size_t)UB * m->cfg.out_channels * UH * UW;
    float *x = alloc_normal(&r, n_in, 1.0f), *ctx = alloc_normal(&r, (size_t)UB * UT * m->cfg.cross_attention_dim, 1.0f);
    float t[UB] = {437.0f};
    float *out = alloc_zeros(n_out);
    unet_acts_t a;
    assert_int_equal(unet_acts_build(&a, m, UB, UH, UW, UT, 0, UNET_CKPT_NONE), 0);
    assert_int_equal(unet_forward(out, m, &a, x, t, ctx, NULL, UB, UH, UW, UT), 0);
    unet_acts_free(&a);
    free(x), free(ctx);
    return out;
}

static float *clip_run(clip_t *m) {
    const int T = 7;
    int ids[7] = {0, 5, 9, 3, 14, 2, 1};
    for (int i = 0; i < T; i++) ids[i] %= m->cfg.vocab_size;
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m->cfg, 1, T), 0);
    const float *h = clip_forward(m, &a, ids, 1, T);
    const size_t n = (size_t)T * m->cfg.hidden_size;
    float *out = malloc(sizeof(float) * n);
    memcpy(out, h, sizeof(float) * n);
    clip_acts_free(&a);
    return out;
}

static int rank_of(const weight_t *w) { return w->rows < w->cols ? w->rows : w->cols; }

/* A shift set covering every UNet layer and norm: values N(0, stddev) (0: zeros), norms with
 * [C] (element) or [1] (scalar) entries. */
static void unet_full_set(shift_set_t *s, const unet_t *m, float stddev, int scalar_norms, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    shiftset_init(s);
    for (int i = 0; i < m->n_layers; i++) {
        const int n = rank_of(&m->layers[i]->w);
        float *v = alloc_zeros((size_t)n);
        if (stddev > 0) fill_normal(&r, v, (size_t)n, stddev);
        shiftset_put(s, m->layers[i]->name, v, n);
        free(v);
    }
    for (int i = 0; i < m->n_norms; i++) {
        const int n = scalar_norms ? 1 : m->norms[i]->C;
        float *v = alloc_zeros((size_t)n);
        if (stddev > 0) fill_normal(&r, v, (size_t)n, stddev);
        shiftset_put(s, m->norms[i]->name, v, n);
        free(v);
    }
}

typedef struct {
    shift_set_t *s;
    float stddev;
    int scalar_norms, C;
    trng_t r;
} clip_set_ctx_t;

static int clip_set_visit(void *vctx, const clip_module_t *mod) {
    clip_set_ctx_t *c = vctx;
    const int n = mod->w ? rank_of(mod->w) : (c->scalar_norms ? 1 : c->C);
    float *v = alloc_zeros((size_t)n);
    if (c->stddev > 0) fill_normal(&c->r, v, (size_t)n, c->stddev);
    shiftset_put(c->s, mod->path, v, n);
    free(v);
    return 0;
}

static void clip_full_set(shift_set_t *s, clip_t *m, float stddev, int scalar_norms, uint64_t seed) {
    shiftset_init(s);
    clip_set_ctx_t c = {.s = s, .stddev = stddev, .scalar_norms = scalar_norms, .C = m->cfg.hidden_size};
    trng_seed(&c.r, seed);
    clip_visit_modules(m, NULL, clip_set_visit, &c);
}

/* ---------------------------------------------------------------------------------------
 * sets and files */

static void test_set_put_find(void **state) {
    (void)state;
    shift_set_t s;
    shiftset_init(&s);
    const float a[3] = {1, 2, 3}, b[2] = {4, 5}, c[1] = {6};
    shiftset_put(&s, "mid", a, 3);
    shiftset_put(&s, "alpha", b, 2);
    shiftset_put(&s, "zeta", c, 1);
    shiftset_put(&s, "mid", b, 2);   /* replaces */
    assert_int_equal(s.n, 3);
    assert_string_equal(s.entries[0].path, "alpha");
    assert_string_equal(s.entries[1].path, "mid");
    assert_string_equal(s.entries[2].path, "zeta");
    const shift_entry_t *e = shiftset_find(&s, "mid");
    assert_non_null(e);
    assert_int_equal(e->n, 2);
    assert_true(e->values[1] == 5.0f);
    assert_null(shiftset_find(&s, "mi"));
    shiftset_set_meta(&s, "k", "v1");
    shiftset_set_meta(&s, "k", "v2");
    assert_int_equal(s.n_meta, 1);
    assert_string_equal(shiftset_meta(&s, "k"), "v2");
    assert_null(shiftset_meta(&s, "other"));
    shiftset_free(&s);
}

static void random_set(shift_set_t *s, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    shiftset_init(s);
    const char *paths[4] = {"conv_in", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                            "mid_block.resnets.0.norm1", "conv_norm_out"};
    const int ns[4] = {36, 320, 1, 4};
    for (int i = 0; i < 4; i++) {
        float *v = alloc_normal(&r, (size_t)ns[i], 0.3f);
        v[0] = 1e-6f;   /* a value fp16 keeps only as a subnormal */
        shiftset_put(s, paths[i], v, ns[i]);
        free(v);
    }
    shiftset_set_meta(s, "base_model_hash", "0123456789abcdef");
    shiftset_set_meta(s, "instance_prompt", "a photo of sks dog");
    shiftset_set_meta(s, "steps", "500");
}

static void test_roundtrip_f32_bit_exact(void **state) {
    (void)state;
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", dir);
    shift_set_t a, b;
    random_set(&a, 1);
    assert_int_equal(shiftset_save(&a, path, ST_F32), 0);
    assert_int_equal(shiftset_load(&b, path), 0);
    assert_int_equal(b.n, a.n);
    for (int i = 0; i < a.n; i++) {
        assert_string_equal(b.entries[i].path, a.entries[i].path);
        assert_int_equal(b.entries[i].n, a.entries[i].n);
        assert_memory_equal(b.entries[i].values, a.entries[i].values, sizeof(float) * a.entries[i].n);
    }
    assert_int_equal(b.n_meta, a.n_meta);
    for (int i = 0; i < a.n_meta; i++) assert_string_equal(shiftset_meta(&b, a.meta_keys[i]), a.meta_values[i]);
    /* keys on disk are "<path>.delta", F32, 1-D */
    st_file_t f;
    assert_int_equal(st_open(&f, path), 0);
    const st_tensor_t *t = st_find(&f, "conv_in.delta");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->ndim, 1);
    assert_int_equal(t->shape[0], 36);
    st_close(&f);
    /* bad save dtype */
    assert_int_equal(shiftset_save(&a, path, ST_BF16), SD_ERR_ARG);
    shiftset_free(&a), shiftset_free(&b);
    remove_tree(dir);
    free(dir);
}

static void test_roundtrip_f16(void **state) {
    (void)state;
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/s16.safetensors", dir);
    shift_set_t a, b;
    random_set(&a, 2);
    assert_int_equal(shiftset_save(&a, path, ST_F16), 0);
    st_file_t f;
    assert_int_equal(st_open(&f, path), 0);
    assert_int_equal(st_find(&f, "conv_in.delta")->dtype, ST_F16);
    st_close(&f);
    assert_int_equal(shiftset_load(&b, path), 0);
    assert_int_equal(b.n, a.n);
    double worst = 0;
    for (int i = 0; i < a.n; i++)
        for (int j = 0; j < a.entries[i].n; j++) {
            const double x = a.entries[i].values[j], y = b.entries[i].values[j];
            /* fp16: 11 significant bits (half an ulp of relative error), subnormals below 2^-14 */
            const double tol = fabs(x) * (1.0 / 2048) + ldexp(1.0, -25);
            assert_true(fabs(x - y) <= tol);
            if (fabs(x) > 1e-3) worst = fmax(worst, fabs(x - y) / fabs(x));
        }
    assert_true(worst > 0);   /* it really went through fp16 */
    assert_string_equal(shiftset_meta(&b, "instance_prompt"), "a photo of sks dog");
    shiftset_free(&a), shiftset_free(&b);
    remove_tree(dir);
    free(dir);
}

/* A file written tensor by tensor with st_writer (as other tools would). */
static void write_raw(const char *path, const char *name, st_dtype_t dt, int ndim, const int64_t *shape,
                      const void *data) {
    st_writer_t *w = st_writer_new();
    const float ok[4] = {0};
    const int64_t ok_shape[1] = {4};
    assert_int_equal(st_writer_add(w, "conv_in.delta", ST_F32, 1, ok_shape, ok), 0);
    assert_int_equal(st_writer_add(w, name, dt, ndim, shape, data), 0);
    assert_int_equal(st_writer_save(w, path), 0);
    st_writer_free(w);
}

static void test_malformed_files(void **state) {
    (void)state;
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    shift_set_t s;
    float data[16] = {0};
    const int64_t s1[1] = {16}, s2[2] = {4, 4};
    write_raw(path, "conv_in.weight", ST_F32, 1, s1, data);
    assert_int_equal(shiftset_load(&s, path), SD_ERR_FORMAT);
    assert_error_mentions("conv_in.weight");
    assert_error_mentions("bad.safetensors");
    assert_int_equal(s.n, 0);   /* left empty */
    write_raw(path, "mid_block.attentions.0.proj_in.delta", ST_F32, 2, s2, data);
    assert_int_equal(shiftset_load(&s, path), SD_ERR_FORMAT);
    assert_error_mentions("mid_block.attentions.0.proj_in.delta");
    assert_error_mentions("1-D");
    write_raw(path, "conv_out.delta", ST_I32, 1, s1, data);
    assert_int_equal(shiftset_load(&s, path), SD_ERR_FORMAT);
    assert_error_mentions("conv_out.delta");
    float nan_data[16] = {0};
    nan_data[3] = NAN;
    write_raw(path, "conv_out.delta", ST_F32, 1, s1, nan_data);
    assert_int_equal(shiftset_load(&s, path), SD_ERR_FORMAT);
    assert_error_mentions("conv_out.delta");
    write_bytes(path, "garbage", 7);
    assert_int_equal(shiftset_load(&s, path) < 0, 1);
    snprintf(path, sizeof path, "%s/missing.safetensors", dir);
    assert_int_equal(shiftset_load(&s, path), SD_ERR_IO);

    /* sets that do not fit the model: errors name the key, the model stays as it was */
    tiny_t t;
    tiny_open(&t);
    float v[64] = {0};
    shiftset_init(&s);
    shiftset_put(&s, "conv_in", v, rank_of(&t.unet.conv_in.w) + 1);
    assert_int_equal(shiftset_apply_unet(&t.unet, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("conv_in.delta");
    shiftset_free(&s);
    shiftset_init(&s);
    shiftset_put(&s, "conv_in", v, rank_of(&t.unet.conv_in.w));
    shiftset_put(&s, "down_blocks.0.attentions.7.proj_in", v, 4);
    assert_int_equal(shiftset_apply_unet(&t.unet, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("down_blocks.0.attentions.7.proj_in.delta");
    assert_int_equal(t.unet.conv_in.w.kind, WEIGHT_DENSE);   /* nothing applied */
    shiftset_free(&s);
    shiftset_init(&s);
    shiftset_put(&s, "conv_norm_out", v, 3);   /* neither C (8) nor 1 */
    assert_int_equal(shiftset_apply_unet(&t.unet, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("conv_norm_out.delta");
    shiftset_free(&s);
    /* a text-encoder path is not a UNet module, and the other way round */
    shiftset_init(&s);
    shiftset_put(&s, "text_model.final_layer_norm", v, 1);
    assert_int_equal(shiftset_apply_unet(&t.unet, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("text_model.final_layer_norm.delta");
    shiftset_free(&s);
    shiftset_init(&s);
    shiftset_put(&s, "conv_in", v, rank_of(&t.unet.conv_in.w));
    assert_int_equal(shiftset_apply_clip(&t.clip, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("conv_in.delta");
    shiftset_free(&s);
    shiftset_init(&s);
    shiftset_put(&s, "text_model.encoder.layers.0.mlp.fc1", v, 3);
    assert_int_equal(shiftset_apply_clip(&t.clip, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("text_model.encoder.layers.0.mlp.fc1.delta");
    shiftset_free(&s);

    /* a norm already shifted in the other mode */
    unet_add_norm_shifts(&t.unet, NORMSHIFT_ELEMENT);
    shiftset_init(&s);
    shiftset_put(&s, "conv_norm_out", v, 1);
    assert_int_equal(shiftset_apply_unet(&t.unet, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("conv_norm_out.delta");
    assert_error_mentions("scalar");
    shiftset_free(&s);
    clip_add_norm_shifts(&t.clip, NORMSHIFT_SCALAR);
    shiftset_init(&s);
    shiftset_put(&s, "text_model.final_layer_norm", v, t.clip.cfg.hidden_size);
    assert_int_equal(shiftset_apply_clip(&t.clip, &s, 1.0f, NULL), SD_ERR_FORMAT);
    assert_error_mentions("text_model.final_layer_norm.delta");
    shiftset_free(&s);
    tiny_close(&t);
    remove_tree(dir);
    free(dir);
}

/* svdiff-pytorch's files: every shifted module (norms too, as [1]) under "<module>.delta",
 * UNet and text encoder in separate files, no metadata. */
static void test_svdiff_pytorch_files(void **state) {
    (void)state;
    char *dir = make_tmpdir(), upath[512], tpath[512];
    snprintf(upath, sizeof upath, "%s/spectral_shifts.safetensors", dir);
    snprintf(tpath, sizeof tpath, "%s/spectral_shifts_te.safetensors", dir);
    tiny_t t;
    tiny_open(&t);
    float *base = unet_run(&t.unet), *cbase = clip_run(&t.clip);
    /* write them as a plain safetensors writer would: keys and 1-D F32 tensors only */
    shift_set_t su, st;
    unet_full_set(&su, &t.unet, 0.2f, 1, 5);
    clip_full_set(&st, &t.clip, 0.2f, 1, 6);
    shift_set_t *sets[2] = {&su, &st};
    const char *paths[2] = {upath, tpath};
    for (int k = 0; k < 2; k++) {
        st_writer_t *w = st_writer_new();
        char names[256][160];
        assert_true(sets[k]->n <= 256);
        for (int i = 0; i < sets[k]->n; i++) {
            snprintf(names[i], sizeof names[i], "%s.delta", sets[k]->entries[i].path);
            const int64_t shape[1] = {sets[k]->entries[i].n};
            assert_int_equal(st_writer_add(w, names[i], ST_F32, 1, shape, sets[k]->entries[i].values), 0);
        }
        assert_int_equal(st_writer_save(w, paths[k]), 0);
        st_writer_free(w);
    }
    /* the folder resolves to both files */
    char rf[SHIFT_N_COMPONENTS][SHIFT_PATH_CAP];
    assert_int_equal(shift_files_resolve(dir, rf), 0);
    assert_string_equal(rf[SHIFT_UNET], upath);
    assert_string_equal(rf[SHIFT_TE], tpath);
    assert_string_equal(rf[SHIFT_TE2], "");
    shift_set_t lu, lt;
    assert_int_equal(shiftset_load(&lu, upath), 0);
    assert_int_equal(shiftset_load(&lt, tpath), 0);
    assert_int_equal(lu.n, t.unet.n_layers + t.unet.n_norms);
    assert_null(shiftset_meta(&lu, "base_model_hash"));
    assert_int_equal(shiftset_apply_unet(&t.unet, &lu, 1.0f, NULL), 0);
    assert_int_equal(shiftset_apply_clip(&t.clip, &lt, 1.0f, NULL), 0);

    /* every norm in scalar mode; its gain is gamma * ReLU(|gamma| + d) / |gamma| */
    for (int i = 0; i < t.unet.n_norms; i++) {
        const norm_layer_t *n = t.unet.norms[i];
        assert_non_null(n->shift);
        assert_int_equal(n->mode, NORMSHIFT_SCALAR);
        const float d = shiftset_find(&su, n->name)->values[0];
        assert_true(n->shift[0] == d);
        double sq = 0;
        for (int c = 0; c < n->C; c++) sq += (double)n->gamma[c] * n->gamma[c];
        const double sigma = sqrt(sq), ratio = fmax(sigma + d, 0.0) / sigma;
        float gain[64], want[64];
        assert_true(n->C <= 64);
        normshift_gain(gain, n->gamma, n->shift, n->scale, n->C, n->mode);
        for (int c = 0; c < n->C; c++) want[c] = (float)(n->gamma[c] * ratio);
        assert_close(n->name, gain, want, (size_t)n->C, 1e-6);
    }
    assert_int_equal(t.clip.norm_shift_mode, NORMSHIFT_SCALAR);
    assert_non_null(t.clip.final_ln.shift);
    /* every layer spectral with the base kept; its baked matrix is U diag(ReLU(S + d)) V^T plus
     * the SVD residual W - U diag(S) V^T (svdiff-pytorch's form, exact at d = 0) */
    unet_bake(&t.unet);
    for (int i = 0; i < t.unet.n_layers; i++) {
        const layer_t *l = t.unet.layers[i];
        assert_int_equal(l->w.kind, WEIGHT_SPECTRAL);
        assert_non_null(l->w.data);
        const spectral_t *sp = l->w.sp;
        const float *d = shiftset_find(&su, l->name)->values;
        assert_memory_equal(sp->delta, d, sizeof(float) * sp->rank);
        scratch_mark_t mark = scratch_mark();
        const float *W = weight_base_f32(&l->w);
        const size_t n = (size_t)sp->rows * sp->cols;
        float *want = malloc(sizeof(float) * n);
        for (int r = 0; r < sp->rows; r++)
            for (int c = 0; c < sp->cols; c++) {
                double acc = W[(size_t)r * sp->cols + c];
                for (int k = 0; k < sp->rank; k++)
                    acc += (double)sp->U[(size_t)r * sp->rank + k] * (fmax(sp->S[k] + d[k], 0.0) - sp->S[k]) *
                           sp->Vt[(size_t)k * sp->cols + c];
                want[(size_t)r * sp->cols + c] = (float)acc;
            }
        assert_close(l->name, l->w.baked, want, n, 2e-5);
        free(want);
        scratch_release(mark);
    }
    clip_bake_spectral(&t.clip);
    assert_non_null(t.clip.layers[0].q.w.baked);
    assert_non_null(t.clip.token_embedding.baked);
    float *out = unet_run(&t.unet), *cout = clip_run(&t.clip);
    const size_t n_out = (size_t)UB * t.unet.cfg.out_channels * UH * UW, n_c = (size_t)7 * t.clip.cfg.hidden_size;
    assert_true(rel_error(out, base, n_out) > 1e-3);   /* the shifts do something */
    assert_true(rel_error(cout, cbase, n_c) > 1e-3);
    for (size_t i = 0; i < n_out; i++) assert_true(isfinite(out[i]));
    free(out), free(cout), free(base), free(cbase);
    shiftset_free(&su), shiftset_free(&st), shiftset_free(&lu), shiftset_free(&lt);
    tiny_close(&t);
    remove_tree(dir);
    free(dir);
}

/* ---------------------------------------------------------------------------------------
 * applying */

static void test_zero_shifts_bit_identical(void **state) {
    (void)state;
    tiny_t t;
    tiny_open(&t);
    float *base = unet_run(&t.unet), *cbase = clip_run(&t.clip);
    const size_t n_out = (size_t)UB * t.unet.cfg.out_channels * UH * UW, n_c = (size_t)7 * t.clip.cfg.hidden_size;
    tiny_close(&t);
    for (int variant = 0; variant < 3; variant++) {
        /* 0: all-zero shifts (per-element norms), 1: scalar norms, 2: random shifts at scale 0 */
        tiny_open(&t);
        shift_set_t su, st;
        const float sd = variant == 2 ? 0.5f : 0.0f;
        unet_full_set(&su, &t.unet, sd, variant == 1, 7);
        clip_full_set(&st, &t.clip, sd, variant == 1, 8);
        const float scale = variant == 2 ? 0.0f : 1.0f;
        assert_int_equal(shiftset_apply_unet(&t.unet, &su, scale, NULL), 0);
        assert_int_equal(shiftset_apply_clip(&t.clip, &st, scale, NULL), 0);
        unet_bake(&t.unet);
        clip_bake_spectral(&t.clip);
        assert_int_equal(t.unet.conv_in.w.kind, WEIGHT_SPECTRAL);
        assert_non_null(t.unet.norms[0]->shift);
        float *out = unet_run(&t.unet), *cout = clip_run(&t.clip);
        assert_memory_equal(out, base, sizeof(float) * n_out);
        assert_memory_equal(cout, cbase, sizeof(float) * n_c);
        free(out), free(cout);
        shiftset_free(&su), shiftset_free(&st);
        tiny_close(&t);
    }
    free(base), free(cbase);
}

static void test_apply_scales_add(void **state) {
    (void)state;
    tiny_t t1, t2;
    tiny_open(&t1);
    tiny_open(&t2);
    shift_set_t su, st;
    unet_full_set(&su, &t1.unet, 0.3f, 0, 9);
    clip_full_set(&st, &t1.clip, 0.3f, 0, 10);
    const float a = 0.7f, b = -0.35f;
    /* t1: scale a then b; t2: once with a + b */
    assert_int_equal(shiftset_apply_unet(&t1.unet, &su, a, NULL), 0);
    assert_int_equal(shiftset_apply_unet(&t1.unet, &su, b, NULL), 0);
    assert_int_equal(shiftset_apply_clip(&t1.clip, &st, a, NULL), 0);
    assert_int_equal(shiftset_apply_clip(&t1.clip, &st, b, NULL), 0);
    assert_int_equal(shiftset_apply_unet(&t2.unet, &su, a + b, NULL), 0);
    assert_int_equal(shiftset_apply_clip(&t2.clip, &st, a + b, NULL), 0);
    shift_set_t g1, g2, c1, c2;
    shiftset_init(&g1), shiftset_init(&g2), shiftset_init(&c1), shiftset_init(&c2);
    shiftset_from_unet(&g1, &t1.unet);
    shiftset_from_unet(&g2, &t2.unet);
    shiftset_from_clip(&c1, &t1.clip);
    shiftset_from_clip(&c2, &t2.clip);
    assert_int_equal(g1.n, su.n);
    assert_int_equal(c1.n, st.n);
    shift_set_t *p1[2] = {&g1, &c1}, *p2[2] = {&g2, &c2};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(p1[k]->n, p2[k]->n);
        for (int i = 0; i < p1[k]->n; i++) {
            assert_string_equal(p1[k]->entries[i].path, p2[k]->entries[i].path);
            for (int j = 0; j < p1[k]->entries[i].n; j++)
                assert_true(fabsf(p1[k]->entries[i].values[j] - p2[k]->entries[i].values[j]) <= 1e-6f);
        }
    }
    unet_bake(&t1.unet), unet_bake(&t2.unet);
    float *o1 = unet_run(&t1.unet), *o2 = unet_run(&t2.unet);
    assert_close("unet a then b vs a + b", o1, o2, (size_t)UB * t1.unet.cfg.out_channels * UH * UW, 1e-5);
    free(o1), free(o2);
    shiftset_free(&su), shiftset_free(&st), shiftset_free(&g1), shiftset_free(&g2), shiftset_free(&c1),
        shiftset_free(&c2);
    tiny_close(&t1);
    tiny_close(&t2);
}

/* A trained model's shifts -> file -> a fresh model: the same deltas and the same output. */
static void test_from_model_save_apply(void **state) {
    (void)state;
    char *dir = make_tmpdir(), path[512], tpath[512];
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", dir);
    snprintf(tpath, sizeof tpath, "%s/spectral_shifts_te.safetensors", dir);
    tiny_t t;
    tiny_open(&t);
    assert_int_equal(unet_make_spectral(&t.unet, 0, NULL, NULL), 0);   /* as training: no base */
    unet_add_norm_shifts(&t.unet, NORMSHIFT_ELEMENT);
    assert_int_equal(clip_make_spectral(&t.clip, CLIP_SPECTRAL_LINEARS, 0), 0);
    clip_add_norm_shifts(&t.clip, NORMSHIFT_ELEMENT);
    trng_t r;
    trng_seed(&r, 12);
    for (int i = 0; i < t.unet.n_layers; i++) fill_normal(&r, t.unet.layers[i]->w.sp->delta, t.unet.layers[i]->w.sp->rank, 0.1f);
    for (int i = 0; i < t.unet.n_norms; i++) fill_normal(&r, t.unet.norms[i]->shift, t.unet.norms[i]->C, 0.1f);
    fill_normal(&r, t.clip.layers[1].fc2.w.sp->delta, t.clip.layers[1].fc2.w.sp->rank, 0.1f);
    fill_normal(&r, t.clip.layers[0].ln2.shift, t.clip.cfg.hidden_size, 0.1f);
    shift_set_t s, ts;
    shiftset_init(&s), shiftset_init(&ts);
    shiftset_from_unet(&s, &t.unet);
    shiftset_from_clip(&ts, &t.clip);
    assert_int_equal(s.n, t.unet.n_layers + t.unet.n_norms);
    assert_string_equal(shiftset_meta(&s, "norm_shift"), "element");
    assert_int_equal(ts.n, 6 * t.clip.cfg.num_layers + 2 * t.clip.cfg.num_layers + 1);
    const shift_entry_t *e = shiftset_find(&ts, "text_model.encoder.layers.1.mlp.fc2");
    assert_non_null(e);
    assert_memory_equal(e->values, t.clip.layers[1].fc2.w.sp->delta, sizeof(float) * e->n);
    assert_non_null(shiftset_find(&ts, "text_model.encoder.layers.0.layer_norm2"));
    assert_int_equal(shiftset_save(&s, path, ST_F32), 0);
    assert_int_equal(shiftset_save(&ts, tpath, ST_F32), 0);

    tiny_t f;
    tiny_open(&f);
    shift_set_t l, lt;
    assert_int_equal(shiftset_load(&l, path), 0);
    assert_int_equal(shiftset_load(&lt, tpath), 0);
    assert_int_equal(shiftset_apply_unet(&f.unet, &l, 1.0f, NULL), 0);
    assert_int_equal(shiftset_apply_clip(&f.clip, &lt, 1.0f, NULL), 0);
    for (int i = 0; i < t.unet.n_layers; i++)
        assert_memory_equal(f.unet.layers[i]->w.sp->delta, t.unet.layers[i]->w.sp->delta,
                            sizeof(float) * t.unet.layers[i]->w.sp->rank);
    assert_memory_equal(f.clip.layers[0].ln2.shift, t.clip.layers[0].ln2.shift, sizeof(float) * t.clip.cfg.hidden_size);
    /* the trained (factored, no base) and the applied (exact form, baked) models agree */
    unet_bake(&f.unet);
    float *o1 = unet_run(&t.unet), *o2 = unet_run(&f.unet);
    assert_close("trained vs applied", o2, o1, (size_t)UB * t.unet.cfg.out_channels * UH * UW, 1e-4);
    clip_bake_spectral(&f.clip);
    float *c1 = clip_run(&t.clip), *c2 = clip_run(&f.clip);
    assert_close("text encoder trained vs applied", c2, c1, (size_t)7 * t.clip.cfg.hidden_size, 1e-4);
    free(o1), free(o2), free(c1), free(c2);
    shiftset_free(&s), shiftset_free(&ts), shiftset_free(&l), shiftset_free(&lt);
    tiny_close(&t);
    tiny_close(&f);
    remove_tree(dir);
    free(dir);
}

/* ---------------------------------------------------------------------------------------
 * the base-model hash */

static void hash_of(const char *path, const char *tokenizer, char out[17]) {
    model_t m;
    model_open_options_t opt = {.tokenizer_dir = tokenizer};
    if (model_open(&m, path, &opt)) fail_msg("model_open(%s): %s", path, sd_last_error());
    assert_int_equal(model_weights_hash(&m, out), 0);
    assert_int_equal(strlen(out), 16);
    model_close(&m);
}

static void test_hash_layouts(void **state) {
    (void)state;
    char folder[17], single[17], again[17];
    hash_of(source_path(TINY), NULL, folder);
    hash_of(source_path(TINY), NULL, again);
    assert_string_equal(folder, again);
    /* the LDM single file: the same weights under other names, all F16 where the folder has F32
     * vectors, one file instead of shards: the same hash */
    char sd1[1024], tok[1024];   /* source_path returns one static buffer */
    snprintf(sd1, sizeof sd1, "%s", source_path("tests/fixtures/tiny-sd/sd1.safetensors"));
    snprintf(tok, sizeof tok, "%s", source_path(TINY "/tokenizer"));
    hash_of(sd1, tok, single);
    assert_string_equal(folder, single);
    /* pinned: the algorithm (and its F16C / scalar widening paths) must not drift, else every
     * SVD cache and shift-file check breaks silently */
    assert_string_equal(folder, "c78255c04bee174f");
    /* one weight byte changed, in the UNet and in a text-encoder shard: another hash */
    char *dir = make_tmpdir(), copy[512], file[600];
    snprintf(copy, sizeof copy, "%s/model", dir);
    copy_tree(source_path(TINY), copy);
    hash_of(copy, NULL, again);
    assert_string_equal(again, folder);
    snprintf(file, sizeof file, "%s/unet/diffusion_pytorch_model.safetensors", copy);
    poke_data_byte(file, 1001, 1);
    hash_of(copy, NULL, again);
    assert_string_not_equal(again, folder);
    poke_data_byte(file, 1001, -1);
    hash_of(copy, NULL, again);
    assert_string_equal(again, folder);
    snprintf(file, sizeof file, "%s/text_encoder/model-00002-of-00002.safetensors", copy);
    poke_data_byte(file, 40, 1);
    hash_of(copy, NULL, again);
    assert_string_not_equal(again, folder);
    remove_tree(dir);
    free(dir);
}

/* ---------------------------------------------------------------------------------------
 * the SVD cache */

typedef struct {
    int n;
    spectral_t sp[256];
} factors_t;

static void grab(factors_t *f, const weight_t *w) {
    SD_CHECK(f->n < 256, "too many");
    const spectral_t *s = w->sp;
    spectral_t *d = &f->sp[f->n++];
    spectral_init_factors(d, s->U, s->S, s->Vt, s->rows, s->cols, s->rank);
}

typedef struct {
    factors_t *f;
} clip_grab_t;

static int clip_grab_visit(void *ctx, const clip_module_t *mod) {
    if (mod->w && mod->w->kind == WEIGHT_SPECTRAL) grab(ctx, mod->w);
    return 0;
}

static void grab_model(factors_t *f, tiny_t *t) {
    f->n = 0;
    for (int i = 0; i < t->unet.n_layers; i++) grab(f, &t->unet.layers[i]->w);
    clip_visit_modules(&t->clip, NULL, clip_grab_visit, f);
}

static void free_factors(factors_t *f) {
    for (int i = 0; i < f->n; i++) spectral_free(&f->sp[i]);
    f->n = 0;
}

static void assert_factors_equal(const factors_t *a, const factors_t *b) {
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const spectral_t *x = &a->sp[i], *y = &b->sp[i];
        assert_int_equal(x->rank, y->rank);
        assert_memory_equal(x->U, y->U, sizeof(float) * x->rows * x->rank);
        assert_memory_equal(x->S, y->S, sizeof(float) * x->rank);
        assert_memory_equal(x->Vt, y->Vt, sizeof(float) * x->rank * x->cols);
    }
}

static int clip_weight_count(tiny_t *t) { return 2 + 6 * t->clip.cfg.num_layers; }

/* Makes the whole tiny model spectral through a cache opened on `dir`; returns the counters. */
static void spectral_through_cache(tiny_t *t, const char *dir, const char *hash, long *loaded, long *computed) {
    svd_cache_t *c;
    assert_int_equal(svd_cache_open(&c, dir, hash), 0);
    assert_int_equal(unet_make_spectral_cached(&t->unet, c, 0), 0);
    assert_int_equal(clip_make_spectral_cached(&t->clip, c, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 1), 0);
    *loaded = svd_cache_loaded(c), *computed = svd_cache_computed(c);
    svd_cache_close(c);
}

static void test_svd_cache_reuse(void **state) {
    (void)state;
    char *dir = make_tmpdir(), cdir[512], file[700];
    snprintf(cdir, sizeof cdir, "%s/cache/nested", dir);   /* created on open */
    char hash[17];
    tiny_t t;
    tiny_open(&t);
    assert_int_equal(model_weights_hash(&t.model, hash), 0);
    const long n_all = t.unet.n_layers + clip_weight_count(&t);
    long loaded, computed;
    spectral_through_cache(&t, cdir, hash, &loaded, &computed);
    assert_int_equal(loaded, 0);
    assert_int_equal(computed, n_all);
    factors_t *first = calloc(1, sizeof *first), *second = calloc(1, sizeof *second);
    grab_model(first, &t);
    assert_null(t.unet.conv_in.w.data);   /* keep_base 0 */
    assert_non_null(t.clip.layers[0].q.w.data);
    tiny_close(&t);
    snprintf(file, sizeof file, "%s/%s.svd.safetensors", cdir, hash);
    st_file_t f;
    assert_int_equal(st_open(&f, file), 0);
    assert_non_null(st_find(&f, "conv_in.U"));
    assert_non_null(st_find(&f, "conv_in.S"));
    assert_non_null(st_find(&f, "conv_in.Vt"));
    assert_non_null(st_find(&f, "te:text_model.encoder.layers.0.self_attn.q_proj.Vt"));
    assert_string_equal(st_meta(&f, "model_hash"), hash);
    st_close(&f);
    /* second run: every factor from the cache, bit-identical, no SVD */
    tiny_open(&t);
    spectral_through_cache(&t, cdir, hash, &loaded, &computed);
    assert_int_equal(loaded, n_all);
    assert_int_equal(computed, 0);
    grab_model(second, &t);
    assert_factors_equal(first, second);
    free_factors(second);
    tiny_close(&t);
    /* a lookup that does not fit (other shape) is refused, a missing path is just absent */
    svd_cache_t *c;
    assert_int_equal(svd_cache_open(&c, cdir, hash), 0);
    float m[6] = {1, 2, 3, 4, 5, 6};
    weight_t w = weight_dense(m, ST_F32, 2, 3);
    assert_int_equal(svd_cache_lookup(c, &(shift_name_t){SHIFT_UNET, SHIFT_SPECTRAL, "nothing.here"}, &w, 1), 0);
    assert_int_equal(svd_cache_lookup(c, &(shift_name_t){SHIFT_UNET, SHIFT_SPECTRAL, "conv_in"}, &w, 1), 0);   /* conv_in is [4, 36] */
    assert_int_equal(w.kind, WEIGHT_DENSE);
    svd_cache_close(c);
    /* another model hash: another file, nothing reused */
    tiny_open(&t);
    spectral_through_cache(&t, cdir, "00000000000000ff", &loaded, &computed);
    assert_int_equal(loaded, 0);
    assert_int_equal(computed, n_all);
    tiny_close(&t);
    free_factors(first);
    free(first), free(second);
    remove_tree(dir);
    free(dir);
}

/* bf16 compute (unet_make_spectral_stored with bf16): the UNet's factors end up in bf16 only,
 * read from the cache into bf16 one matrix at a time or computed (the cache still saved in
 * fp32), and either way the bf16 rounding of the fp32 factors, bit for bit, at half the bytes. */
static void test_svd_cache_bf16(void **state) {
    (void)state;
    if (!strcmp(sd_bf16_kernel(), "none")) {
        print_message("no avx512_bf16 on this CPU: bf16 factor storage not testable\n");
        skip();
    }
    char *dir = make_tmpdir(), hash[17];
    tiny_t t;
    tiny_open(&t);
    assert_int_equal(model_weights_hash(&t.model, hash), 0);
    factors_t *ref = calloc(1, sizeof *ref);
    for (int pass = 0; pass < 3; pass++) {
        /* 0: fp32 factors computed, the cache saved; 1: from the cache into bf16; 2: computed
         * without a cache, then stored in bf16 */
        if (pass) tiny_open(&t);
        svd_cache_t *c = NULL;
        if (pass < 2) assert_int_equal(svd_cache_open(&c, dir, hash), 0);
        assert_int_equal(unet_make_spectral_stored(&t.unet, c, pass > 0), 0);
        if (c) {
            assert_int_equal(svd_cache_loaded(c), pass == 1 ? t.unet.n_layers : 0);
            assert_int_equal(svd_cache_computed(c), pass == 0 ? t.unet.n_layers : 0);
            svd_cache_close(c);
        }
        for (int i = 0; i < t.unet.n_layers; i++) {
            const spectral_t *sp = t.unet.layers[i]->w.sp;
            assert_non_null(sp);
            if (pass == 0) {
                assert_null(sp->Uh);
                grab(ref, &t.unet.layers[i]->w);
                continue;
            }
            const spectral_t *x = &ref->sp[i];
            const size_t nu = (size_t)x->rows * x->rank, nv = (size_t)x->rank * x->cols;
            assert_null(sp->U);
            assert_null(sp->Vt);
            assert_non_null(sp->Uh);
            assert_int_equal(spectral_factor_bytes(sp) * 2, spectral_factor_bytes(x));
            for (size_t k = 0; k < nu; k++) assert_int_equal(sp->Uh[k], sd_f32_to_bf16(x->U[k]));
            for (size_t k = 0; k < nv; k++) assert_int_equal(sp->Vth[k], sd_f32_to_bf16(x->Vt[k]));
            assert_memory_equal(sp->S, x->S, sizeof(float) * x->rank);
        }
        tiny_close(&t);
    }
    /* 3: a cold cache in bf16 mode: each computed factor goes to the spill file and is stored in
     * bf16 at once; the cache file written is the fp32 one of pass 0, byte for byte */
    char *dir2 = make_tmpdir(), fa[600], fb[600];
    tiny_open(&t);
    svd_cache_t *c3 = NULL;
    assert_int_equal(svd_cache_open(&c3, dir2, hash), 0);
    assert_int_equal(unet_make_spectral_stored(&t.unet, c3, 1), 0);
    assert_int_equal(svd_cache_computed(c3), t.unet.n_layers);
    svd_cache_close(c3);
    for (int i = 0; i < t.unet.n_layers; i++) {
        const spectral_t *sp = t.unet.layers[i]->w.sp, *x = &ref->sp[i];
        assert_non_null(sp->Uh);
        for (size_t k = 0; k < (size_t)x->rows * x->rank; k++) assert_int_equal(sp->Uh[k], sd_f32_to_bf16(x->U[k]));
    }
    tiny_close(&t);
    snprintf(fa, sizeof fa, "%s/%s.svd.safetensors", dir, hash);
    snprintf(fb, sizeof fb, "%s/%s.svd.safetensors", dir2, hash);
    assert_same_file(fa, fb);
    /* a factor computed this run (spilled, not saved yet) serves a second lookup of its module */
    remove_tree(dir2);
    assert_int_equal(mkdir(dir2, 0777), 0);
    tiny_t t2;
    tiny_open(&t), tiny_open(&t2);
    assert_int_equal(svd_cache_open(&c3, dir2, hash), 0);
    svd_cache_set_bf16(c3, 1);
    const shift_name_t n0 = {SHIFT_UNET, SHIFT_SPECTRAL, t.unet.layers[0]->name};
    assert_int_equal(svd_cache_make_spectral(c3, &n0, &t.unet.layers[0]->w, 0), 0);
    assert_int_equal(svd_cache_lookup(c3, &n0, &t2.unet.layers[0]->w, 0), 1);
    const spectral_t *a0 = t.unet.layers[0]->w.sp, *b0 = t2.unet.layers[0]->w.sp;
    assert_non_null(b0->Uh);   /* read back into bf16 storage */
    for (size_t k = 0; k < (size_t)a0->rows * a0->rank; k++) assert_int_equal(b0->Uh[k], sd_f32_to_bf16(a0->U[k]));
    assert_memory_equal(b0->S, a0->S, sizeof(float) * a0->rank);
    svd_cache_close(c3);
    tiny_close(&t), tiny_close(&t2);
    remove_tree(dir2);
    free(dir2);
    free_factors(ref);
    free(ref);
    remove_tree(dir);
    free(dir);
}

static void test_svd_cache_corrupt(void **state) {
    (void)state;
    char *dir = make_tmpdir(), file[600];
    const char *hash = "0123456789abcdef";
    snprintf(file, sizeof file, "%s/%s.svd.safetensors", dir, hash);
    tiny_t t;
    long loaded, computed;
    /* garbage where the cache file should be: warning, everything recomputed, file rewritten */
    write_bytes(file, "\x10\0\0\0\0\0\0\0{\"a\":", 13);
    tiny_open(&t);
    const long n_all = t.unet.n_layers + clip_weight_count(&t);
    spectral_through_cache(&t, dir, hash, &loaded, &computed);
    assert_int_equal(loaded, 0);
    assert_int_equal(computed, n_all);
    factors_t *good = calloc(1, sizeof *good), *got = calloc(1, sizeof *got);
    grab_model(good, &t);
    tiny_close(&t);
    /* a damaged entry (a NaN in conv_in.S) and a wrong-shape one: only those two recomputed */
    st_file_t f;
    assert_int_equal(st_open(&f, file), 0);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s/rewritten.safetensors", dir);
    st_writer_t *w = st_writer_new();
    float *s_bad = NULL;
    const int64_t wrong_shape[2] = {1, 1};
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *x = &f.tensors[i];
        if (!strcmp(x->name, "conv_in.S")) {
            s_bad = malloc(x->nbytes);
            memcpy(s_bad, x->data, x->nbytes);
            s_bad[1] = NAN;
            assert_int_equal(st_writer_add(w, x->name, x->dtype, x->ndim, x->shape, s_bad), 0);
        } else if (!strcmp(x->name, "conv_out.U")) {
            assert_int_equal(st_writer_add(w, x->name, x->dtype, 2, wrong_shape, x->data), 0);
        } else {
            assert_int_equal(st_writer_add(w, x->name, x->dtype, x->ndim, x->shape, x->data), 0);
        }
    }
    for (int i = 0; i < f.n_meta; i++) st_writer_meta(w, f.meta_keys[i], f.meta_values[i]);
    assert_int_equal(st_writer_save(w, tmp), 0);
    st_writer_free(w);
    st_close(&f);
    free(s_bad);
    assert_int_equal(rename(tmp, file), 0);
    tiny_open(&t);
    spectral_through_cache(&t, dir, hash, &loaded, &computed);
    assert_int_equal(computed, 2);
    assert_int_equal(loaded, n_all - 2);
    grab_model(got, &t);
    assert_factors_equal(good, got);   /* recomputed = computed before (same LAPACK) */
    free_factors(got);
    tiny_close(&t);
    /* the repaired file serves everything */
    tiny_open(&t);
    spectral_through_cache(&t, dir, hash, &loaded, &computed);
    assert_int_equal(computed, 0);
    assert_int_equal(loaded, n_all);
    tiny_close(&t);
    /* a truncated file */
    struct stat st;
    assert_int_equal(stat(file, &st), 0);
    assert_int_equal(truncate(file, st.st_size / 2), 0);
    tiny_open(&t);
    spectral_through_cache(&t, dir, hash, &loaded, &computed);
    assert_int_equal(computed, n_all);
    tiny_close(&t);
    /* a file of another model under this name */
    tiny_open(&t);
    assert_int_equal(rename(file, tmp), 0);
    snprintf(file, sizeof file, "%s/fedcba9876543210.svd.safetensors", dir);
    assert_int_equal(rename(tmp, file), 0);
    spectral_through_cache(&t, dir, "fedcba9876543210", &loaded, &computed);
    assert_int_equal(loaded, 0);   /* its metadata names 0123456789abcdef */
    tiny_close(&t);
    free_factors(good);
    free(good), free(got);
    remove_tree(dir);
    free(dir);
}

/* Runs spectral_through_cache with stderr going to a file; returns what was printed (malloc'ed). */
static char *spectral_through_cache_stderr(tiny_t *t, const char *dir, const char *hash, long *loaded,
                                           long *computed) {
    char log[700];
    snprintf(log, sizeof log, "%s/stderr.txt", dir);
    fflush(stderr);
    const int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    spectral_through_cache(t, dir, hash, loaded, computed);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    size_t n;
    char *text = read_file(log, &n);
    assert_non_null(text);
    fputs(text, stderr);
    return text;
}

/* Item 9 of issue 17: finite, well-shaped but changed factors (one layer's singular values x3)
 * were served from the cache, and the loss moved. Each tensor now has a checksum. */
static void test_svd_cache_checksum(void **state) {
    (void)state;
    char *dir = make_tmpdir(), file[600];
    const char *hash = "0123456789abcdef", *layer = "down_blocks.0.resnets.0.conv1";
    snprintf(file, sizeof file, "%s/%s.svd.safetensors", dir, hash);
    tiny_t t;
    long loaded, computed;
    tiny_open(&t);
    const long n_all = t.unet.n_layers + clip_weight_count(&t);
    spectral_through_cache(&t, dir, hash, &loaded, &computed);
    assert_int_equal(computed, n_all);
    factors_t *good = calloc(1, sizeof *good), *got = calloc(1, sizeof *got);
    grab_model(good, &t);
    tiny_close(&t);
    /* every tensor has its checksum, and the format says so */
    st_file_t f;
    assert_int_equal(st_open(&f, file), 0);
    assert_string_equal(st_meta(&f, "format"), "svdiff svd cache 2");
    for (int i = 0; i < f.n_tensors; i++) {
        char key[600];
        snprintf(key, sizeof key, "sum:%s", f.tensors[i].name);
        assert_non_null(st_meta(&f, key));
    }
    /* the layer's singular values times 3, in place: the file stays well-formed */
    char sname[300];
    snprintf(sname, sizeof sname, "%s.S", layer);
    const st_tensor_t *S = st_find(&f, sname);
    assert_non_null(S);
    const off_t at = (off_t)((const char *)S->data - (const char *)f.map);
    float *tripled = malloc(S->nbytes);
    memcpy(tripled, S->data, S->nbytes);
    for (int64_t i = 0; i < S->numel; i++) tripled[i] *= 3.0f;
    const size_t nbytes = S->nbytes;
    st_close(&f);
    int fd = open(file, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, tripled, nbytes, at), (ssize_t)nbytes);
    close(fd);
    free(tripled);
    /* that layer alone is recomputed, with a warning naming it; the factors are a fresh run's */
    tiny_open(&t);
    char *err = spectral_through_cache_stderr(&t, dir, hash, &loaded, &computed);
    assert_int_equal(computed, 1);
    assert_int_equal(loaded, n_all - 1);
    char want[400];
    snprintf(want, sizeof want, "entry %s fails its checksum", layer);
    assert_non_null(strstr(err, want));
    free(err);
    grab_model(got, &t);
    assert_factors_equal(good, got);
    free_factors(got);
    tiny_close(&t);
    /* the rewritten file is whole again */
    tiny_open(&t);
    spectral_through_cache(&t, dir, hash, &loaded, &computed);
    assert_int_equal(computed, 0);
    assert_int_equal(loaded, n_all);
    tiny_close(&t);
    /* a file of format 1 (no checksums): untrusted, everything recomputed after one warning */
    assert_int_equal(st_open(&f, file), 0);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s/old.safetensors", dir);
    st_writer_t *w = st_writer_new();
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *x = &f.tensors[i];
        assert_int_equal(st_writer_add(w, x->name, x->dtype, x->ndim, x->shape, x->data), 0);
    }
    st_writer_meta(w, "model_hash", hash);
    st_writer_meta(w, "format", "svdiff svd cache 1");
    assert_int_equal(st_writer_save(w, tmp), 0);
    st_writer_free(w);
    st_close(&f);
    assert_int_equal(rename(tmp, file), 0);
    tiny_open(&t);
    err = spectral_through_cache_stderr(&t, dir, hash, &loaded, &computed);
    assert_int_equal(computed, n_all);
    assert_int_equal(loaded, 0);
    assert_non_null(strstr(err, "has no checksums (format 'svdiff svd cache 1', not 'svdiff svd cache 2')"));
    free(err);
    tiny_close(&t);
    free_factors(good);
    free(good), free(got);
    remove_tree(dir);
    free(dir);
}

/* ---------------------------------------------------------------------------------------
 * --shifts arguments and the pipeline */

static void test_spec_parse(void **state) {
    (void)state;
    char p[256];
    float s;
    assert_int_equal(shift_spec_parse("out/spectral_shifts.safetensors", p, sizeof p, &s), 0);
    assert_string_equal(p, "out/spectral_shifts.safetensors");
    assert_true(s == 1.0f);
    assert_int_equal(shift_spec_parse("out:0.5", p, sizeof p, &s), 0);
    assert_string_equal(p, "out");
    assert_true(s == 0.5f);
    assert_int_equal(shift_spec_parse("a:b/c.safetensors:-1.25", p, sizeof p, &s), 0);
    assert_string_equal(p, "a:b/c.safetensors");
    assert_true(s == -1.25f);
    assert_int_equal(shift_spec_parse("a:b/c.safetensors", p, sizeof p, &s), 0);
    assert_string_equal(p, "a:b/c.safetensors");
    assert_true(s == 1.0f);
    assert_int_equal(shift_spec_parse("dir:", p, sizeof p, &s), 0);
    assert_string_equal(p, "dir:");
    assert_int_equal(shift_spec_parse("x:2e-1", p, sizeof p, &s), 0);
    assert_string_equal(p, "x");
    assert_true(s == 0.2f);
    assert_int_equal(shift_spec_parse("x:1.5abc", p, sizeof p, &s), 0);
    assert_string_equal(p, "x:1.5abc");
    assert_int_equal(shift_spec_parse(":3", p, sizeof p, &s), SD_ERR_ARG);
    assert_int_equal(shift_spec_parse("", p, sizeof p, &s), SD_ERR_ARG);
    assert_int_equal(shift_spec_parse("abcdefgh", p, 4, &s), SD_ERR_ARG);
    /* a file whose name really ends in ":<number>" wins over the scale */
    char *dir = make_tmpdir(), odd[512];
    snprintf(odd, sizeof odd, "%s/weird:2", dir);
    write_bytes(odd, "x", 1);
    assert_int_equal(shift_spec_parse(odd, p, sizeof p, &s), 0);
    assert_string_equal(p, odd);
    assert_true(s == 1.0f);
    /* folders */
    char rf[SHIFT_N_COMPONENTS][SHIFT_PATH_CAP];
    assert_int_equal(shift_files_resolve(dir, rf), SD_ERR_IO);
    assert_error_mentions("spectral_shifts.safetensors");
    assert_error_mentions("spectral_shifts_te2.safetensors");
    char f1[600], f2[600];
    snprintf(f1, sizeof f1, "%s/spectral_shifts.safetensors", dir);
    write_bytes(f1, "x", 1);
    assert_int_equal(shift_files_resolve(dir, rf), 0);
    assert_string_equal(rf[0], f1);
    assert_string_equal(rf[1], "");
    assert_string_equal(rf[2], "");
    snprintf(f2, sizeof f2, "%s/spectral_shifts_te2.safetensors", dir);   /* SDXL's third part */
    write_bytes(f2, "x", 1);
    assert_int_equal(shift_files_resolve(dir, rf), 0);
    assert_string_equal(rf[2], f2);
    assert_int_equal(shift_files_resolve(f1, rf), 0);
    assert_string_equal(rf[0], f1);
    assert_string_equal(rf[2], "");
    snprintf(f1, sizeof f1, "%s/nope", dir);
    assert_int_equal(shift_files_resolve(f1, rf), SD_ERR_IO);
    remove_tree(dir);
    free(dir);
}

static void test_pipeline_hash_check(void **state) {
    (void)state;
    char *dir = make_tmpdir(), path[512], cache[512];
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    snprintf(cache, sizeof cache, "%s/svd", dir);
    pipeline_t p;
    assert_int_equal(pipeline_open(&p, source_path(TINY), NULL), 0);
    char hash[17];
    assert_int_equal(model_weights_hash(&p.model, hash), 0);
    /* one file holding UNet and text-encoder entries: routed by prefix */
    shift_set_t s;
    shiftset_init(&s);
    float v[64];
    for (int i = 0; i < 64; i++) v[i] = 0.01f * (float)(i % 7);
    shiftset_put(&s, "conv_in", v, rank_of(&p.unet.conv_in.w));
    shiftset_put(&s, "text_model.encoder.layers.0.self_attn.q_proj", v, rank_of(&p.clip.layers[0].q.w));
    shiftset_set_meta(&s, "base_model_hash", "0123456789abcdef");
    assert_int_equal(shiftset_save(&s, path, ST_F32), 0);
    pipeline_shift_t spec = {.path = path, .scale = 0.5f};
    assert_int_equal(pipeline_apply_shifts(&p, &spec, 1, 0, cache), SD_ERR_ARG);
    assert_error_mentions("0123456789abcdef");
    assert_error_mentions(hash);
    assert_error_mentions("--force");
    assert_int_equal(p.unet.conv_in.w.kind, WEIGHT_DENSE);
    assert_int_equal(pipeline_apply_shifts(&p, &spec, 1, 1, cache), 0);   /* --force */
    assert_int_equal(p.unet.conv_in.w.kind, WEIGHT_SPECTRAL);
    assert_non_null(p.unet.conv_in.w.baked);
    assert_non_null(p.clip.layers[0].q.w.baked);
    assert_true(p.unet.conv_in.w.sp->delta[1] == 0.5f * v[1]);
    assert_true(p.clip.layers[0].q.w.sp->delta[2] == 0.5f * v[2]);
    pipeline_close(&p);
    /* the matching hash: accepted; factors come from the cache the first call wrote */
    shiftset_set_meta(&s, "base_model_hash", hash);
    assert_int_equal(shiftset_save(&s, path, ST_F32), 0);
    assert_int_equal(pipeline_open(&p, source_path(TINY), NULL), 0);
    assert_int_equal(pipeline_apply_shifts(&p, &spec, 1, 0, cache), 0);
    char cfile[600];
    snprintf(cfile, sizeof cfile, "%s/%s.svd.safetensors", cache, hash);
    st_file_t f;
    assert_int_equal(st_open(&f, cfile), 0);
    assert_int_equal(f.n_tensors, 6);   /* conv_in and te:...q_proj, U S Vt each */
    st_close(&f);
    /* a bad entry names the file */
    shiftset_put(&s, "conv_out", v, 3);
    assert_int_equal(shiftset_save(&s, path, ST_F32), 0);
    assert_int_equal(pipeline_apply_shifts(&p, &spec, 1, 0, cache), SD_ERR_FORMAT);
    assert_error_mentions("s.safetensors");
    assert_error_mentions("conv_out.delta");
    pipeline_close(&p);
    shiftset_free(&s);
    remove_tree(dir);
    free(dir);
}

static int teardown(void **state) {
    (void)state;
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_put_find),
        cmocka_unit_test(test_roundtrip_f32_bit_exact),
        cmocka_unit_test(test_roundtrip_f16),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_svdiff_pytorch_files),
        cmocka_unit_test(test_zero_shifts_bit_identical),
        cmocka_unit_test(test_apply_scales_add),
        cmocka_unit_test(test_from_model_save_apply),
        cmocka_unit_test(test_hash_layouts),
        cmocka_unit_test(test_svd_cache_reuse),
        cmocka_unit_test(test_svd_cache_bf16),
        cmocka_unit_test(test_svd_cache_corrupt),
        cmocka_unit_test(test_svd_cache_checksum),
        cmocka_unit_test(test_spec_parse),
        cmocka_unit_test(test_pipeline_hash_check),
    };
    return RUN_TESTS(argc, argv, "shifts", tests, NULL, teardown);
}
