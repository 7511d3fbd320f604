/* Tests of `svdiff shifts to-lora` (src/pipeline/lora_export.c) on the tiny model with random shifts
 * of every shiftable module (UNet convs, linears and norms; text-encoder linears, embeddings and
 * LayerNorms):
 *  - the rank rule (energy, cap, zero layers) and its monotonicity over whole files;
 *  - the kohya file read back by a key parser written the way kohya-format loaders map keys (the
 *    model's parameter names with '.' -> '_' under lora_unet_ / lora_te_, then the suffix), every
 *    key a real module with the right shapes, every shifted module present;
 *  - a full-rank export merged by svdiff's --lora loader gives the shifted weights and the same
 *    latents as the shifts (1e-5 relative), in-process and through the svdiff binary;
 *  - refusals: another base model (unless force), bad energy / rank, norms in the diffusers format. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "base/scratch.h"
#include "io/model.h"
#include "pipeline/adapters.h"
#include "pipeline/lora_export.h"
#include "shifts/toolbox.h"
#include "testutil.h"

#define TINY "tests/fixtures/tiny-sd/diffusers"
#define UNET_FIX "tests/fixtures/shifts/zero/spectral_shifts.safetensors"
#define TE_FIX "tests/fixtures/shifts/zero/spectral_shifts_te.safetensors"

static char g_dir[256];

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/svdiff-tolora-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    rm_tree(g_dir);
    return 0;
}

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static void open_tiny(pipeline_t *p) {
    int rc = pipeline_open(p, source_path(TINY), NULL);
    if (rc) print_error("pipeline_open: %s\n", sd_last_error());
    assert_int_equal(rc, 0);
}

/* The tiny model's shift layout (the zero fixture) with random values: matrices get deltas of
 * about their singular values' size (some push S + delta below 0, so the ReLU acts), norms 0.1. */
static void random_shifts(shift_set_t s[2], uint64_t seed) {
    pipeline_t p;
    open_tiny(&p);
    char hash[17];
    assert_int_equal(model_weights_hash(&p.model, hash), 0);
    assert_int_equal(shiftset_load(&s[0], source_path(UNET_FIX)), 0);
    assert_int_equal(shiftset_load(&s[1], source_path(TE_FIX)), 0);
    trng_t r;
    trng_seed(&r, seed);
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < s[c].n; i++) {
            shift_entry_t *e = &s[c].entries[i];
            fill_normal(&r, e->values, e->n, 0.1f);
            if (toolbox_is_norm_path(e->path)) continue;
            weight_t *w = pipeline_find_weight(&p, c, e->path);
            assert_non_null(w);
            assert_int_equal(weight_make_spectral(w, 1), 0);
            for (int j = 0; j < e->n; j++) e->values[j] = w->sp->S[j] * (trng_uniform(&r) * 1.6f - 1.1f);
        }
        shiftset_set_meta(&s[c], "base_model_hash", hash);
        shiftset_set_meta(&s[c], "instance_prompt", "a photo of sks dog");
    }
    pipeline_close(&p);
}

static lora_export_opts_t opts(double energy, int max_rank) {
    lora_export_opts_t o = {.format = LORA_FORMAT_KOHYA, .max_rank = max_rank, .energy = energy, .dtype = ST_F32};
    return o;
}

static int export_to(const shift_set_t s[2], const lora_export_opts_t *o, const char *file, lora_export_stats_t st[2]) {
    pipeline_t p;
    open_tiny(&p);
    const shift_set_t *sets[2] = {&s[0], &s[1]};
    int rc = lora_export(&p, sets, 2, o, file, st);
    pipeline_close(&p);
    return rc;
}

static void free_sets(shift_set_t s[2]) { shiftset_free(&s[0]), shiftset_free(&s[1]); }

/* ---- the rank rule ---- */

