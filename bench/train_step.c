/* Training-step benchmark: one SVDiff step on a full-size UNet (every conv / linear spectral
 * from the SVD cache, per-element norm shifts, MSE against the noise, backward to the shifts
 * only, AdamW), with forward / backward / optimizer timed apart and the memory of each phase;
 * GFLOP/s from the products the step executes (bench/lib/flops.c) next to the sgemm and bf16
 * GEMM 2048^3 rates measured in the same process after the timed steps.
 * Not part of the tests; bench/run_train_step.sh runs it next to PyTorch
 * (bench/train_step_torch.py). Usage: bench_train_step --help */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "diffusion/diffusion.h"
#include "io/model.h"
#include "models/unet.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "shifts/shifts.h"
#include "train/optim.h"
#include "lib/benchutil.h"
#include "lib/flops.h"

static double median(const double *v, int n) {
    double s[64];
    memcpy(s, v, sizeof(double) * n);
    qsort(s, n, sizeof *s, bench_cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* A field of /proc/self/status in MB (VmRSS, VmHWM, RssAnon, RssFile). */
static double proc_mb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) kb = atol(line + strlen(key));
    if (f) fclose(f);
    return kb / 1024.0;
}

/* Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so the step's own peak can
 * be told from the set-up's (the SVD cache is mapped and copied during the set-up). */
static void reset_hwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) fputs("5", f), fclose(f);
}

static void die(const char *what) {
    fprintf(stderr, "bench_train_step: %s: %s\n", what, sd_last_error());
    exit(1);
}

/* ---- the trained parameters, as the trainer collects them ---- */

typedef struct {
    float *value, *grad, *m, *v;
    int n, norm;   /* norm: a norm-gain shift (trained at --lr-1d) */
} param_t;

typedef struct {
    param_t *p;
    int n, cap;
    size_t values;
} params_t;

