/* Cut-Mix-Unmix (src/models/unmix.c, src/train/cutmix.c): the Unmix loss and the gradient of every
 * UNet shift on the tiny SD model against PyTorch (tests/reference/gen_unmix_golden.py), a finite-
 * difference check of the Unmix hook's q / k gradient, layer selection, the Cut-Mix compositor
 * (src/io/image_compose.c: halves, fit / crop), prompts, subject syntax, the multi-subject batch (composites, Unmix
 * specification, determinism) and set-up errors. */
#define _GNU_SOURCE   /* mkdtemp */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "io/image.h"
#include "io/image_compose.h"
#include "models/unmix.h"
#include "ops/ops.h"
#include "train/cutmix.h"
#include "train/trainer.h"

static char g_model[4096];

static const char *model_dir(void) {
    snprintf(g_model, sizeof g_model, "%s", source_path("tests/fixtures/tiny-sd/diffusers"));
    return g_model;
}

/* ---- golden: Unmix + denoising loss and their shift gradients against PyTorch ---- */

static void install(const st_file_t *f, const char *name, weight_t *w) {
    char key[512];
    snprintf(key, sizeof key, "svd/%s.S", name);
    const st_tensor_t *S = st_find(f, key);
    assert_non_null(S);
    const int rank = (int)S->numel;
    float *s = golden_get(f, key, rank);
    snprintf(key, sizeof key, "svd/%s.U", name);
    float *u = golden_get(f, key, (int64_t)w->rows * rank);
    snprintf(key, sizeof key, "svd/%s.Vt", name);
    float *vt = golden_get(f, key, (int64_t)rank * w->cols);
    weight_make_spectral_from(w, u, s, vt, rank, 0);
    free(u), free(s), free(vt);
}

typedef struct {
    trainer_t t;
    st_file_t f;
    float *x0, *eps, *ctx;
    int ts[2], ids[2 * 77];
    float weight;
} golden_t;

static void golden_setup(golden_t *g, int ckpt) {
    sd_set_threads(1);
    memset(g, 0, sizeof *g);
    golden_open(&g->f, "unmix/golden.safetensors");
    st_file_t tf;
    golden_open(&tf, "train/golden.safetensors");   /* the SVD factors */
    train_config_t c;
    train_config_default(&c);
    c.model = model_dir();
    c.resolution = 16, c.batch_size = 2;
    c.grad_checkpointing = ckpt;   /* the hook's forward then runs again inside the backward */
    c.svd_cache_dir = "";
    c.quiet = 1;
    assert_int_equal(trainer_load_model(&g->t, &c), 0);
    for (int i = 0; i < g->t.p.unet.n_layers; i++) {
        char name[300];
        snprintf(name, sizeof name, "unet/%s", g->t.p.unet.layers[i]->name);
        install(&tf, name, &g->t.p.unet.layers[i]->w);
    }
    st_close(&tf);
    assert_int_equal(trainer_prepare(&g->t, 0), 0);
    trainer_t *t = &g->t;
    for (int i = 0; i < t->n_params; i++) {
        char key[512];
        snprintf(key, sizeof key, "%s.value", t->params[i].name);
        float *v = golden_get(&g->f, key, t->params[i].n);
        memcpy(t->params[i].value, v, sizeof(float) * t->params[i].n);
        free(v);
    }
    t->ms = calloc(1, sizeof *t->ms);
    assert_int_equal(unmix_attach(&t->ms->unmix, &t->p.unet, NULL, 2, t->h, t->w, 77), 0);
    t->ms->unmix_on = 1;
    assert_int_equal(t->ms->unmix.n_sites, atoi(st_meta(&g->f, "n_sites")));
    float *tokw = golden_get(&g->f, "tokw", 2 * 2 * 77), *region = golden_get(&g->f, "region", 2 * 2 * 8 * 8);
    assert_int_equal(t->h * t->w, 64);
    memcpy(t->ms->unmix.tokw, tokw, sizeof(float) * 2 * 2 * 77);
    memcpy(t->ms->unmix.region, region, sizeof(float) * 2 * 2 * 64);
    free(tokw), free(region);
    g->weight = strtof(st_meta(&g->f, "unmix_weight"), NULL);
    const size_t L = t->latent_n;
    g->x0 = golden_get(&g->f, "x0", 2 * (int64_t)L);
    g->eps = golden_get(&g->f, "eps", 2 * (int64_t)L);
    g->ctx = golden_get(&g->f, "ctx", 2 * 77 * (int64_t)t->p.ctx_dim);
    int64_t v[2];
    assert_int_equal(st_read_i64(v, st_find(&g->f, "timesteps")), 0);
    g->ts[0] = (int)v[0], g->ts[1] = (int)v[1];
}

static void golden_teardown(golden_t *g) {
    free(g->x0), free(g->eps), free(g->ctx);
    st_close(&g->f);
    trainer_close(&g->t);
}