static void test_rank_rule(void **state) {
    (void)state;
    const float ds[6] = {0.1f, -3.0f, 0.0f, 2.0f, -1.0f, 0.0f};   /* squares 0.01 9 0 4 1 0: total 14.01 */
    int order[6];
    double kept;
    assert_int_equal(lora_export_rank(ds, 6, 0.5, 0, order, &kept), 1);   /* 9 >= 7.005 */
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 3);
    assert_int_equal(order[2], 4);
    assert_int_equal(order[3], 0);
    assert_true(fabs(kept - 9.0) < 1e-6);
    assert_int_equal(lora_export_rank(ds, 6, 0.9, 0, order, &kept), 2);   /* 13 >= 12.609 */
    assert_int_equal(lora_export_rank(ds, 6, 0.99, 0, order, &kept), 3);  /* 14 >= 13.87 */
    assert_int_equal(lora_export_rank(ds, 6, 1.0, 0, order, &kept), 4);   /* the non-zero entries, not 6 */
    assert_true(fabs(kept - 14.01) < 1e-5);
    assert_int_equal(lora_export_rank(ds, 6, 1.0, 2, order, &kept), 2);   /* capped */
    assert_true(fabs(kept - 13.0) < 1e-6);
    const float zero[3] = {0, 0, 0};
    assert_int_equal(lora_export_rank(zero, 3, 0.99, 0, order, &kept), 0);
    assert_true(kept == 0);
    /* monotonic in the energy for random layers */
    trng_t r;
    trng_seed(&r, 5);
    float x[40];
    int o2[40];
    for (int t = 0; t < 50; t++) {
        fill_normal(&r, x, 40, 1.0f);
        int last = 0;
        for (double e = 0.05; e <= 1.0; e += 0.05) {
            const int k = lora_export_rank(x, 40, e, 0, o2, NULL);
            assert_true(k >= last);
            last = k;
        }
    }
}

/* ---- the kohya file, read as kohya-format loaders read it ---- */

typedef struct {
    char lora_name[400];   /* lora_unet_down_blocks_0_resnets_0_conv1 */
    char module[400];      /* down_blocks.0.resnets.0.conv1 */
    int te;
    const st_tensor_t *weight;   /* the model's "<module>.weight" */
} kmod_t;

/* The loaders' table: every "<module>.weight" parameter of the model, named with its dots as '_'. */
static kmod_t *kohya_table(const model_t *m, int *n) {
    const model_component_t *comp[2] = {&m->unet, &m->text_encoder};
    kmod_t *t = calloc((size_t)(m->unet.n_tensors + m->text_encoder.n_tensors), sizeof *t);
    *n = 0;
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < comp[c]->n_tensors; i++) {
            const char *name = comp[c]->tensors[i].name;
            const size_t L = strlen(name);
            if (L < 8 || strcmp(name + L - 7, ".weight")) continue;
            kmod_t *k = &t[(*n)++];
            snprintf(k->module, sizeof k->module, "%.*s", (int)(L - 7), name);
            int j = snprintf(k->lora_name, sizeof k->lora_name, "%s", c ? "lora_te_" : "lora_unet_");
            for (const char *s = k->module; *s; s++) k->lora_name[j++] = *s == '.' ? '_' : *s;
            k->lora_name[j] = '\0';
            k->te = c, k->weight = &comp[c]->tensors[i];
        }
    return t;
}

