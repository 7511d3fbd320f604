/* `svdiff train` (src/train/): one training step of the tiny SD model against PyTorch (loss and the
 * gradient of every shift, then five AdamW steps: tests/reference/gen_train_golden.py), a finite-
 * difference check of the whole step, the LR schedules, the epoch order, byte-identical reruns,
 * kill + --resume reproducing an uninterrupted run, bad inputs (clear error, nothing written) and
 * an end-to-end run on images written here (class-image generation, captions, flips, random
 * crops, sample grids). */
#define _GNU_SOURCE   /* nftw, mkdtemp, setenv */
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "io/image.h"
#include "io/runlock.h"
#include "shifts/shifts.h"
#include "train/checkpoint.h"
#include "train/dataset.h"
#include "train/train_mode.h"
#include "train/trainer.h"

static char g_model[4096];

static const char *model_dir(void) {
    snprintf(g_model, sizeof g_model, "%s", source_path("tests/fixtures/tiny-sd/diffusers"));
    return g_model;
}

/* ---- files ---- */

static void make_tmp(char *dir, size_t cap) {
    snprintf(dir, cap, "/tmp/svdiff-train-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* tmp/inst: three images of different sizes, one with a caption; tmp/cls: two class images. */
static void make_data(const char *tmp) {
    char p[4200];
    snprintf(p, sizeof p, "%s/inst", tmp);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/inst/a.png", tmp);
    write_test_png(p, 20, 24, 1);
    snprintf(p, sizeof p, "%s/inst/b.png", tmp);
    write_test_png(p, 16, 16, 2);
    snprintf(p, sizeof p, "%s/inst/c.png", tmp);
    write_test_png(p, 33, 18, 3);
    snprintf(p, sizeof p, "%s/inst/c.txt", tmp);
    write_text(p, "a photo of sks dog on the grass\n");
    snprintf(p, sizeof p, "%s/cls", tmp);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/cls/x.png", tmp);
    write_test_png(p, 16, 16, 4);
    snprintf(p, sizeof p, "%s/cls/y.png", tmp);
    write_test_png(p, 24, 16, 5);
}

typedef struct {
    char tmp[64], inst[128], cls[128], out[128];
} paths_t;

/* A small but complete configuration: prior preservation, text encoder, flips, random crops,
 * accumulation, a cosine schedule with warmup. */
static void small_config(train_config_t *c, paths_t *p, const char *out) {
    train_config_default(c);
    snprintf(p->inst, sizeof p->inst, "%s/inst", p->tmp);
    snprintf(p->cls, sizeof p->cls, "%s/cls", p->tmp);
    snprintf(p->out, sizeof p->out, "%s/%s", p->tmp, out);
    c->model = model_dir();
    c->instance_dir = p->inst, c->instance_prompt = "a photo of sks dog";
    c->class_dir = p->cls, c->class_prompt = "a photo of a dog", c->num_class_images = 2;
    c->resolution = 16, c->flip = 1;
    c->batch_size = 1, c->grad_accum = 2, c->steps = 4;
    c->lr_schedule = LR_COSINE, c->warmup = 1;
    c->train_text_encoder = 1;
    c->svd_cache_dir = "";
    c->out_dir = p->out;
    c->quiet = 1;
}

/* ---- golden: one step and five AdamW steps against PyTorch ---- */

typedef struct {
    const st_file_t *f;
    int missing;
} install_ctx_t;

static void install(install_ctx_t *ic, const char *name, weight_t *w) {
    char key[512];
    snprintf(key, sizeof key, "svd/%s.S", name);
    const st_tensor_t *S = st_find(ic->f, key);
    if (!S) {
        print_error("fixture has no factors for %s\n", name);
        ic->missing++;
        return;
    }
    const int rank = (int)S->numel;
    snprintf(key, sizeof key, "svd/%s.U", name);
    float *u = golden_get(ic->f, key, (int64_t)w->rows * rank);
    snprintf(key, sizeof key, "svd/%s.S", name);
    float *s = golden_get(ic->f, key, rank);
    snprintf(key, sizeof key, "svd/%s.Vt", name);
    float *vt = golden_get(ic->f, key, (int64_t)rank * w->cols);
    weight_make_spectral_from(w, u, s, vt, rank, 0);
    free(u), free(s), free(vt);
}

static int install_te(void *ctx, const clip_module_t *mod) {
    if (!mod->w) return 0;
    char name[300];
    snprintf(name, sizeof name, "te/%s", mod->path);
    install(ctx, name, mod->w);
    return 0;
}

static float meta_f(const st_file_t *f, const char *key) {
    const char *v = st_meta(f, key);
    assert_non_null(v);
    return strtof(v, NULL);
}

typedef struct {
    trainer_t t;
    st_file_t f;
    float *x0, *eps;
    int ts[4], ids[4 * 77];
    int ni, nc;
} golden_t;

static void golden_setup(golden_t *g) {
    sd_set_threads(1);   /* tiny shapes: a thread team costs more than it saves on a busy machine */
    golden_open(&g->f, "train/golden.safetensors");
    g->ni = atoi(st_meta(&g->f, "n_inst")), g->nc = atoi(st_meta(&g->f, "n_class"));
    assert_int_equal(g->ni + g->nc, 4);
    train_config_t c;
    train_config_default(&c);
    c.model = model_dir();
    c.resolution = 16, c.batch_size = g->ni, c.train_text_encoder = 1;
    c.prior_loss_weight = meta_f(&g->f, "prior_loss_weight");
    c.lr = meta_f(&g->f, "lr"), c.lr_1d = meta_f(&g->f, "lr_1d");
    c.max_grad_norm = meta_f(&g->f, "max_grad_norm");
    c.svd_cache_dir = "";
    c.quiet = 1;
    assert_int_equal(trainer_load_model(&g->t, &c), 0);
    install_ctx_t ic = {&g->f, 0};
    for (int i = 0; i < g->t.p.unet.n_layers; i++) {
        char name[300];
        snprintf(name, sizeof name, "unet/%s", g->t.p.unet.layers[i]->name);
        install(&ic, name, &g->t.p.unet.layers[i]->w);
    }
    clip_visit_modules(&g->t.p.clip, NULL, install_te, &ic);
    assert_int_equal(ic.missing, 0);
    assert_int_equal(trainer_prepare(&g->t, 1), 0);
    assert_int_equal(g->t.n_params, atoi(st_meta(&g->f, "n_params")));
    const size_t L = g->t.latent_n;
    g->x0 = golden_get(&g->f, "x0", 4 * (int64_t)L);
    g->eps = golden_get(&g->f, "eps", 4 * (int64_t)L);
    int64_t v[4 * 77];
    assert_int_equal(st_read_i64(v, st_find(&g->f, "timesteps")), 0);
    for (int i = 0; i < 4; i++) g->ts[i] = (int)v[i];
    assert_int_equal(st_read_i64(v, st_find(&g->f, "ids")), 0);
    for (int i = 0; i < 4 * 77; i++) g->ids[i] = (int)v[i];
}

static void golden_teardown(golden_t *g) {
    free(g->x0), free(g->eps);
    st_close(&g->f);
    trainer_close(&g->t);
}

static void test_golden_step(void **state) {
    (void)state;
    golden_t g;
    golden_setup(&g);
    trainer_t *t = &g.t;
    train_losses_t l;
    assert_int_equal(trainer_micro_step(t, g.x0, g.eps, g.ts, g.ids, NULL, g.ni, g.nc, 1.0f, &l), 0);
    float *parts = golden_get(&g.f, "loss_parts", 2), *losses = golden_get(&g.f, "losses", 6);
    const float got_parts[2] = {(float)l.instance, (float)l.prior}, got_loss = (float)l.loss;
    assert_close("instance and prior loss", got_parts, parts, 2, 1e-4);
    assert_close("loss", &got_loss, &losses[0], 1, 1e-4);
    /* the gradient of every shift array, each to 1e-3 of its own largest entry */
    double worst = 0;
    int n_norm = 0, n_te = 0;
    for (int i = 0; i < t->n_params; i++) {
        const train_param_t *p = &t->params[i];
        char key[512];
        snprintf(key, sizeof key, "%s.grad", p->name);
        float *want = golden_get(&g.f, key, p->n);
        assert_close(key, p->grad, want, (size_t)p->n, 1e-3);
        worst = fmax(worst, rel_error(p->grad, want, (size_t)p->n));
        n_norm += p->group == 1, n_te += !strncmp(p->name, "te/", 3);
        free(want);
    }
    assert_true(n_norm > 0 && n_te > 0);
    print_message("golden step: %d shift arrays (%d norm, %d text encoder), worst gradient error %.2e\n", t->n_params,
                  n_norm, n_te, worst);
    /* five AdamW steps on the same batch: loss before each and after the last */
    float got[6];
    got[0] = got_loss;
    for (int k = 1; k <= 5; k++) {
        trainer_optimizer_step(t, NULL);
        assert_int_equal(trainer_micro_step(t, g.x0, g.eps, g.ts, g.ids, NULL, g.ni, g.nc, 1.0f, &l), 0);
        got[k] = (float)l.loss;
    }
    for (int k = 0; k < 6; k++) {
        print_message("  loss %d: %.7f (PyTorch %.7f)\n", k, got[k], losses[k]);
        assert_close("loss after AdamW steps", &got[k], &losses[k], 1, 1e-3);
    }
    assert_true(losses[5] < 0.95f * losses[0]);   /* the steps move the loss far beyond the tolerance */
    for (int i = 0; i < t->n_params; i++) {
        const train_param_t *p = &t->params[i];
        char key[512];
        snprintf(key, sizeof key, "%s.final", p->name);
        float *want = golden_get(&g.f, key, p->n);
        assert_close(key, p->value, want, (size_t)p->n, 2e-3);
        free(want);
    }
    free(parts), free(losses);
    golden_teardown(&g);
}

/* Finite differences of the trainer's own loss with respect to a few shift entries. */
typedef struct {
    golden_t *g;
} fd_ctx_t;

static double fd_loss(void *vctx) {
    golden_t *g = ((fd_ctx_t *)vctx)->g;
    train_losses_t l;
    trainer_micro_step(&g->t, g->x0, g->eps, g->ts, g->ids, NULL, g->ni, g->nc, 1.0f, &l);
    unet_grads_zero(&g->t.ug);
    clip_grads_zero(&g->t.cg);
    return l.loss;
}

static void test_step_finite_differences(void **state) {
    (void)state;
    golden_t g;
    golden_setup(&g);
    trainer_t *t = &g.t;
    /* move away from zero so that the check is not at a special point */
    trng_t r;
    trng_seed(&r, 77);
    for (int i = 0; i < t->n_params; i++)
        for (int k = 0; k < t->params[i].n; k++) t->params[i].value[k] = 0.02f * trng_normal(&r);
    assert_int_equal(trainer_micro_step(t, g.x0, g.eps, g.ts, g.ids, NULL, g.ni, g.nc, 1.0f, NULL), 0);
    const char *names[] = {"unet/conv_in", "unet/down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                           "unet/mid_block.resnets.0.norm1", "unet/up_blocks.1.attentions.0.norm",
                           "te/text_model.embeddings.token_embedding.weight",
                           "te/text_model.encoder.layers.1.mlp.fc1.weight"};
    enum { N_CHECK = sizeof names / sizeof *names };
    train_param_t *ps[N_CHECK];
    float *grads[N_CHECK];
    for (int j = 0; j < N_CHECK; j++) { /* the loss below zeroes the gradients: keep them first */
        ps[j] = NULL;
        for (int i = 0; i < t->n_params; i++)
            if (!strcmp(t->params[i].name, names[j])) ps[j] = &t->params[i];
        if (!ps[j]) {
            print_error("no trained array %s\n", names[j]);
            fail();
        }
        grads[j] = malloc(sizeof(float) * ps[j]->n);
        memcpy(grads[j], ps[j]->grad, sizeof(float) * ps[j]->n);
    }
    fd_ctx_t ctx = {&g};
    for (int j = 0; j < N_CHECK; j++) {
        fd_check(names[j], ps[j]->value, grads[j], (size_t)ps[j]->n, 6, fd_loss, &ctx, 1e-2f, 2e-2);
        free(grads[j]);
    }
    golden_teardown(&g);
}

/* ---- schedule and data order ---- */

static void test_lr_schedule(void **state) {
    (void)state;
    train_config_t c;
    train_config_default(&c);
    c.steps = 10;
    for (int s = 0; s < 10; s++) assert_true(trainer_lr_factor(&c, s) == 1.0);
    c.warmup = 4;   /* diffusers: step s of the warmup uses s / warmup (0 at the first step) */
    assert_true(trainer_lr_factor(&c, 0) == 0.0);
    assert_true(fabs(trainer_lr_factor(&c, 2) - 0.5) < 1e-12);
    assert_true(trainer_lr_factor(&c, 4) == 1.0 && trainer_lr_factor(&c, 9) == 1.0);
    c.lr_schedule = LR_LINEAR;
    assert_true(fabs(trainer_lr_factor(&c, 4) - 1.0) < 1e-12);
    assert_true(fabs(trainer_lr_factor(&c, 7) - 0.5) < 1e-12);
    assert_true(fabs(trainer_lr_factor(&c, 9) - 1.0 / 6.0) < 1e-12);
    c.lr_schedule = LR_COSINE;
    assert_true(fabs(trainer_lr_factor(&c, 4) - 1.0) < 1e-12);
    assert_true(fabs(trainer_lr_factor(&c, 7) - 0.5) < 1e-12);
    assert_true(fabs(trainer_lr_factor(&c, 9) - 0.5 * (1 + cos(M_PI * 5.0 / 6.0))) < 1e-12);
    assert_true(trainer_lr_factor(&c, 10) < 1e-12);
}

static void test_data_order(void **state) {
    (void)state;
    data_order_t a, b;
    data_order_init(&a, 7, 5);
    data_order_init(&b, 7, 5);
    int seen[3][7] = {{0}}, same_epochs = 1, first[7];
    for (int e = 0; e < 3; e++)
        for (int i = 0; i < 7; i++) {
            int k = data_order_next(&a);
            assert_int_equal(k, data_order_next(&b));
            assert_true(k >= 0 && k < 7);
            seen[e][k]++;
            if (e == 0) first[i] = k;
            else if (e == 1 && first[i] != k) same_epochs = 0;
        }
    for (int e = 0; e < 3; e++)
        for (int k = 0; k < 7; k++) assert_int_equal(seen[e][k], 1);   /* every epoch a permutation */
    assert_false(same_epochs);                                         /* reshuffled per epoch */
    assert_int_equal(a.epoch, 3);
    data_order_free(&a), data_order_free(&b);
}

/* ---- runs ---- */

static void test_determinism(void **state) {
    (void)state;
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    sd_set_threads(2);
    train_config_t c1, c2;
    paths_t p2 = p;
    small_config(&c1, &p, "run1");
    small_config(&c2, &p2, "run2");
    c1.threads = c2.threads = 2;
    assert_int_equal(train_once(&c1), 0);
    assert_int_equal(train_once(&c2), 0);
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/spectral_shifts.safetensors", p.out);
    snprintf(b, sizeof b, "%s/spectral_shifts.safetensors", p2.out);
    assert_same_file(a, b);
    snprintf(a, sizeof a, "%s/spectral_shifts_te.safetensors", p.out);
    snprintf(b, sizeof b, "%s/spectral_shifts_te.safetensors", p2.out);
    assert_same_file(a, b);
    /* and training changed something: a different seed gives different shifts */
    paths_t p3 = p;
    train_config_t c3;
    small_config(&c3, &p3, "run3");
    c3.seed = 43, c3.threads = 2;
    assert_int_equal(train_once(&c3), 0);
    size_t n1 = 0, n3 = 0;
    snprintf(a, sizeof a, "%s/spectral_shifts.safetensors", p.out);
    snprintf(b, sizeof b, "%s/spectral_shifts.safetensors", p3.out);
    char *x = read_file(a, &n1), *y = read_file(b, &n3);
    assert_true(n1 == n3 && memcmp(x, y, n1) != 0);
    free(x), free(y);
    rm_tree(p.tmp);
}

/* The "step,loss,instance,prior,lr,grad_norm" part of each loss.csv row (seconds dropped). */
static char *csv_without_seconds(const char *path) {
    size_t n = 0;
    char *s = read_file(path, &n);
    assert_non_null(s);
    char *out = malloc(n + 1), *o = out;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        char *last = strrchr(line, ',');
        if (last) *last = 0;
        o += sprintf(o, "%s\n", line);
    }
    free(s);
    return out;
}

static void test_resume_after_kill(void **state) {
    (void)state;
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    /* OpenMP cannot run a team in a forked child of a process that used one (libgomp), so the
     * runs compared here use one thread each */
    sd_set_threads(1);
    paths_t pa = p, pb = p;
    train_config_t ca, cb;
    small_config(&ca, &pa, "straight");
    small_config(&cb, &pb, "killed");
    ca.steps = cb.steps = 6;
    ca.threads = cb.threads = 1;
    cb.checkpoint_every = 2;
    assert_int_equal(train_once(&ca), 0);

    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("SVDIFF_TEST_ABORT_AT_STEP", "3", 1);
        train_once(&cb);
        _exit(1);   /* not reached when the hook works */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 137);
    char ck[256], fa[256], fb[256], la[256], lb[256];
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", pb.out);
    snprintf(fb, sizeof fb, "%s/spectral_shifts.safetensors", pb.out);
    assert_true(path_exists(ck));
    assert_false(path_exists(fb));

    cb.resume = 1;
    assert_int_equal(train_once(&cb), 0);
    snprintf(fa, sizeof fa, "%s/spectral_shifts.safetensors", pa.out);
    assert_same_file(fa, fb);
    snprintf(fa, sizeof fa, "%s/spectral_shifts_te.safetensors", pa.out);
    snprintf(fb, sizeof fb, "%s/spectral_shifts_te.safetensors", pb.out);
    assert_same_file(fa, fb);
    snprintf(la, sizeof la, "%s/loss.csv", pa.out);
    snprintf(lb, sizeof lb, "%s/loss.csv", pb.out);
    char *x = csv_without_seconds(la), *y = csv_without_seconds(lb);
    assert_string_equal(x, y);   /* step 3's row of the killed run was replaced, not duplicated */
    free(x), free(y);

    /* the checkpoint (now of step 4) refuses other settings, and a damaged one is an error;
     * either way nothing in the folder changes */
    size_t n0 = 0, n1 = 0, c0 = 0;
    snprintf(fb, sizeof fb, "%s/spectral_shifts.safetensors", pb.out);
    char *before = read_file(fb, &n0), *csv0 = read_file(lb, &c0);
    trainer_t t;
    cb.lr = 2e-3f;
    assert_int_not_equal(trainer_open(&t, &cb), 0);
    assert_non_null(strstr(sd_last_error(), "lr (checkpoint: "));
    trainer_close(&t);
    cb.lr = 1e-3f;
    size_t nck = 0;
    char *ckdata = read_file(ck, &nck);
    FILE *f = fopen(ck, "wb");
    fwrite(ckdata, 1, nck / 2, f);   /* torn */
    fclose(f);
    free(ckdata);
    assert_int_not_equal(trainer_open(&t, &cb), 0);
    assert_non_null(strstr(sd_last_error(), "--resume"));
    print_message("corrupt checkpoint: %s\n", sd_last_error());
    trainer_close(&t);
    char *after = read_file(fb, &n1), *csv1 = read_file(lb, &c0);
    assert_true(n0 == n1 && !memcmp(before, after, n0));
    assert_string_equal(csv0, csv1);
    free(before), free(after), free(csv0), free(csv1);
    rm_tree(p.tmp);
}