/* mode UNMIX_MSE: the golden's losses / site_loss / grad_unmix; UNMIX_SHARE: loss_share /
 * site_loss_share / grad_share (weight unmix_weight_share) */
static void check_golden(int ckpt, unmix_mode_t mode) {
    golden_t g;
    golden_setup(&g, ckpt);
    trainer_t *t = &g.t;
    unmix_t *u = &t->ms->unmix;
    const int share = mode == UNMIX_SHARE;
    u->mode = mode;
    u->weight = share ? strtof(st_meta(&g.f, "unmix_weight_share"), NULL) : g.weight;
    train_losses_t l;
    assert_int_equal(trainer_micro_step(t, g.x0, g.eps, g.ts, g.ids, g.ctx, 2, 0, 1.0f, &l), 0);
    float *losses = golden_get(&g.f, "losses", 2), *sites = golden_get(&g.f, share ? "site_loss_share" : "site_loss", u->n_sites);
    if (share) {
        float *ls = golden_get(&g.f, "loss_share", 1);
        losses[1] = ls[0];
        free(ls);
    }
    float got_sites[16];
    for (int i = 0; i < u->n_sites; i++) got_sites[i] = (float)u->sites[i].loss;
    const float got[2] = {(float)l.instance, (float)l.unmix};
    assert_close("denoising and unmix loss", got, losses, 2, 1e-4);
    assert_close("per-site unmix loss", got_sites, sites, (size_t)u->n_sites, 1e-4);
    assert_true(fabs(l.loss - (l.instance + l.unmix)) < 1e-6 * fabs(l.loss));
    /* total gradient now; then the denoising part alone (weight 0): the difference is Unmix's */
    size_t total = 0;
    for (int i = 0; i < t->n_params; i++) total += (size_t)t->params[i].n;
    float *g_all = malloc(sizeof(float) * total), *g_u = malloc(sizeof(float) * total), *w_u = malloc(sizeof(float) * total);
    for (int i = 0, o = 0; i < t->n_params; o += t->params[i].n, i++)
        memcpy(g_all + o, t->params[i].grad, sizeof(float) * t->params[i].n);
    unet_grads_zero(&t->ug);
    u->weight = 0;
    assert_int_equal(trainer_micro_step(t, g.x0, g.eps, g.ts, g.ids, g.ctx, 2, 0, 1.0f, &l), 0);
    assert_true(l.unmix == 0);
    double worst = 0;
    int n_unmix_arrays = 0;
    for (int i = 0, o = 0; i < t->n_params; o += t->params[i].n, i++) {
        const train_param_t *p = &t->params[i];
        char key[512];
        snprintf(key, sizeof key, "%s.grad_mse", p->name);
        float *want = golden_get(&g.f, key, p->n);
        assert_close(key, p->grad, want, (size_t)p->n, 1e-3);
        free(want);
        snprintf(key, sizeof key, "%s.%s", p->name, share ? "grad_share" : "grad_unmix");
        want = golden_get(&g.f, key, p->n);
        memcpy(w_u + o, want, sizeof(float) * p->n);
        for (int k = 0; k < p->n; k++) g_u[o + k] = g_all[o + k] - p->grad[k];
        free(want);
    }
    /* Unmix's gradient: over all shifts to 1e-3 of its largest entry, and array by array where the
     * array's own gradient is substantial */
    assert_close("unmix gradient (all shifts)", g_u, w_u, total, 1e-3);
    double gmax = 0;
    for (size_t k = 0; k < total; k++) gmax = fmax(gmax, fabs(w_u[k]));
    for (int i = 0, o = 0; i < t->n_params; o += t->params[i].n, i++) {
        double amax = 0;
        for (int k = 0; k < t->params[i].n; k++) amax = fmax(amax, fabs(w_u[o + k]));
        if (amax < 0.05 * gmax) continue;
        n_unmix_arrays++;
        const double e = rel_error(g_u + o, w_u + o, (size_t)t->params[i].n);
        worst = fmax(worst, e);
        if (e > 5e-3) print_error("%s: unmix gradient error %.2e\n", t->params[i].name, e);
        assert_true(e <= 5e-3);
    }
    assert_true(n_unmix_arrays > 10);
    assert_true(gmax > 1e-2);   /* the Unmix part is far above the tolerance: the test can fail */
    print_message("unmix golden (%s)%s: %d sites, loss %.6f (PyTorch %.6f), %d arrays with an Unmix gradient, worst %.2e\n",
                  share ? "share" : "mse", ckpt ? " (gradient checkpointing)" : "", u->n_sites, got[1], losses[1], n_unmix_arrays, worst);
    free(g_all), free(g_u), free(w_u), free(losses), free(sites);
    golden_teardown(&g);
}

static void test_unmix_golden(void **state) {
    (void)state;
    check_golden(0, UNMIX_MSE);
    check_golden(1, UNMIX_MSE);
    check_golden(0, UNMIX_SHARE);
    check_golden(1, UNMIX_SHARE);
}

/* ---- finite differences of the hook itself (q, k -> lse -> P -> loss) ---- */