static void test_kohya_keys(void **state) {
    (void)state;
    shift_set_t s[2];
    random_shifts(s, 11);
    lora_export_stats_t st[2];
    const char *file = tmp_path("keys.safetensors");
    lora_export_opts_t o = opts(0.9, 0);
    assert_int_equal(export_to(s, &o, file, st), 0);

    model_t m;
    assert_int_equal(model_open(&m, source_path(TINY), NULL), 0);
    int nk = 0;
    kmod_t *table = kohya_table(&m, &nk);
    st_file_t f;
    assert_int_equal(st_open(&f, file), 0);
    int *rank = calloc((size_t)nk, sizeof(int)), *seen = calloc((size_t)nk, sizeof(int));
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *x = &f.tensors[i];
        /* lora name = up to the first '.', the suffix after it */
        const char *dot = strchr(x->name, '.');
        assert_non_null(dot);
        const int L = (int)(dot - x->name);
        assert_true(!strncmp(x->name, "lora_unet_", 10) || !strncmp(x->name, "lora_te_", 8));
        int k = 0;
        while (k < nk && !((int)strlen(table[k].lora_name) == L && !strncmp(table[k].lora_name, x->name, L))) k++;
        if (k == nk) print_error("key %s maps to no module of the tiny model\n", x->name);
        assert_true(k < nk);
        const st_tensor_t *w = table[k].weight;
        const char *suf = dot + 1;
        seen[k] |= !strcmp(suf, "diff") ? 4 : !strcmp(suf, "alpha") ? 8 : !strcmp(suf, "lora_down.weight") ? 1 : 2;
        if (!strcmp(suf, "diff")) {   /* the full difference: the weight's own shape */
            assert_int_equal(x->ndim, w->ndim);
            for (int d = 0; d < w->ndim; d++) assert_int_equal(x->shape[d], w->shape[d]);
            assert_true(toolbox_is_norm_path(table[k].module));
        } else if (!strcmp(suf, "alpha")) {
            assert_int_equal(x->ndim, 0);
            float a;
            assert_int_equal(st_read_f32(&a, x), 0);
            if (rank[k]) assert_true(a == (float)rank[k]);
        } else if (!strcmp(suf, "lora_down.weight")) {   /* [r, in] or [r, in, kh, kw] like the weight */
            assert_int_equal(x->ndim, w->ndim);
            for (int d = 1; d < w->ndim; d++) assert_int_equal(x->shape[d], w->shape[d]);
            assert_true(x->shape[0] >= 1);
            if (rank[k]) assert_int_equal(x->shape[0], rank[k]);
            rank[k] = (int)x->shape[0];
        } else {
            assert_string_equal(suf, "lora_up.weight");   /* [out, r] or [out, r, 1, 1] */
            assert_int_equal(x->ndim, w->ndim);
            assert_int_equal(x->shape[0], w->shape[0]);
            if (rank[k]) assert_int_equal(x->shape[1], rank[k]);
            rank[k] = (int)x->shape[1];
            for (int d = 2; d < x->ndim; d++) assert_int_equal(x->shape[d], 1);
        }
    }
    /* every shifted module is there, complete: down + up + alpha, or diff */
    int found = 0;
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < s[c].n; i++) {
            int k = 0;
            while (k < nk && !(table[k].te == c && !strcmp(table[k].module, s[c].entries[i].path))) k++;
            assert_true(k < nk);
            if (seen[k] != (toolbox_is_norm_path(s[c].entries[i].path) ? 4 : 1 | 2 | 8))
                print_error("%s: keys %d\n", s[c].entries[i].path, seen[k]);
            assert_int_equal(seen[k], toolbox_is_norm_path(s[c].entries[i].path) ? 4 : 1 | 2 | 8);
            found++;
        }
    assert_int_equal(found, s[0].n + s[1].n);
    assert_int_equal(st[0].layers + st[0].norms, s[0].n);
    assert_int_equal(st[1].layers + st[1].norms, s[1].n);
    assert_string_equal(st_meta(&f, "base_model_hash"), shiftset_meta(&s[0], "base_model_hash"));
    assert_string_equal(st_meta(&f, "svdiff_instance_prompt"), "a photo of sks dog");
    assert_string_equal(st_meta(&f, "ss_network_dim"), "Dynamic");   /* per-layer ranks, as kohya's resize writes */
    assert_string_equal(st_meta(&f, "svdiff_energy"), "0.90000000000000002");
    st_close(&f);
    free(rank), free(seen), free(table);
    model_close(&m);
    free_sets(s);
}

/* ---- exactness: merged weights and latents ---- */

static void save_pair(const shift_set_t s[2], const char *dir) {
    char a[600], b[600];
    mkdir(dir, 0777);
    snprintf(a, sizeof a, "%s/spectral_shifts.safetensors", dir);
    snprintf(b, sizeof b, "%s/spectral_shifts_te.safetensors", dir);
    assert_int_equal(shiftset_save_pair(&s[0], a, ST_F32, &s[1], b, ST_F32), 0);
}

static float *latents_of(pipeline_t *p) {
    int c, h, w;
    pipeline_latent_shape(p, 16, 16, &c, &h, &w);
    float *lat = malloc(sizeof(float) * c * h * w);
    txt2img_opts_t o = {.prompt = "a photo of sks dog", .width = 16, .height = 16, .steps = 3, .cfg = 5.0f,
                        .sampler = SAMPLER_DDIM, .seed = 7, .batch = 1};
    assert_int_equal(pipeline_txt2img(p, &o, NULL, lat), 0);
    return lat;
}