/* In a forked child: 0 when run_lock_take(dir) succeeds, else 1, or 2 when it fails with a
 * message other than one naming `dir` and `holder`'s PID. */
static int child_lock_result(const char *dir, pid_t holder) {
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        run_lock_t l = {0};
        int rc = run_lock_take(&l, dir);
        char want[600];
        snprintf(want, sizeof want, "%s: another svdiff run (PID %ld) is writing into this folder", dir, (long)holder);
        _exit(rc == 0 ? 0 : strstr(sd_last_error(), want) ? 1 : 2);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* The output-folder lock (runlock.h): re-entrant in one process, refused to another (a forked
 * child does not inherit the right to it) with the folder and the holder's PID; released by the
 * last release, and by the end of its process, while the lock file stays. A trainer into a held
 * folder fails in trainer_open, before anything is written. */
static void test_output_lock(void **state) {
    (void)state;
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    run_lock_t a = {0}, b = {0};
    assert_int_equal(run_lock_take(&a, p.tmp), 0);
    assert_int_equal(run_lock_take(&b, p.tmp), 0);   /* re-entrant: `edit` and its trainer */
    assert_int_equal(child_lock_result(p.tmp, getpid()), 1);
    run_lock_release(&a);
    assert_int_equal(child_lock_result(p.tmp, getpid()), 1);   /* b still holds it */
    /* a trainer in another process: refused at trainer_open */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        train_config_t c;
        small_config(&c, &p, "");
        c.out_dir = p.tmp;
        trainer_t t;
        int rc = trainer_open(&t, &c);
        const int ok = rc == SD_ERR_IO && strstr(sd_last_error(), "another svdiff run (PID ");
        trainer_close(&t);
        _exit(ok ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    run_lock_release(&b);
    assert_int_equal(child_lock_result(p.tmp, getpid()), 0);   /* free; the child's ended with it */
    char lf[300];
    snprintf(lf, sizeof lf, "%s/" RUN_LOCK_FILE, p.tmp);
    assert_true(path_exists(lf));
    assert_int_equal(run_lock_take(&a, p.tmp), 0);   /* the stale file of the ended child is no obstacle */
    run_lock_release(&a);
    rm_tree(p.tmp);
}

/* A run that cannot write loss.csv (here the file size limit, as a full disk would) stops at that
 * step with an error naming the file and the step, before the step's checkpoint; the checkpoint it
 * had stays resumable, and --resume ends with the bytes of an uninterrupted run. (Before: the
 * failed row was ignored, the run went on and failed only at the final shift file.) */
static void test_log_write_error(void **state) {
    (void)state;
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    sd_set_threads(1);   /* the runs below fork (see test_resume_after_kill) */
    paths_t pa = p, pb = p;
    train_config_t ca, cb;
    small_config(&ca, &pa, "straight");
    small_config(&cb, &pb, "logfail");
    ca.steps = cb.steps = 4;
    ca.threads = cb.threads = 1;
    cb.checkpoint_every = 2;
    assert_int_equal(train_once(&ca), 0);

    /* 1. a run killed right after step 2 and its checkpoint */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("SVDIFF_TEST_ABORT_AT_STEP", "2", 1);
        train_once(&cb);
        _exit(1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 137);
    char csv[256], ck[256], fa[256], fb[256];
    snprintf(csv, sizeof csv, "%s/loss.csv", pb.out);
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", pb.out);
    struct stat st;
    assert_int_equal(stat(csv, &st), 0);

    /* 2. resumed where loss.csv cannot grow past its 2 rows: step 3's row fails */
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit lim;
        getrlimit(RLIMIT_FSIZE, &lim);
        lim.rlim_cur = (rlim_t)st.st_size + 16;
        signal(SIGXFSZ, SIG_IGN);   /* a write past the limit then fails with EFBIG */
        setrlimit(RLIMIT_FSIZE, &lim);
        cb.resume = 1;
        trainer_t t;
        int rc = trainer_open(&t, &cb);
        if (!rc) rc = trainer_run(&t);
        printf("resumed with a full loss.csv: rc %d, step %d: %s\n", rc, t.step, sd_last_error());
        const int ok = rc == SD_ERR_IO && t.step == 3 && strstr(sd_last_error(), "/loss.csv: cannot log step 3") &&
                       !strchr(sd_last_error(), '\n');
        trainer_close(&t);
        fflush(NULL);
        _exit(ok ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    snprintf(fb, sizeof fb, "%s/spectral_shifts.safetensors", pb.out);
    assert_false(path_exists(fb));
    st_file_t f;
    assert_int_equal(st_open(&f, ck), 0);
    assert_string_equal(st_meta(&f, "step"), "2");   /* step 3 wrote no checkpoint */
    st_close(&f);

    /* 3. --resume finishes it, byte for byte the uninterrupted run (the torn row is dropped) */
    cb.resume = 1;
    assert_int_equal(train_once(&cb), 0);
    snprintf(fa, sizeof fa, "%s/spectral_shifts.safetensors", pa.out);
    assert_same_file(fa, fb);
    snprintf(fa, sizeof fa, "%s/spectral_shifts_te.safetensors", pa.out);
    snprintf(fb, sizeof fb, "%s/spectral_shifts_te.safetensors", pb.out);
    assert_same_file(fa, fb);
    snprintf(fa, sizeof fa, "%s/loss.csv", pa.out);
    char *x = csv_without_seconds(fa), *y = csv_without_seconds(csv);
    assert_string_equal(x, y);
    free(x), free(y);
    rm_tree(p.tmp);
}

/* Each case: trainer_open fails with a message holding `expect`, and the output folder is not
 * created. */
static void expect_error(train_config_t *c, const char *expect) {
    trainer_t t;
    int rc = trainer_open(&t, c);
    trainer_close(&t);
    if (!rc || !strstr(sd_last_error(), expect)) {
        print_error("expected an error with \"%s\", got rc %d: %s\n", expect, rc, sd_last_error());
        fail();
    }
    assert_null(strchr(sd_last_error(), '\n'));   /* one line */
    if (path_exists(c->out_dir)) {
        print_error("%s was created by a failing run\n", c->out_dir);
        fail();
    }
}

static void test_bad_inputs(void **state) {
    (void)state;
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    sd_set_threads(1);
    train_config_t c;
    char dir[300], file[400];

    small_config(&c, &p, "out");
    snprintf(dir, sizeof dir, "%s/empty", p.tmp);
    mkdir(dir, 0777);
    c.instance_dir = dir;
    expect_error(&c, "holds no images");

    small_config(&c, &p, "out");
    snprintf(dir, sizeof dir, "%s/notimg", p.tmp);
    mkdir(dir, 0777);
    snprintf(file, sizeof file, "%s/notes.md", dir);
    write_text(file, "these are not pixels\n");
    c.instance_dir = dir;
    expect_error(&c, "notes.md: cannot read image");

    small_config(&c, &p, "out");
    c.instance_dir = "/nonexistent/svdiff";
    expect_error(&c, "cannot open the folder");

    small_config(&c, &p, "out");
    char long_prompt[1200] = "a photo of sks dog";
    for (int i = 0; i < 80; i++) strcat(long_prompt, " dog");
    c.instance_prompt = long_prompt;
    expect_error(&c, "--instance-prompt: the prompt has");

    small_config(&c, &p, "out");
    snprintf(dir, sizeof dir, "%s/capt", p.tmp);
    mkdir(dir, 0777);
    snprintf(file, sizeof file, "%s/a.png", dir);
    write_test_png(file, 16, 16, 9);
    snprintf(file, sizeof file, "%s/a.txt", dir);
    write_text(file, long_prompt);
    c.instance_dir = dir;
    expect_error(&c, "caption file of");

    small_config(&c, &p, "out");
    c.class_prompt = NULL;
    expect_error(&c, "both --class-dir and --class-prompt");

    small_config(&c, &p, "out");
    c.resolution = 10;   /* the tiny model needs multiples of 4 */
    expect_error(&c, "--resolution 10");

    small_config(&c, &p, "out");
    c.model = "/nonexistent/model";
    expect_error(&c, "/nonexistent/model");

    small_config(&c, &p, "out");
    c.resume = 1;
    expect_error(&c, "does not exist");

    /* an existing result is not overwritten without --force */
    small_config(&c, &p, "out");
    mkdir(c.out_dir, 0777);
    snprintf(file, sizeof file, "%s/spectral_shifts.safetensors", c.out_dir);
    write_text(file, "previous result");
    trainer_t t;
    assert_int_not_equal(trainer_open(&t, &c), 0);
    trainer_close(&t);
    assert_non_null(strstr(sd_last_error(), "--force"));
    size_t n = 0;
    char *s = read_file(file, &n);
    assert_string_equal(s, "previous result");
    free(s);
    rm_tree(p.tmp);
}

/* The byte offset of `needle` in the file, or -1 (PNG tEXt chunks are stored uncompressed). */
static long file_find(const char *path, const char *needle) {
    size_t n = 0, m = strlen(needle);
    char *s = read_file(path, &n);
    assert_non_null(s);
    long at = -1;
    for (size_t i = 0; at < 0 && i + m <= n; i++)
        if (!memcmp(s + i, needle, m)) at = (long)i;
    free(s);
    return at;
}

/* Class images: batched generation gives image k the same bytes whatever the batch (3 a batch,
 * 1 a batch, and around a kept file, which splits the run of missing numbers); the sampler and
 * steps reach the PNG parameters; exactly the missing count is made. */
static void test_class_images_batched(void **state) {
    (void)state;
    char tmp[256], d1[300], d3[300], dk[300], a[400], b[400];
    make_tmp(tmp, sizeof tmp);
    snprintf(d1, sizeof d1, "%s/b1", tmp), snprintf(d3, sizeof d3, "%s/b3", tmp), snprintf(dk, sizeof dk, "%s/kept", tmp);
    sd_set_threads(1);
    pipeline_t pl;
    assert_int_equal(pipeline_open(&pl, model_dir(), NULL), 0);
    class_gen_t g = {.sampler = SAMPLER_DPMPP_2M, .steps = 3, .cfg = 7.5f, .batch = 1};
    assert_int_equal(class_images_generate(&pl, d1, "a photo of a dog", 0, 3, 16, &g, 11), 0);
    g.batch = 3;
    assert_int_equal(class_images_generate(&pl, d3, "a photo of a dog", 0, 3, 16, &g, 11), 0);
    for (int k = 0; k < 3; k++) {
        snprintf(a, sizeof a, "%s/class-%05d.png", d1, k), snprintf(b, sizeof b, "%s/class-%05d.png", d3, k);
        assert_same_file(a, b);
        assert_true(file_find(b, "Steps: 3, Sampler: dpmpp_2m, CFG scale: 7.5, Seed: ") > 0);
    }
    snprintf(b, sizeof b, "%s/class-00003.png", d3);
    assert_false(path_exists(b));
    /* image 1 kept: 0 and 2 are made (two batches), 3 is not */
    assert_int_equal(mkdir(dk, 0777), 0);
    snprintf(a, sizeof a, "%s/class-00001.png", d1), snprintf(b, sizeof b, "%s/class-00001.png", dk);
    size_t n = 0;
    char *bytes = read_file(a, &n);
    FILE *f = fopen(b, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f), free(bytes);
    assert_int_equal(class_images_generate(&pl, dk, "a photo of a dog", 1, 3, 16, &g, 11), 0);
    for (int k = 0; k < 3; k++) {
        snprintf(a, sizeof a, "%s/class-%05d.png", d1, k), snprintf(b, sizeof b, "%s/class-%05d.png", dk, k);
        assert_same_file(a, b);
    }
    snprintf(b, sizeof b, "%s/class-00003.png", dk);
    assert_false(path_exists(b));
    /* the sampler is the one asked for: DDIM's images differ and say so */
    g.sampler = SAMPLER_DDIM, g.batch = 2;
    snprintf(dk, sizeof dk, "%s/ddim", tmp);
    assert_int_equal(class_images_generate(&pl, dk, "a photo of a dog", 0, 1, 16, &g, 11), 0);
    snprintf(a, sizeof a, "%s/class-00000.png", d1), snprintf(b, sizeof b, "%s/class-00000.png", dk);
    assert_true(file_find(b, "Steps: 3, Sampler: ddim, CFG scale: 7.5, Seed: ") > 0);
    size_t na = 0, nb = 0;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    assert_true(na != nb || memcmp(x, y, na) != 0);
    free(x), free(y);
    pipeline_close(&pl);
    rm_tree(tmp);
}

static void test_end_to_end(void **state) {
    (void)state;
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    sd_set_threads(1);
    train_config_t c;
    small_config(&c, &p, "out");
    char cls[256];
    snprintf(cls, sizeof cls, "%s/generated", p.tmp);
    c.class_dir = cls;   /* empty: generated by the base model */
    c.num_class_images = 3, c.class_steps = 3;
    c.train_text_encoder = 0, c.grad_accum = 1, c.batch_size = 2, c.steps = 4;
    c.lr_schedule = LR_CONSTANT, c.warmup = 0;
    c.sample_every = 2, c.sample_steps = 3;
    const char *prompts[2] = {"a photo of sks dog", "a dog on the beach"};
    c.sample_prompts = prompts, c.n_sample_prompts = 2;
    c.save_fp16 = 1;
    scratch_reset_peak();
    assert_int_equal(train_once(&c), 0);

    char path[512];
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/class-%05d.png", cls, k);
        assert_true(path_exists(path));
    }
    for (int s = 2; s <= 4; s += 2) {
        snprintf(path, sizeof path, "%s/samples/step-%06d.png", p.out, s);
        image_t img;
        assert_int_equal(image_load(&img, path), 0);
        assert_int_equal(img.w, 2 * 16 + 3 * 2);   /* two 16 px samples side by side, 2 px borders */
        assert_int_equal(img.h, 16 + 2 * 2);
        image_free(&img);
    }
    snprintf(path, sizeof path, "%s/spectral_shifts_te.safetensors", p.out);
    assert_false(path_exists(path));
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", p.out);
    shift_set_t s;
    assert_int_equal(shiftset_load(&s, path), 0);
    char hash[17];
    pipeline_t pl;
    assert_int_equal(pipeline_open(&pl, model_dir(), NULL), 0);
    assert_int_equal(model_weights_hash(&pl.model, hash), 0);
    const int want_entries = pl.unet.n_layers + pl.unet.n_norms;
    pipeline_close(&pl);
    assert_string_equal(shiftset_meta(&s, "base_model_hash"), hash);
    assert_string_equal(shiftset_meta(&s, "instance_prompt"), "a photo of sks dog");
    assert_string_equal(shiftset_meta(&s, "steps"), "4");
    assert_string_equal(shiftset_meta(&s, "norm_shift"), "element");
    assert_int_equal(s.n, want_entries);
    int nonzero = 0;
    for (int i = 0; i < s.n; i++)
        for (int k = 0; k < s.entries[i].n; k++) nonzero += s.entries[i].values[k] != 0;
    assert_true(nonzero > 0);
    shiftset_free(&s);
    snprintf(path, sizeof path, "%s/loss.csv", p.out);
    size_t n = 0;
    char *csv = read_file(path, &n);
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += csv[i] == '\n';
    assert_int_equal(lines, 1 + 4);
    assert_non_null(strstr(csv, "step,loss,instance_loss,prior_loss,lr,grad_norm,seconds\n1,"));
    free(csv);
    print_message("end to end: 4 steps, peak RSS %.1f MiB\n", trainer_peak_rss() / 1048576.0);
    rm_tree(p.tmp);
}

/* --rank R: only the shifts of the R largest singular values move; the rest stay exactly 0
 * (norm-gain shifts are not ranked), and the file records the rank. */
static void test_rank_limited(void **state) {
    (void)state;
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    train_config_t c;
    small_config(&c, &p, "rank");
    c.rank = 2;
    assert_int_equal(train_once(&c), 0);
    char path[256];
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", p.out);
    shift_set_t s;
    assert_int_equal(shiftset_load(&s, path), 0);
    int matrices = 0, moved = 0;
    for (int i = 0; i < s.n; i++) {
        const shift_entry_t *e = &s.entries[i];
        const char *last = strrchr(e->path, '.');
        if (strstr(last ? last : e->path, "norm")) continue;   /* norm-gain shift */
        matrices++;
        for (int j = 2; j < e->n; j++) assert_true(e->values[j] == 0.0f);
        for (int j = 0; j < 2 && j < e->n; j++) moved += e->values[j] != 0.0f;
    }
    assert_true(matrices > 0 && moved > matrices);   /* the top-2 shifts did train */
    assert_non_null(shiftset_meta(&s, "rank"));
    assert_string_equal(shiftset_meta(&s, "rank"), "2");
    shiftset_free(&s);
    rm_tree(p.tmp);
}

/* --shift-layers: only the arrays whose name contains one of the substrings move (here the UNet's
 * cross-attention keys and every text-encoder array); the rest stay exactly 0, the file records
 * the list, and a list that matches nothing is refused before anything is written. */
static void test_shift_layers(void **state) {
    (void)state;
    assert_true(shift_layer_selected(NULL, "unet/conv_in"));
    assert_true(shift_layer_selected("", "unet/conv_in"));
    assert_true(shift_layer_selected("x,,conv_in", "unet/conv_in"));
    assert_false(shift_layer_selected("attn2,te/", "unet/conv_in"));
    assert_true(shift_layer_selected("attn2,te/", "te/text_model.encoder.layers.0.self_attn.q_proj.weight"));
    paths_t p;
    make_tmp(p.tmp, sizeof p.tmp);
    make_data(p.tmp);
    train_config_t c;
    small_config(&c, &p, "layers");
    c.shift_layers = "attn2.to_k,te/";
    assert_int_equal(train_once(&c), 0);
    char path[256];
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", p.out);
    shift_set_t s;
    assert_int_equal(shiftset_load(&s, path), 0);
    int selected = 0, moved = 0, others = 0;
    for (int i = 0; i < s.n; i++) {
        const shift_entry_t *e = &s.entries[i];
        int nonzero = 0;
        for (int j = 0; j < e->n; j++) nonzero += e->values[j] != 0.0f;
        if (strstr(e->path, "attn2.to_k")) selected++, moved += nonzero > 0;
        else others++, assert_int_equal(nonzero, 0);
    }
    assert_true(selected > 0 && moved == selected && others > 0);
    assert_string_equal(shiftset_meta(&s, "shift_layers"), "attn2.to_k,te/");
    shiftset_free(&s);
    snprintf(path, sizeof path, "%s/spectral_shifts_te.safetensors", p.out);
    assert_int_equal(shiftset_load(&s, path), 0);
    moved = 0;
    for (int i = 0; i < s.n; i++)
        for (int j = 0; j < s.entries[i].n; j++) moved += s.entries[i].values[j] != 0.0f;
    assert_true(moved > 0);
    shiftset_free(&s);
    small_config(&c, &p, "layers-none");
    c.shift_layers = "no_such_module";
    expect_error(&c, "matches no weight of the model");
    rm_tree(p.tmp);
}

/* The mode table (train/train_mode.h): each of the three tables is complete, trainer_load_model
 * picks cfg.mode's, prepare + visit list arrays named "unet/" / "te/" by component, each with a
 * value and a gradient, and one micro-batch and optimizer step moves every mode's arrays (full
 * mode with --ema-decay: its after_step keeps the EMA between the initial and the new values). */
static void test_mode_interface(void **state) {
    (void)state;
    sd_set_threads(1);
    const train_mode_t modes[3] = {TRAIN_MODE_SHIFTS, TRAIN_MODE_FULL, TRAIN_MODE_LORA};
    const char *const names[3] = {"shifts", "full", "lora"};
    for (int k = 0; k < 3; k++) {
        const train_mode_ops_t *ops = train_mode_ops(modes[k]);
        assert_string_equal(ops->name, names[k]);
        assert_non_null(ops->result_file);
        assert_true(ops->prepare && ops->visit && ops->save && ops->summary);
        assert_int_equal(ops->spectral_options, k == 0);
        assert_int_equal(ops->ema, k == 1);
        assert_int_equal(ops->after_step != NULL, k == 1);
        train_config_t c;
        train_config_default(&c);
        c.model = model_dir();
        c.mode = modes[k], c.resolution = 16, c.train_text_encoder = 1, c.lr = 1e-2f, c.lr_1d = 1e-2f;
        c.ema_decay = k == 1 ? 0.5f : 0.0f;
        c.svd_cache_dir = "", c.quiet = 1;
        trainer_t t;
        assert_int_equal(trainer_load_model(&t, &c), 0);
        assert_ptr_equal(t.mode, ops);
        assert_int_equal(trainer_prepare(&t, 0), 0);
        int n_unet = 0, n_te = 0;
        size_t n_values = 0;
        for (int i = 0; i < t.n_params; i++) {
            const train_param_t *p = &t.params[i];
            assert_non_null(p->value);
            assert_non_null(p->grad);
            assert_true(p->n > 0);
            assert_true(p->component == 0 || p->component == 1);
            assert_int_equal(strncmp(p->name, p->component ? "te/" : "unet/", p->component ? 3 : 5), 0);
            assert_int_equal(p->ema != NULL, k == 1);
            n_unet += !p->component, n_te += p->component;
            n_values += (size_t)p->n;
        }
        assert_true(n_unet > 0 && n_te > 0);
        assert_int_equal(n_values, t.n_values);
        /* one step on random inputs */
        const size_t L = t.latent_n;
        float *x0 = malloc(sizeof(float) * L), *eps = malloc(sizeof(float) * L);
        float *before = malloc(sizeof(float) * t.n_values);
        trng_t r;
        trng_seed(&r, 5 + k);
        for (size_t i = 0; i < L; i++) x0[i] = trng_uniform(&r) - 0.5f, eps[i] = trng_uniform(&r) - 0.5f;
        int ids[77], ts = 500;
        for (int i = 0; i < t.T; i++) ids[i] = (7 * i + 1) % 800;   /* the tiny vocabulary has 814 tokens */
        for (int i = 0, o = 0; i < t.n_params; o += t.params[i].n, i++)
            memcpy(before + o, t.params[i].value, sizeof(float) * (size_t)t.params[i].n);
        train_losses_t l;
        assert_int_equal(trainer_micro_step(&t, x0, eps, &ts, ids, NULL, 1, 0, 1.0f, &l), 0);
        assert_true(isfinite(l.loss) && l.loss > 0);
        trainer_optimizer_step(&t, NULL);
        assert_int_equal(t.step, 1);
        if (ops->after_step) ops->after_step(&(train_model_t){&t.cfg, &t.p, &t.ug, &t.cg, t.model_hash, &t.mode_state, &t.cg2},
                                             t.params, t.n_params, t.step);
        int moved = 0;
        for (int i = 0, o = 0; i < t.n_params; o += t.params[i].n, i++) {
            const train_param_t *p = &t.params[i];
            int m = 0;
            for (int j = 0; j < p->n; j++) {
                m |= p->value[j] != before[o + j];
                assert_true(p->grad[j] == 0.0f);   /* zeroed for the next step */
                if (p->ema) {   /* d = min(0.5, 1/10): between the old and the new value */
                    const float lo = fminf(before[o + j], p->value[j]), hi = fmaxf(before[o + j], p->value[j]);
                    assert_true(p->ema[j] >= lo - 1e-6f && p->ema[j] <= hi + 1e-6f);
                }
            }
            moved += m;
        }
        print_message("mode %s: %d arrays (%d unet, %d te), %zu values, %d moved\n", ops->name, t.n_params, n_unet,
                      n_te, t.n_values, moved);
        assert_true(moved > t.n_params / 2);
        free(x0), free(eps), free(before);
        trainer_close(&t);
    }
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_step),
        cmocka_unit_test(test_step_finite_differences),
        cmocka_unit_test(test_lr_schedule),
        cmocka_unit_test(test_data_order),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_resume_after_kill),
        cmocka_unit_test(test_output_lock),
        cmocka_unit_test(test_log_write_error),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_class_images_batched),
        cmocka_unit_test(test_end_to_end),
        cmocka_unit_test(test_rank_limited),
        cmocka_unit_test(test_shift_layers),
        cmocka_unit_test(test_mode_interface),
    };
    int rc = RUN_TESTS(argc, argv, "train", tests, NULL, NULL);
    scratch_free_all();
    return rc;
}