typedef struct {
    unmix_t u;
    unmix_site_t site;
    float *q, *k, *v, *out, *lse;
    int B, S, T, H, D;
    float scale;
} site_fd_t;

static double site_loss(void *vctx) {
    site_fd_t *c = vctx;
    attention_forward(c->out, c->lse, c->q, c->k, c->v, c->B, c->S, c->T, c->H, c->D, c->scale, 0);
    unmix_site_forward(&c->site, c->q, c->k, c->lse, c->B, c->S, c->T, c->H, c->D, c->scale);
    return unmix_loss(&c->u);
}

static void check_site(int level, unmix_mode_t mode) {
    site_fd_t c;
    memset(&c, 0, sizeof c);
    c.B = 2, c.T = 9, c.H = 2, c.D = 4;
    const int side = 8, ls = side >> level;
    c.S = ls * ls, c.scale = 0.5f;
    trng_t r;
    trng_seed(&r, 11 + level);
    const size_t nq = (size_t)c.B * c.S * c.H * c.D, nk = (size_t)c.B * c.T * c.H * c.D;
    c.q = alloc_normal(&r, nq, 1.0f), c.k = alloc_normal(&r, nk, 1.0f), c.v = alloc_normal(&r, nk, 1.0f);
    c.out = alloc_zeros(nq), c.lse = alloc_zeros((size_t)c.B * c.H * c.S);
    c.u.rows = c.B, c.u.T = c.T, c.u.H = c.u.W = side, c.u.weight = 1.7f, c.u.gscale = 0.5f, c.u.mode = mode;
    c.u.tokw = alloc_zeros((size_t)c.B * 2 * c.T);
    c.u.region = alloc_zeros((size_t)c.B * 2 * side * side);
    /* row 0: halves and a few tokens; row 1: arbitrary shares (pooling of fractional masks) */
    c.u.tokw[1] = c.u.tokw[2] = 1, c.u.tokw[c.T + 5] = 1;
    c.u.tokw[2 * c.T + 3] = 1, c.u.tokw[3 * c.T + 3] = 0.5f, c.u.tokw[3 * c.T + 7] = 1;
    unmix_set_halves(&c.u, 0, 0);
    fill_uniform(&r, c.u.region + 2 * side * side, 2 * side * side, 0, 1);
    c.u.n_sites = 1, c.u.sites = &c.site;
    c.site.u = &c.u, c.site.level = level;
    const double l0 = site_loss(&c);
    assert_true(l0 > 0);
    float *dq = alloc_zeros(nq), *dk = alloc_zeros(nk);
    unmix_site_backward(dq, dk, &c.site, c.q, c.k, c.lse, c.B, c.S, c.T, c.H, c.D, c.scale);
    /* the hook's gradient is scaled by gscale (the trainer's grad_scale): compare with 2 x */
    for (size_t i = 0; i < nq; i++) dq[i] *= 2.0f;
    for (size_t i = 0; i < nk; i++) dk[i] *= 2.0f;
    fd_check("unmix dq", c.q, dq, nq, 24, site_loss, &c, 1e-2f, 1e-2);
    fd_check("unmix dk", c.k, dk, nk, 24, site_loss, &c, 1e-2f, 1e-2);
    /* accumulation: a second backward doubles the gradient */
    float *dq2 = alloc_zeros(nq);
    site_loss(&c);
    unmix_site_backward(dq2, NULL, &c.site, c.q, c.k, c.lse, c.B, c.S, c.T, c.H, c.D, c.scale);
    unmix_site_backward(dq2, NULL, &c.site, c.q, c.k, c.lse, c.B, c.S, c.T, c.H, c.D, c.scale);
    assert_close("accumulated dq", dq2, dq, nq, 1e-5);
    /* dk too: into known values p, the backward adds its gradient (dk holds 2 x that) */
    float *dk2 = alloc_zeros(nk), *want = alloc_zeros(nk);
    for (size_t i = 0; i < nk; i++) dk2[i] = 1.0f + (float)(i % 5), want[i] = dk2[i] + 0.5f * dk[i];
    unmix_site_backward(NULL, dk2, &c.site, c.q, c.k, c.lse, c.B, c.S, c.T, c.H, c.D, c.scale);
    assert_close("accumulated dk", dk2, want, nk, 1e-5);
    free(c.q), free(c.k), free(c.v), free(c.out), free(c.lse), free(c.u.tokw), free(c.u.region);
    free(dq), free(dk), free(dq2), free(dk2), free(want);
}

/* The normalisation of the Unmix gradient, a second check beside the finite differences of one
 * site (other shape: B 1, T 5, 3 heads of 2, a 4x4 latent, top / bottom halves). loss_site is a
 * weighted mean, so scaling every token weight W by 3 leaves the loss and both gradients as
 * they are (N_site scales with W); the regulariser is the mean over sites, so with two identical
 * sites the loss is the same and each site's gradient is half that of the site alone. */