/* max over the shifted layers of ||W_lora - W_shifted||_F / ||W_shifted - W_base||_F */
static double weights_error(pipeline_t *ps, pipeline_t *pl, pipeline_t *pb, const shift_set_t s[2]) {
    double worst = 0;
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < s[c].n; i++) {
            const char *path = s[c].entries[i].path;
            const float *a, *b, *base;
            size_t n;
            if (toolbox_is_norm_path(path)) {
                /* the shifted gain as the model computes it, against the gain the diff gives */
                float ga[4096];
                if (!c) {
                    norm_layer_t *x = unet_find_norm(&ps->unet, path), *y = unet_find_norm(&pl->unet, path),
                                *z = unet_find_norm(&pb->unet, path);
                    normshift_gain(ga, x->gamma, x->shift, x->scale, x->C, x->mode);
                    a = ga, b = y->gamma, base = z->gamma, n = (size_t)x->C;
                } else {
                    continue;   /* text-encoder norms: covered by the latents */
                }
                double num = 0, den = 0;
                for (size_t k = 0; k < n; k++) num += pow(a[k] - b[k], 2), den += pow(a[k] - base[k], 2);
                if (den > 0 && sqrt(num / den) > worst) worst = sqrt(num / den);
                continue;
            }
            weight_t *ws = pipeline_find_weight(ps, c, path), *wl = pipeline_find_weight(pl, c, path),
                     *wb = pipeline_find_weight(pb, c, path);
            if (!ws->baked) weight_bake(ws);
            a = ws->baked, b = wl->baked;
            assert_non_null(b);
            n = (size_t)ws->rows * ws->cols;
            scratch_mark_t mark = scratch_mark();
            const float *w0 = weight_base_f32(wb);
            double num = 0, den = 0;
            for (size_t k = 0; k < n; k++) num += pow(a[k] - b[k], 2), den += pow(a[k] - w0[k], 2);
            scratch_release(mark);
            if (den > 0 && sqrt(num / den) > worst) worst = sqrt(num / den);
        }
    return worst;
}

static void test_full_rank_matches_shifts(void **state) {
    (void)state;
    shift_set_t s[2];
    random_shifts(s, 21);
    const char *dir = tmp_path("shifts"), *file = tmp_path("full.safetensors");
    save_pair(s, dir);
    lora_export_stats_t st[2];
    lora_export_opts_t o = opts(1.0, 0);
    assert_int_equal(export_to(s, &o, file, st), 0);
    assert_true(st[0].energy_kept == st[0].energy_total && st[1].energy_kept == st[1].energy_total);

    pipeline_t ps, pl, pb;
    open_tiny(&ps), open_tiny(&pl), open_tiny(&pb);
    pipeline_shift_t sh = {.path = dir, .scale = 1.0f}, lo = {.path = file, .scale = 1.0f};
    assert_int_equal(pipeline_apply_shifts(&ps, &sh, 1, 0, NULL), 0);
    int rc = pipeline_apply_loras(&pl, &lo, 1, 0);
    if (rc) print_error("--lora: %s\n", sd_last_error());
    assert_int_equal(rc, 0);
    const double werr = weights_error(&ps, &pl, &pb, s);
    print_message("full rank: max ||W_lora - W_shifted|| / ||W_shifted - W_base|| = %.3g\n", werr);
    assert_true(werr < 1e-5);

    float *a = latents_of(&ps), *b = latents_of(&pl), *z = latents_of(&pb);
    int c, h, w;
    pipeline_latent_shape(&ps, 16, 16, &c, &h, &w);
    const double e = rel_error(b, a, (size_t)c * h * w), e0 = rel_error(z, a, (size_t)c * h * w);
    print_message("latents: lora vs shifts %.3g, base vs shifts %.3g\n", e, e0);
    assert_true(e < 1e-5);
    assert_true(e0 > 1e-2);   /* the shifts do change the sample: the comparison can fail */
    free(a), free(b), free(z);

    /* the export's own check agrees: 0 at full rank in fp32; at energy 0.5 the error is what the
     * dropped singular values hold (the norms are exact) */
    o.check = 1;
    assert_int_equal(export_to(s, &o, file, st), 0);
    for (int c = 0; c < 2; c++) assert_true(sqrt(st[c].err2 / st[c].ref2) < 1e-6);
    const char *low = tmp_path("low.safetensors");
    o = opts(0.5, 0);
    o.check = 1;
    assert_int_equal(export_to(s, &o, low, st), 0);
    for (int c = 0; c < 2; c++) {
        const double dropped = st[c].energy_total - st[c].energy_kept;
        assert_true(dropped > 0);
        assert_true(fabs(st[c].err2 - dropped) <= 1e-4 * st[c].energy_total);
    }
    pipeline_t pl2;
    open_tiny(&pl2);
    pipeline_shift_t lo2 = {.path = low, .scale = 1.0f};
    assert_int_equal(pipeline_apply_loras(&pl2, &lo2, 1, 0), 0);
    assert_true(weights_error(&ps, &pl2, &pb, s) > 0.1);
    pipeline_close(&pl2);
    pipeline_close(&ps), pipeline_close(&pl), pipeline_close(&pb);
    free_sets(s);
}

/* ---- energy, rank cap, formats, refusals ---- */