static void collect(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    params_t *ps = ctx;
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 256;
        ps->p = realloc(ps->p, sizeof *ps->p * ps->cap);
        SD_CHECK(ps->p, "out of memory");
    }
    SD_CHECK(grad, "no gradient for %s", name->path);
    ps->p[ps->n++] = (param_t){shift, grad, NULL, NULL, n, name->kind == SHIFT_NORM};
    ps->values += (size_t)n;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --model DIR [options]\n"
            "  --hw N           latent size (32 = 256 px, 64 = 512 px; default 32)\n"
            "  --reps N         timed steps (default 2 at 32x32, 1 otherwise); the median is reported\n"
            "  --warmup N       untimed steps first (default 1 at 32x32, 0 otherwise: the first step\n"
            "                   also pays the first touch of activations, scratch and BLAS buffers)\n"
            "  --ckpt MODE      activation checkpointing: none, transformers, all (default none)\n"
            "  --threads N      OpenMP + OpenBLAS threads (default: all cores)\n"
            "  --svd-cache DIR  SVD cache folder (default $SVDIFF_BENCH_CACHE/svd-cache or bench/out/svd-cache)\n"
            "  --seed N         inputs (default 1)\n"
            "  --svd-batch-mb M when the cache lacks factors: compute them in batches of about M MB of\n"
            "                   fp32 factors, saving the cache after each (bf16: storing them in bf16), so\n"
            "                   a large UNet's fp32 factors never all exist at once (default 0: the\n"
            "                   trainer's way, unet_make_spectral_stored, one save at the end)\n"
            "  --svd-only       stop after the set-up (make the SVD cache)\n",
            argv0);
}

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    const char *model_dir = NULL, *cache_dir = NULL;
    int hw = 32, reps = 0, warmup = -1, threads = 0, svd_only = 0;
    double svd_batch_mb = 0;
    unsigned long seed = 1;
    unet_ckpt_t ckpt = UNET_CKPT_NONE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--model") && v) model_dir = v, i++;
        else if (!strcmp(a, "--hw") && v) hw = atoi(v), i++;
        else if (!strcmp(a, "--reps") && v) reps = atoi(v), i++;
        else if (!strcmp(a, "--warmup") && v) warmup = atoi(v), i++;
        else if (!strcmp(a, "--threads") && v) threads = atoi(v), i++;
        else if (!strcmp(a, "--svd-cache") && v) cache_dir = v, i++;
        else if (!strcmp(a, "--seed") && v) seed = strtoul(v, NULL, 10), i++;
        else if (!strcmp(a, "--svd-batch-mb") && v) svd_batch_mb = atof(v), i++;
        else if (!strcmp(a, "--svd-only")) svd_only = 1;
        else if (!strcmp(a, "--ckpt") && v && (!strcmp(v, "none") || !strcmp(v, "transformers") || !strcmp(v, "all"))) {
            ckpt = !strcmp(v, "all") ? UNET_CKPT_ALL : !strcmp(v, "transformers") ? UNET_CKPT_TRANSFORMERS : UNET_CKPT_NONE;
            i++;
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if (!reps) reps = hw == 32 ? 2 : 1;
    if (warmup < 0) warmup = hw == 32 ? 1 : 0;
    if (!model_dir || hw < 8 || reps < 1 || reps > 64) {
        usage(argv[0]);
        return 2;
    }
    char cache_buf[4096];
    if (!cache_dir) {
        const char *e = getenv("SVDIFF_BENCH_CACHE");
        snprintf(cache_buf, sizeof cache_buf, "%s/svd-cache", e && e[0] ? e : "bench/out");
        cache_dir = cache_buf;
    }
    sd_set_threads(threads);
    const int B = 1, T = 77;
    const char *ckpt_name = ckpt == UNET_CKPT_ALL ? "all" : ckpt == UNET_CKPT_TRANSFORMERS ? "transformers" : "none";
    printf("svdiff training-step benchmark: OpenBLAS kernel %s, %d threads, %dx%d latents, batch %d, "
           "checkpointing %s, model %s\n",
           openblas_get_corename(), openblas_get_num_threads(), hw, hw, B, ckpt_name, model_dir);
    fflush(stdout);

    /* ---- set-up: open, hash, spectral through the cache ---- */
    double t0 = bench_now();
    model_t mf;
    if (model_open(&mf, model_dir, NULL)) die(model_dir);
    unet_t m;
    if (build_unet_from_component(&m, &mf.unet)) die("build_unet");
    const double t_open = bench_now() - t0;
    t0 = bench_now();
    char hash[17];
    if (model_weights_hash(&mf, hash)) die("model hash");
    const double t_hash = bench_now() - t0;
    svd_cache_t *cache;
    if (svd_cache_open(&cache, cache_dir, hash)) die(cache_dir);
    t0 = bench_now();
    const int bf16 = sd_compute_dtype() == SD_COMPUTE_BF16;
    double t_saves = 0;
    if (svd_batch_mb > 0) {   /* batches: compute (or load), save, store in bf16; then the rest below */
        svd_cache_set_bf16(cache, bf16);
        double pending = 0;
        int first = 0;   /* first layer not yet saved / stored */
        for (int i = 0; i < m.n_layers; i++) {
            layer_t *l = m.layers[i];
            if (l->w.kind != WEIGHT_DENSE) continue;
            const long before = svd_cache_computed(cache);
            const shift_name_t n = {SHIFT_UNET, SHIFT_SPECTRAL, l->name};
            if (svd_cache_make_spectral(cache, &n, &l->w, 0)) die(l->name);
            if (svd_cache_computed(cache) > before) pending += (double)spectral_factor_bytes(l->w.sp);
            if (pending > svd_batch_mb * 1048576.0 || (i == m.n_layers - 1 && pending > 0)) {
                const double a = bench_now();
                if (svd_cache_save(cache)) die("SVD cache save");
                t_saves += bench_now() - a;
                for (int k = first; bf16 && k <= i; k++)
                    if (m.layers[k]->w.kind == WEIGHT_SPECTRAL) spectral_store_bf16(m.layers[k]->w.sp);
                fprintf(stderr, "  SVD batch saved at layer %d/%d (%.0f MB of fp32 factors), %.0f s so far (saves %.0f s); RSS %.0f MB\n",
                        i + 1, m.n_layers, pending / 1048576.0, bench_now() - t0, t_saves, proc_mb("VmRSS:"));
                pending = 0, first = i + 1;
            }
        }
        svd_cache_set_bf16(cache, 0);
    }
    if (unet_make_spectral_stored(&m, cache, bf16)) die("spectral");
    const double t_spectral = bench_now() - t0;   /* includes saving the cache when it computed */
    const long n_loaded = svd_cache_loaded(cache), n_computed = svd_cache_computed(cache);
    svd_cache_close(cache);
    unet_add_norm_shifts(&m, NORMSHIFT_ELEMENT);
    double factors = 0;
    long n_delta = 0;
    for (int i = 0; i < m.n_layers; i++) {
        const spectral_t *sp = m.layers[i]->w.sp;
        if (!sp) die("a layer stayed dense");
        factors += (double)spectral_factor_bytes(sp) + 2.0 * sp->rank * sizeof(float);   /* U, Vt; S, delta */
        n_delta += sp->rank;
    }
    printf("opened in %.2f s, hash %s in %.2f s; %d layers spectral in %.1f s (%ld from the SVD cache, %ld SVDs "
           "computed%s, of which %.1f s batch saves); factors %.0f MB\n",
           t_open, hash, t_hash, m.n_layers, t_spectral, n_loaded, n_computed, n_computed ? ", cache saved" : "",
           t_saves, factors / 1048576.0);
    fflush(stdout);
    if (svd_only) {
        printf("RESULT side=svdiff case=svd layers=%d svd_s=%.1f saves_s=%.1f svd_computed=%ld svd_loaded=%ld "
               "factors_mb=%.0f setup_peak_mb=%.0f hash_s=%.2f\n",
               m.n_layers, t_spectral, t_saves, n_computed, n_loaded, factors / 1048576.0, proc_mb("VmHWM:"), t_hash);
        free_unet(&m);
        model_close(&mf);
        return 0;
    }

    /* ---- training state ---- */
    const size_t L = (size_t)m.cfg.in_channels * hw * hw, CT = (size_t)T * m.cfg.cross_attention_dim;
    unet_acts_t acts;
    if (unet_acts_build(&acts, &m, B, hw, hw, T, 1, ckpt)) die("training activations");
    unet_grads_t g;
    if (unet_grads_alloc(&g, &m, UNET_GRAD_SHIFTS)) die("gradients");
    params_t ps = {0};
    unet_visit_shifts(&m, &g, collect, &ps);
    float *adam = sd_xcalloc(2 * ps.values, sizeof(float));
    for (int i = 0, off = 0; i < ps.n; off += 2 * ps.p[i].n, i++) ps.p[i].m = adam + off, ps.p[i].v = adam + off + ps.p[i].n;
    float **grads = sd_xmalloc(sizeof(float *) * ps.n);
    size_t *sizes = sd_xmalloc(sizeof(size_t) * ps.n);
    for (int i = 0; i < ps.n; i++) grads[i] = ps.p[i].grad, sizes[i] = (size_t)ps.p[i].n;

    sched_config_t sc;
    noise_schedule_t sched;
    if (sched_config_from_json(&sc, mf.scheduler_config) || noise_schedule_init(&sched, &sc)) die("schedule");
    float *x0 = sd_xmalloc(L * sizeof(float)), *eps = sd_xmalloc(L * sizeof(float)), *xt = sd_xmalloc(L * sizeof(float));
    float *target = sd_xmalloc(L * sizeof(float)), *pred = sd_xmalloc(L * sizeof(float));
    float *dpred = sd_xmalloc(L * sizeof(float)), *ctx = sd_xmalloc(CT * sizeof(float));
    /* SDXL (text_time): a pooled text embedding per step and the time ids of a square image of
     * 8*hw pixels, uncropped (what the trainer builds for an image already at the resolution). */
    const int Dt = m.cfg.addition_text_time ? m.cfg.addition_text_embeds_dim : 0;
    float *text_embeds = Dt ? sd_xmalloc((size_t)B * Dt * sizeof(float)) : NULL, time_ids[6];
    for (int j = 0; j < 6; j++) time_ids[j] = (j == 2 || j == 3) ? 0.0f : 8.0f * hw;
    const unet_added_cond_t added = {text_embeds, time_ids};
    rng_t rng;
    rng_init(&rng, seed);

    const double rss_before = proc_mb("VmRSS:"), anon_before = proc_mb("RssAnon:"), file_before = proc_mb("RssFile:");
    const double setup_peak = proc_mb("VmHWM:");
    /* file-backed: pages of mapped files still resident (the fp16 model the SVD read; the SVD
     * cache is unmapped by now). The set-up peak includes the cache file's pages while its
     * factors were copied out. */
    printf("before the step: RSS %.0f MB (anon %.0f, file-backed %.0f); set-up peak %.0f MB; activations %.0f MB, gradients %.1f MB, AdamW state %.1f MB, "
           "%d shift arrays (%zu values: %ld deltas)\n",
           rss_before, anon_before, file_before, setup_peak, acts.n_floats * 4 / 1048576.0, g.n_floats * 4 / 1048576.0,
           ps.values * 8 / 1048576.0, ps.n, ps.values, n_delta);
    fflush(stdout);
    reset_hwm();
    scratch_reset_peak();

    /* ---- steps ---- */
    const adamw_config_t def = adamw_defaults();
    double tf[64], tb[64], to[64], tt[64], loss = 0, gnorm = 0;
    double first = 0;
    for (int k = 0; k < warmup + reps; k++) {
        const int r = k - warmup;   /* < 0: warm-up */
        if (r == 0) bench_profile_on();   /* bench/profile_step.sh samples the timed steps only */
        rng_fill_normal(&rng, x0, L);   /* latent x0, noise, context, timestep: fresh each step */
        rng_fill_normal(&rng, eps, L);
        rng_fill_normal(&rng, ctx, CT);
        if (Dt) rng_fill_normal(&rng, text_embeds, (size_t)B * Dt);
        int ts = rng_randint(&rng, sched.T);
        float tsf = (float)ts;
        double a0 = bench_now();
        ddpm_add_noise(xt, x0, eps, &ts, B, L, &sched);
        ddpm_target(target, x0, eps, &ts, B, L, &sched);
        if (unet_forward(pred, &m, &acts, xt, &tsf, ctx, Dt ? &added : NULL, B, hw, hw, T)) die("forward");
        loss = mse_forward(pred, target, L);
        double a1 = bench_now();
        memset(dpred, 0, L * sizeof(float));
        mse_backward(dpred, pred, target, L, 1.0f);
        unet_backward(NULL, NULL, NULL, &g, dpred, &m, &acts);
        double a2 = bench_now();
        gnorm = clip_grad_norm(grads, sizes, ps.n, 1.0);
        for (int i = 0; i < ps.n; i++) {
            adamw_config_t a = def;
            a.lr = ps.p[i].norm ? 1e-6f : 1e-3f;
            adamw_step(ps.p[i].value, ps.p[i].grad, ps.p[i].m, ps.p[i].v, (size_t)ps.p[i].n, k + 1, &a);
        }
        unet_grads_zero(&g);
        double a3 = bench_now();
        if (k == 0) first = a3 - a0;
        fprintf(stderr, "  step %d%s (t=%d): forward %.2f s, backward %.2f s, AdamW %.3f s, loss %.5g, grad norm %.4g\n",
                k + 1, r < 0 ? " (warm-up)" : "", ts, a1 - a0, a2 - a1, a3 - a2, loss, gnorm);
        if (r >= 0) tf[r] = a1 - a0, tb[r] = a2 - a1, to[r] = a3 - a2, tt[r] = a3 - a0;
    }
    bench_profile_off();
    /* the GEMM ceilings of this process, after the timed part (its peak RSS read first) */
    const double peak_rss = proc_mb("VmHWM:"), sgemm = bench_sgemm_gflops(3), bf16_rate = bench_bf16_gflops(3);
    train_flops_t fl;   /* the products the step executes, and the dense-equivalent forward */
    flops_t dense;
    count_train_flops(&fl, &m, B, hw, hw, T);
    count_flops(&dense, &m, B, hw, hw, T);
    double dmax = 0;   /* the update is real: the deltas moved */
    for (int i = 0; i < ps.n; i++)
        for (int j = 0; j < ps.p[i].n; j++) dmax = fmax(dmax, fabs(ps.p[i].value[j]));
    char times[1024] = "";
    for (int r = 0; r < reps; r++) snprintf(times + strlen(times), sizeof times - strlen(times), "%s%.3f", r ? "," : "", tt[r]);
    printf("RESULT side=svdiff case=train%d ckpt=%s B=%d H=%d T=%d reps=%d warmup=%d first_s=%.3f median_s=%.3f times=%s fwd_s=%.3f "
           "bwd_s=%.3f opt_s=%.4f peak_rss_mb=%.0f setup_peak_mb=%.0f rss_before_mb=%.0f anon_before_mb=%.0f "
           "file_before_mb=%.0f factors_mb=%.0f acts_mb=%.0f scratch_peak_mb=%.0f svd_s=%.1f svd_computed=%ld "
           "svd_loaded=%ld hash_s=%.2f loss=%.5g grad_norm=%.4g max_delta=%.3g train_gflop=%.1f gflops=%.1f "
           "dense_fwd_gflop=%.1f sgemm_gflops=%.1f bf16_gflops=%.1f\n",
           hw, ckpt_name, B, hw, T, reps, warmup, first, median(tt, reps), times, median(tf, reps), median(tb, reps), median(to, reps),
           peak_rss, setup_peak, rss_before, anon_before, file_before, factors / 1048576.0,
           acts.n_floats * 4 / 1048576.0, scratch_peak_bytes() / 1048576.0, t_spectral, n_computed, n_loaded, t_hash,
           loss, gnorm, dmax, train_flops_total(&fl) / 1e9, train_flops_total(&fl) / median(tt, reps) / 1e9,
           flops_total(&dense) / 1e9, sgemm, bf16_rate);
    fflush(stdout);

    free(x0), free(eps), free(xt), free(target), free(pred), free(dpred), free(ctx), free(text_embeds);
    free(adam), free(grads), free(sizes), free(ps.p);
    noise_schedule_free(&sched);
    unet_grads_free(&g);
    unet_acts_free(&acts);
    free_unet(&m);
    model_close(&mf);
    scratch_free_all();
    return 0;
}