static void test_unmix_normalisation(void **state) {
    (void)state;
    for (int mode = UNMIX_MSE; mode <= UNMIX_SHARE; mode++) {
        site_fd_t c;
        memset(&c, 0, sizeof c);
        c.B = 1, c.T = 5, c.H = 3, c.D = 2, c.S = 16, c.scale = 0.7f;
        const int side = 4;
        trng_t r;
        trng_seed(&r, 31);
        const size_t nq = (size_t)c.B * c.S * c.H * c.D, nk = (size_t)c.B * c.T * c.H * c.D, nt = (size_t)c.B * 2 * c.T;
        c.q = alloc_normal(&r, nq, 1.0f), c.k = alloc_normal(&r, nk, 1.0f), c.v = alloc_normal(&r, nk, 1.0f);
        c.out = alloc_zeros(nq), c.lse = alloc_zeros((size_t)c.B * c.H * c.S);
        c.u.rows = c.B, c.u.T = c.T, c.u.H = c.u.W = side, c.u.weight = 1.3f, c.u.gscale = 1.0f, c.u.mode = (unmix_mode_t)mode;
        c.u.tokw = alloc_zeros(nt), c.u.region = alloc_zeros((size_t)c.B * 2 * side * side);
        c.u.tokw[1] = 1, c.u.tokw[c.T + 3] = c.u.tokw[c.T + 4] = 1;   /* subject 0: token 1; subject 1: tokens 3, 4 */
        unmix_set_halves(&c.u, 0, 1);
        unmix_site_t sites[2];
        memset(sites, 0, sizeof sites);
        sites[0].u = sites[1].u = &c.u;
        c.u.n_sites = 1, c.u.sites = &c.site;
        c.site.u = &c.u;
        float *dq[3], *dk[3];
        double loss[3];
        for (int run = 0; run < 3; run++) {   /* 0: as set; 1: W x 3; 2: two identical sites */
            if (run == 1)
                for (size_t i = 0; i < nt; i++) c.u.tokw[i] *= 3.0f;
            if (run == 2) {
                for (size_t i = 0; i < nt; i++) c.u.tokw[i] /= 3.0f;
                c.u.n_sites = 2, c.u.sites = sites;
            }
            attention_forward(c.out, c.lse, c.q, c.k, c.v, c.B, c.S, c.T, c.H, c.D, c.scale, 0);
            for (int k = 0; k < c.u.n_sites; k++)
                unmix_site_forward(&c.u.sites[k], c.q, c.k, c.lse, c.B, c.S, c.T, c.H, c.D, c.scale);
            loss[run] = unmix_loss(&c.u);
            dq[run] = alloc_zeros(nq), dk[run] = alloc_zeros(nk);
            unmix_site_backward(dq[run], dk[run], &c.u.sites[0], c.q, c.k, c.lse, c.B, c.S, c.T, c.H, c.D, c.scale);
        }
        assert_true(loss[0] > 0);
        assert_true(fabs(loss[1] - loss[0]) <= 1e-6 * loss[0] && fabs(loss[2] - loss[0]) <= 1e-6 * loss[0]);
        assert_close("dq, W x 3", dq[1], dq[0], nq, 1e-5);
        assert_close("dk, W x 3", dk[1], dk[0], nk, 1e-5);
        for (size_t i = 0; i < nq; i++) dq[2][i] *= 2.0f;
        for (size_t i = 0; i < nk; i++) dk[2][i] *= 2.0f;
        assert_close("dq of one of two sites x 2", dq[2], dq[0], nq, 1e-6);
        assert_close("dk of one of two sites x 2", dk[2], dk[0], nk, 1e-6);
        for (int run = 0; run < 3; run++) free(dq[run]), free(dk[run]);
        free(c.q), free(c.k), free(c.v), free(c.out), free(c.lse), free(c.u.tokw), free(c.u.region);
    }
}

static void test_unmix_site_fd(void **state) {
    (void)state;
    check_site(0, UNMIX_MSE);
    check_site(1, UNMIX_MSE);   /* the region average-pooled 2x2 */
    check_site(0, UNMIX_SHARE);
    check_site(1, UNMIX_SHARE);
    scratch_free_all();
}