static void test_energy_and_cap(void **state) {
    (void)state;
    shift_set_t s[2];
    random_shifts(s, 31);
    const double E[4] = {0.5, 0.9, 0.99, 1.0};
    lora_export_stats_t last[2] = {{0}}, st[2];
    long last_bytes = 0;
    for (int k = 0; k < 4; k++) {
        lora_export_opts_t o = opts(E[k], 0);
        assert_int_equal(export_to(s, &o, tmp_path("e.safetensors"), st), 0);
        for (int c = 0; c < 2; c++) {
            assert_true(st[c].energy_kept >= E[k] * st[c].energy_total * (1 - 1e-9));
            assert_true(st[c].rank_max >= last[c].rank_max && st[c].rank_min >= last[c].rank_min);
        }
        assert_true(st[0].bytes + st[1].bytes >= last_bytes);
        last_bytes = st[0].bytes + st[1].bytes;
        last[0] = st[0], last[1] = st[1];
    }
    lora_export_opts_t o = opts(1.0, 2);
    assert_int_equal(export_to(s, &o, tmp_path("cap.safetensors"), st), 0);
    assert_true(st[0].rank_max <= 2 && st[1].rank_max <= 2 && st[0].rank_max == 2);
    /* fp16 / bf16 halve the factors; their rounding is the only error left at full rank, and
     * svdiff's loader reads them */
    const st_dtype_t dts[2] = {ST_F16, ST_BF16};
    const double tol[2] = {1e-3, 1e-2};
    for (int k = 0; k < 2; k++) {
        o = opts(1.0, 0);
        o.dtype = dts[k], o.check = 1;
        lora_export_stats_t h[2];
        const char *file = tmp_path("h.safetensors");
        assert_int_equal(export_to(s, &o, file, h), 0);
        assert_true(h[0].bytes < last[0].bytes);
        const double err = sqrt(h[0].err2 / h[0].ref2);
        print_message("%s full rank: merged-weight error %.3g\n", st_dtype_name(dts[k]), err);
        assert_true(err > 0 && err < tol[k]);
        pipeline_t pl;
        open_tiny(&pl);
        pipeline_shift_t lo = {.path = file, .scale = 1.0f};
        assert_int_equal(pipeline_apply_loras(&pl, &lo, 1, 0), 0);
        pipeline_close(&pl);
    }
    free_sets(s);
}

static void test_diffusers_format(void **state) {
    (void)state;
    shift_set_t s[2];
    random_shifts(s, 41);
    lora_export_stats_t st[2];
    lora_export_opts_t o = opts(0.9, 0);
    o.format = LORA_FORMAT_DIFFUSERS;
    const char *file = tmp_path("diffusers.safetensors");
    assert_int_equal(export_to(s, &o, file, st), SD_ERR_ARG);   /* norms have no diffusers key */
    assert_non_null(strstr(sd_last_error(), "--no-norms"));
    o.no_norms = 1, o.no_embeddings = 1;
    assert_int_equal(export_to(s, &o, file, st), 0);
    assert_int_equal(st[0].norms, 0);
    assert_true(st[0].dropped > 0 && st[1].dropped > 0);
    st_file_t f;
    assert_int_equal(st_open(&f, file), 0);
    /* one rank per component (padded), peft names */
    int r[2] = {0, 0};
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *x = &f.tensors[i];
        const int te = !strncmp(x->name, "text_encoder.text_model.", 24);
        assert_true(te || !strncmp(x->name, "unet.", 5));
        const size_t L = strlen(x->name);
        const int is_a = L > 14 && !strcmp(x->name + L - 14, ".lora_A.weight");
        assert_true(is_a || (L > 14 && !strcmp(x->name + L - 14, ".lora_B.weight")));
        const int rk = (int)x->shape[is_a ? 0 : 1];
        if (!r[te]) r[te] = rk;
        assert_int_equal(rk, r[te]);
    }
    assert_int_equal(r[0], st[0].rank_max);
    st_close(&f);
    /* svdiff's loader merges it to the shifted weights of the matrices at full rank */
    o.energy = 1.0;
    assert_int_equal(export_to(s, &o, file, st), 0);
    pipeline_t pl;
    open_tiny(&pl);
    pipeline_shift_t lo = {.path = file, .scale = 1.0f};
    assert_int_equal(pipeline_apply_loras(&pl, &lo, 1, 0), 0);
    pipeline_close(&pl);
    free_sets(s);
}