/* The leakage sums: a subject's token mass in the other half over all its mass. */
static void test_leakage_sums(void **state) {
    (void)state;
    site_fd_t c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.T = 5, c.H = 1, c.D = 2, c.S = 4, c.scale = 1.0f;
    /* 2 x 2 positions; keys: token 1 points along +x, token 2 along -x; queries of the left column
     * along +x strongly, the right column along -x: token 1 is attended on the left only */
    float q[8] = {9, 0, -9, 0, 9, 0, -9, 0}, k[10] = {0, 0, 1, 0, -1, 0, 0, 0, 0, 0}, v[10] = {0}, out[8], lse[4];
    c.q = q, c.k = k, c.v = v, c.out = out, c.lse = lse;
    float tokw[10] = {0}, region[8];
    tokw[1] = 1, tokw[5 + 2] = 1;
    c.u.rows = 1, c.u.T = 5, c.u.H = c.u.W = 2, c.u.tokw = tokw, c.u.region = region, c.u.measure = 1;
    c.u.n_sites = 1, c.u.sites = &c.site;
    c.site.u = &c.u;
    unmix_set_halves(&c.u, 0, 0);
    unmix_reset_leakage(&c.u);
    site_loss(&c);
    const double a = unmix_leakage(&c.u, 0), b = unmix_leakage(&c.u, 1);
    print_message("leakage with well-separated attention: %.2e %.2e\n", a, b);
    assert_true(a >= 0 && a < 1e-3 && b >= 0 && b < 1e-3);
    /* each token takes nearly all the attention of its own column (half of the 4 queries) */
    assert_true(fabs(unmix_token_mass(&c.u, 0) - 0.5) < 1e-3 && fabs(unmix_token_mass(&c.u, 1) - 0.5) < 1e-3);
    unmix_set_halves(&c.u, 0, 0);
    /* swap the halves: now each token attends only in the other subject's half */
    for (int i = 0; i < 4; i++) {
        const float x = region[i];
        region[i] = region[4 + i], region[4 + i] = x;
    }
    unmix_reset_leakage(&c.u);
    site_loss(&c);
    assert_true(unmix_leakage(&c.u, 0) > 0.999 && unmix_leakage(&c.u, 1) > 0.999);
    scratch_free_all();
}

/* ---- layer selection ---- */

static void test_unmix_layers(void **state) {
    (void)state;
    pipeline_t p;
    assert_int_equal(pipeline_open(&p, model_dir(), NULL), 0);
    unmix_t u;
    struct { const char *spec; int n; } cases[] = {
        {NULL, 4}, {"all", 4}, {"8", 3}, {"4", 1}, {"8,4", 4}, {"mid_block", 1}, {"up_blocks.*", 2},
        {"*transformer_blocks.0.attn2", 4}, {"down_blocks", 1}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        assert_int_equal(unmix_attach(&u, &p.unet, cases[i].spec, 1, 8, 8, 77), 0);
        if (u.n_sites != cases[i].n) print_error("'%s': %d sites\n", cases[i].spec ? cases[i].spec : "NULL", u.n_sites);
        assert_int_equal(u.n_sites, cases[i].n);
        int hooked = 0;
        for (int t = 0; t < p.unet.n_transformers; t++)
            for (int l = 0; l < p.unet.transformers[t].n_blocks; l++) hooked += p.unet.transformers[t].blocks[l].unmix != NULL;
        assert_int_equal(hooked, cases[i].n);
        unmix_detach(&u);
        for (int t = 0; t < p.unet.n_transformers; t++)
            for (int l = 0; l < p.unet.transformers[t].n_blocks; l++) assert_null(p.unet.transformers[t].blocks[l].unmix);
    }
    assert_int_equal(unmix_attach(&u, &p.unet, "8,16", 1, 8, 8, 77), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "'16' selects no cross-attention layer"));
    assert_int_equal(unmix_attach(&u, &p.unet, "nothing.here", 1, 8, 8, 77), SD_ERR_ARG);
    pipeline_close(&p);
}

/* ---- the compositor ---- */

static void solid(image_t *im, int w, int h, uint8_t r, uint8_t g, uint8_t b) {
    assert_int_equal(image_alloc(im, w, h), 0);
    for (int i = 0; i < w * h; i++) im->rgb[3 * i] = r, im->rgb[3 * i + 1] = g, im->rgb[3 * i + 2] = b;
}

static const uint8_t *px(const image_t *im, int x, int y) { return im->rgb + ((size_t)y * im->w + x) * 3; }