static void test_refusals(void **state) {
    (void)state;
    shift_set_t s[2];
    random_shifts(s, 51);
    lora_export_stats_t st[2];
    const char *file = tmp_path("other.safetensors");
    shiftset_set_meta(&s[0], "base_model_hash", "0123456789abcdef");
    lora_export_opts_t o = opts(0.99, 0);
    assert_int_equal(export_to(s, &o, file, st), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "0123456789abcdef"));
    assert_int_equal(access(file, F_OK), -1);   /* nothing written */
    o.force = 1;
    assert_int_equal(export_to(s, &o, file, st), 0);
    /* the writer refuses a device or a folder as the output (outputs_check) */
    assert_true(export_to(s, &o, "/dev/null", st) != 0);
    assert_non_null(strstr(sd_last_error(), "/dev/null"));
    assert_true(export_to(s, &o, g_dir, st) != 0);
    o = opts(0.0, 0);
    assert_int_equal(export_to(s, &o, file, st), SD_ERR_ARG);
    o = opts(1.5, 0);
    assert_int_equal(export_to(s, &o, file, st), SD_ERR_ARG);
    o = opts(0.9, -1);
    assert_int_equal(export_to(s, &o, file, st), SD_ERR_ARG);
    /* all-zero shifts: nothing to export */
    shift_set_t z[2];
    assert_int_equal(shiftset_load(&z[0], source_path(UNET_FIX)), 0);
    assert_int_equal(shiftset_load(&z[1], source_path(TE_FIX)), 0);
    o = opts(0.99, 0);
    o.no_norms = 1, o.force = 1;
    assert_int_equal(export_to(z, &o, tmp_path("zero.safetensors"), st), SD_ERR_ARG);
    free_sets(z);
    free_sets(s);
}

/* The command line end to end: to-lora, then generate --shifts and generate --lora give the same
 * latents. Needs the binary (SVDIFF_BIN, set by CMakeLists.txt for this test). */
static void test_cli_latents(void **state) {
    (void)state;
    const char *bin = getenv("SVDIFF_BIN");
    if (!bin || !*bin) skip();
    shift_set_t s[2];
    random_shifts(s, 61);
    const char *dir = tmp_path("cli-shifts");
    save_pair(s, dir);
    free_sets(s);
    char cmd[4096];
    const char *model = source_path(TINY);
    snprintf(cmd, sizeof cmd, "'%s' shifts to-lora '%s' --model '%s' --energy 1 --dtype fp32 --svd-cache '%s/cache' -o '%s/cli.safetensors'",
             bin, dir, model, g_dir, g_dir);
    assert_int_equal(system(cmd), 0);
    const char *gen = "'%s' generate --model '%s' --prompt 'a photo of sks dog' --steps 3 --seed 7 --width 16 --height 16 "
                      "--svd-cache '%s/cache' %s '%s' -o '%s/%s.png' --save-latents '%s/%s.st' >/dev/null 2>&1";
    snprintf(cmd, sizeof cmd, gen, bin, model, g_dir, "--shifts", dir, g_dir, "s", g_dir, "s");
    assert_int_equal(system(cmd), 0);
    char lora[600];
    snprintf(lora, sizeof lora, "%s/cli.safetensors", g_dir);
    snprintf(cmd, sizeof cmd, gen, bin, model, g_dir, "--lora", lora, g_dir, "l", g_dir, "l");
    assert_int_equal(system(cmd), 0);
    st_file_t a, b;
    assert_int_equal(st_open(&a, tmp_path("s.st")), 0);
    assert_int_equal(st_open(&b, tmp_path("l.st")), 0);
    assert_int_equal(a.n_tensors, 1);
    assert_int_equal(a.tensors[0].numel, b.tensors[0].numel);
    const size_t n = (size_t)a.tensors[0].numel;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    assert_int_equal(st_read_f32(x, &a.tensors[0]), 0);
    assert_int_equal(st_read_f32(y, &b.tensors[0]), 0);
    const double e = rel_error(y, x, n);
    print_message("svdiff generate: --lora vs --shifts latents rel %.3g\n", e);
    assert_true(e < 1e-5);
    free(x), free(y);
    st_close(&a), st_close(&b);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_rule),
        cmocka_unit_test(test_kohya_keys),
        cmocka_unit_test(test_full_rank_matches_shifts),
        cmocka_unit_test(test_energy_and_cap),
        cmocka_unit_test(test_diffusers_format),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_cli_latents),
    };
    return RUN_TESTS(argc, argv, "lora_export", tests, setup, teardown);
}