static void test_compose_halves(void **state) {
    (void)state;
    image_t a, b, out;
    solid(&a, 20, 24, 250, 0, 0);
    solid(&b, 33, 18, 0, 0, 240);
    for (int fit = 0; fit < 2; fit++)
        for (int vert = 0; vert < 2; vert++) {
            assert_int_equal(image_compose_halves(&out, &a, &b, 16, vert, fit), 0);
            assert_int_equal(out.w, 16);
            assert_int_equal(out.h, 16);
            for (int y = 0; y < 16; y++)
                for (int x = 0; x < 16; x++) {
                    const int first = vert ? y < 8 : x < 8;
                    const uint8_t *p = px(&out, x, y);
                    /* solid images: the fill is their border colour, so every pixel is exact */
                    assert_int_equal(p[0], first ? 250 : 0);
                    assert_int_equal(p[2], first ? 0 : 240);
                }
            image_free(&out);
        }
    image_free(&a), image_free(&b);
    /* fit vs crop: a square image with a black frame on white into a 8 x 16 half. Fit keeps the
     * whole image (frame visible at the top and bottom of the drawn square, white border fill
     * above and below); crop scales it to 16 x 16 and cuts the sides (the left and right frame
     * lines disappear). */
    solid(&a, 16, 16, 255, 255, 255);
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 3; k++) a.rgb[(0 * 16 + i) * 3 + k] = a.rgb[(15 * 16 + i) * 3 + k] = 0,
                                    a.rgb[(i * 16 + 0) * 3 + k] = a.rgb[(i * 16 + 15) * 3 + k] = 0;
    solid(&b, 4, 4, 0, 255, 0);
    assert_int_equal(image_compose_halves(&out, &a, &b, 16, 0, 1), 0);
    assert_true(px(&out, 4, 0)[0] < 40);        /* fill: mean border colour = the black frame */
    assert_true(px(&out, 4, 8)[0] > 200);       /* the image's white inside, centred */
    assert_true(px(&out, 0, 8)[0] < 140);       /* its left frame line, shrunk 2x: a dark column */
    assert_int_equal(px(&out, 12, 8)[1], 255);  /* the other half */
    image_free(&out);
    assert_int_equal(image_compose_halves(&out, &a, &b, 16, 0, 0), 0);
    assert_true(px(&out, 0, 8)[0] > 200);       /* crop: the side frame lines are cut away */
    assert_true(px(&out, 4, 0)[0] < 40);        /* the top frame line stays */
    image_free(&out);
    /* an odd size: the second half gets the extra column */
    assert_int_equal(image_compose_halves(&out, &b, &a, 9, 0, 1), 0);
    assert_int_equal(px(&out, 3, 4)[1], 255);
    assert_int_equal(px(&out, 3, 4)[0], 0);
    image_free(&out);
    image_free(&a), image_free(&b);
}

static void test_prompts(void **state) {
    (void)state;
    char buf[256], phrase[64], dir[64];
    prompt_fill(buf, sizeof buf, NULL, "sks cat");
    assert_string_equal(buf, "a photo of sks cat");
    prompt_fill(buf, sizeof buf, "an emoji of {}, {} style", "hta monkey");
    assert_string_equal(buf, "an emoji of hta monkey, hta monkey style");
    cutmix_phrase(phrase, sizeof phrase, "sks cat", "hta monkey", 1, 0);
    prompt_fill(buf, sizeof buf, NULL, phrase);
    assert_string_equal(buf, "a photo of sks cat on the left and hta monkey on the right");
    cutmix_phrase(phrase, sizeof phrase, "sks cat", "hta monkey", 1, 1);
    assert_string_equal(phrase, "sks cat at the top and hta monkey at the bottom");
    cutmix_phrase(phrase, sizeof phrase, "sks cat", "hta monkey", 0, 0);
    assert_string_equal(phrase, "sks cat and hta monkey");
    assert_int_equal(subject_spec_parse(" sks cat =cats/a=b", "--subject", phrase, sizeof phrase, dir, sizeof dir), 0);
    assert_string_equal(phrase, "sks cat");
    assert_string_equal(dir, "cats/a=b");
    assert_int_equal(subject_spec_parse("sks cat", "--subject", phrase, sizeof phrase, dir, sizeof dir), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "expected \"PHRASE=DIR\""));
    assert_int_equal(subject_spec_parse(" =cats/", "--subject", phrase, sizeof phrase, dir, sizeof dir), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "phrase before '=' is empty"));
    assert_int_equal(subject_spec_parse("sks cat=", "--subject-class", phrase, sizeof phrase, dir, sizeof dir), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "--subject-class \"sks cat=\": the folder after '=' is empty"));
}

/* ---- the multi-subject batch ---- */

static void write_png(const char *path, int w, int h, uint8_t r, uint8_t g, uint8_t b) {
    image_t im;
    solid(&im, w, h, r, g, b);
    assert_int_equal(image_save_png(&im, path, NULL, NULL, 0), 0);
    image_free(&im);
}

typedef struct {
    char tmp[64], a[96], b[96], c[96], ca[96], cb[96], empty[96], out[96];
    char sa[128], sb[128], sc[128], cla[128], clb[128];
} msdata_t;

static void make_msdata(msdata_t *d) {
    snprintf(d->tmp, sizeof d->tmp, "/tmp/svdiff-cutmix-XXXXXX");
    assert_non_null(mkdtemp(d->tmp));
    char p[200];
    const char *names[] = {"a", "b", "c", "ca", "cb", "empty"};
    char *dirs[] = {d->a, d->b, d->c, d->ca, d->cb, d->empty};
    for (int i = 0; i < 6; i++) {
        snprintf(dirs[i], 96, "%s/%s", d->tmp, names[i]);
        assert_int_equal(mkdir(dirs[i], 0777), 0);
    }
    snprintf(p, sizeof p, "%s/1.png", d->a), write_png(p, 16, 16, 250, 10, 10);
    snprintf(p, sizeof p, "%s/2.png", d->a), write_png(p, 20, 16, 230, 30, 10);
    snprintf(p, sizeof p, "%s/1.png", d->b), write_png(p, 16, 16, 10, 10, 250);
    snprintf(p, sizeof p, "%s/1.png", d->c), write_png(p, 16, 16, 10, 250, 10);
    snprintf(p, sizeof p, "%s/1.png", d->ca), write_png(p, 16, 16, 200, 100, 100);
    snprintf(p, sizeof p, "%s/1.png", d->cb), write_png(p, 16, 16, 100, 100, 200);
    snprintf(p, sizeof p, "%s/notes.txt", d->empty), write_png(p, 4, 4, 0, 0, 0);   /* .txt: not an image */
    snprintf(d->out, sizeof d->out, "%s/out", d->tmp);
    snprintf(d->sa, sizeof d->sa, "sks cat=%s", d->a);
    snprintf(d->sb, sizeof d->sb, "hta monkey=%s", d->b);
    snprintf(d->sc, sizeof d->sc, "xyz dog=%s", d->c);
    snprintf(d->cla, sizeof d->cla, "a cat=%s", d->ca);
    snprintf(d->clb, sizeof d->clb, "a monkey=%s", d->cb);
}

static void ms_config(train_config_t *c, msdata_t *d, const char **subj, int n, const char **cls) {
    train_config_default(c);
    c->model = model_dir();
    c->n_subjects = n, c->subjects = subj, c->subject_classes = cls;
    c->num_class_images = 1;
    c->resolution = 16, c->batch_size = 4, c->steps = 2;
    c->svd_cache_dir = "";
    c->out_dir = d->out;
    c->quiet = 1, c->force = 1;
}

/* Draws `steps` batches; returns a checksum of x0 / ids / unmix specification, counts composites. */
static double draw(trainer_t *t, int steps, int *composites, int *with_positions) {
    double sum = 0;
    *composites = *with_positions = 0;
    const size_t L = t->latent_n;
    for (int s = 0; s < steps; s++) {
        assert_int_equal(trainer_next_batch(t), 0);
        for (int r = 0; r < t->rows; r++) {
            for (size_t i = 0; i < L; i++) sum += (r + 1) * t->x0[r * L + i];
            for (int j = 0; j < t->T; j++) sum += 1e-3 * (j + 1) * t->ids[r * t->T + j];
        }
        for (int r = 0; r < t->cfg.batch_size; r++) {
            char text[512] = "";
            for (int i = 0; i < t->prompts.n; i++)
                if (!memcmp(t->prompts.ids + (size_t)i * t->T, t->ids + (size_t)r * t->T, sizeof(int) * t->T))
                    snprintf(text, sizeof text, "%s", t->prompts.text[i]);
            const int comp = strstr(text, " and ") != NULL;
            *composites += comp;
            *with_positions += strstr(text, "on the left and") != NULL;
            if (!t->ms->unmix_on) continue;
            /* the specification: marks and halves exactly on the composite rows */
            const unmix_t *u = &t->ms->unmix;
            double marks = 0, reg = 0;
            for (int j = 0; j < 2 * t->T; j++) marks += u->tokw[(size_t)r * 2 * t->T + j];
            for (int j = 0; j < 2 * t->h * t->w; j++) reg += u->region[(size_t)r * 2 * t->h * t->w + j];
            if (comp) {
                assert_true(marks >= 2);
                assert_true(reg == t->h * t->w);
                /* subject 0 (left) is the phrase named first */
                const int first_sks = strstr(text, "sks cat") < strstr(text, "hta monkey");
                const float *w0 = u->tokw + (size_t)r * 2 * t->T;
                int pos0 = -1, pos1 = -1;
                for (int j = 0; j < t->T; j++) {
                    if (w0[j] && pos0 < 0) pos0 = j;
                    if (w0[t->T + j] && pos1 < 0) pos1 = j;
                }
                assert_true(pos0 >= 0 && pos1 >= 0 && pos0 < pos1);
                (void)first_sks;
                sum += 1e-2 * (pos0 + 3 * pos1);
            } else {
                assert_true(marks == 0 && reg == 0);
            }
        }
    }
    return sum;
}

static void test_multi_batch(void **state) {
    (void)state;
    sd_set_threads(1);
    msdata_t d;
    make_msdata(&d);
    const char *subj[2] = {d.sa, d.sb}, *cls[2] = {d.cla, d.clb};
    train_config_t c;
    ms_config(&c, &d, subj, 2, cls);
    c.cutmix_prob = 0.5f;
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    assert_non_null(t.ms);
    assert_int_equal(t.prior, 1);
    assert_int_equal(t.rows, 8);
    assert_int_equal(t.inst.n, 3);
    assert_int_equal(t.cls.n, 2);
    assert_true(t.ms->unmix_on);
    assert_int_equal(t.ms->unmix.n_sites, 4);
    /* the composite prompts are in the table */
    int found = 0;
    for (int i = 0; i < t.prompts.n; i++) {
        found += !strcmp(t.prompts.text[i], "a photo of sks cat on the left and hta monkey on the right");
        found += !strcmp(t.prompts.text[i], "a photo of hta monkey and sks cat");
        found += !strcmp(t.prompts.text[i], "a photo of a cat on the left and a monkey on the right");
    }
    assert_int_equal(found, 3);
    int comp, pos;
    const double s1 = draw(&t, 10, &comp, &pos);
    print_message("40 rows: %d composites (%d with positions)\n", comp, pos);
    assert_true(comp >= 8 && comp <= 32);   /* p = 0.5 of 40 */
    assert_true(pos > 0 && pos < comp);
    trainer_close(&t);
    /* the same seed draws the same batches; another seed does not */
    assert_int_equal(trainer_open(&t, &c), 0);
    int comp2, pos2;
    const double s2 = draw(&t, 10, &comp2, &pos2);
    trainer_close(&t);
    assert_true(s1 == s2 && comp == comp2 && pos == pos2);
    c.seed = 43;
    assert_int_equal(trainer_open(&t, &c), 0);
    const double s3 = draw(&t, 10, &comp2, &pos2);
    trainer_close(&t);
    assert_true(s3 != s1);
    /* cutmix off: only single-subject rows */
    c.cutmix_prob = 0;
    assert_int_equal(trainer_open(&t, &c), 0);
    assert_false(t.ms->unmix_on);
    draw(&t, 3, &comp2, &pos2);
    assert_int_equal(comp2, 0);
    trainer_close(&t);
    /* a short run trains and writes the shifts; the Unmix term enters the loss */
    c.cutmix_prob = 1, c.steps = 2, c.batch_size = 1, c.unmix_weight = 1000;
    assert_int_equal(trainer_open(&t, &c), 0);
    train_losses_t l;
    assert_int_equal(trainer_next_batch(&t), 0);
    assert_int_equal(trainer_micro_step(&t, t.x0, t.eps, t.ts, t.ids, t.ctx, 1, 1, 1.0f, &l), 0);
    assert_true(l.unmix > 0 && fabs(l.loss - (l.instance + l.prior + l.unmix)) < 1e-9 * fabs(l.loss));
    assert_int_equal(trainer_run(&t), 0);
    trainer_close(&t);
    char p[256];
    snprintf(p, sizeof p, "%s/spectral_shifts.safetensors", d.out);
    assert_int_equal(access(p, F_OK), 0);
    rm_tree(d.tmp);
}

static void expect_open_error(train_config_t *c, const char *what) {
    trainer_t t;
    const int rc = trainer_open(&t, c);
    if (rc == 0 || !strstr(sd_last_error(), what)) print_error("got %d '%s', want '%s'\n", rc, sd_last_error(), what);
    assert_true(rc != 0);
    assert_non_null(strstr(sd_last_error(), what));
    trainer_close(&t);
}

static void test_multi_errors(void **state) {
    (void)state;
    sd_set_threads(1);
    msdata_t d;
    make_msdata(&d);
    train_config_t c;
    const char *bad[2] = {"sks cat", d.sb};
    ms_config(&c, &d, bad, 2, NULL);
    expect_open_error(&c, "expected \"PHRASE=DIR\"");
    char empty[160];
    snprintf(empty, sizeof empty, "sks cat=%s", d.empty);
    const char *noimg[2] = {empty, d.sb};
    ms_config(&c, &d, noimg, 2, NULL);
    expect_open_error(&c, "holds no images");
    const char *one[1] = {d.sa};
    ms_config(&c, &d, one, 1, NULL);
    c.cutmix_prob = 0.6f;
    expect_open_error(&c, "Cut-Mix needs at least two --subject");
    ms_config(&c, &d, one, 1, NULL);   /* one subject, default: single-subject training */
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    assert_true(t.ms->cutmix_prob == 0 && !t.ms->unmix_on);
    trainer_close(&t);
    const char *twice[2] = {d.sa, d.sa};
    ms_config(&c, &d, twice, 2, NULL);
    expect_open_error(&c, "given twice");
    const char *subj[2] = {d.sa, d.sb}, *cls[2] = {d.cla, NULL};
    ms_config(&c, &d, subj, 2, cls);
    expect_open_error(&c, "one for every --subject");
    ms_config(&c, &d, subj, 2, NULL);
    c.prompt_template = "a photo";
    expect_open_error(&c, "must contain {}");
    ms_config(&c, &d, subj, 2, NULL);
    c.unmix_layers = "99";
    expect_open_error(&c, "'99' selects no cross-attention layer");
    ms_config(&c, &d, subj, 2, NULL);
    c.instance_dir = d.a;
    expect_open_error(&c, "--subject replaces --instance-dir");
    rm_tree(d.tmp);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unmix_golden),
        cmocka_unit_test(test_unmix_site_fd),
        cmocka_unit_test(test_unmix_normalisation),
        cmocka_unit_test(test_leakage_sums),
        cmocka_unit_test(test_unmix_layers),
        cmocka_unit_test(test_compose_halves),
        cmocka_unit_test(test_prompts),
        cmocka_unit_test(test_multi_batch),
        cmocka_unit_test(test_multi_errors),
    };
    int rc = RUN_TESTS(argc, argv, "cutmix", tests, NULL, NULL);
    scratch_free_all();
    return rc;
}
