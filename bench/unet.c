/* UNet benchmark: median time, GFLOP/s and peak RSS of full-size UNet forwards (inference,
 * batch 2 as classifier-free guidance runs it, 77 context tokens) on a real model folder, and
 * optionally one training step (forward + backward, every layer spectral), with the sgemm and
 * bf16 GEMM 2048^3 rates measured in the same process after the timed part (bench/lib). Not
 * part of the tests. bench/run_unet.sh runs it side by side with PyTorch (bench/unet_torch.py).
 * Usage: bench_unet --help */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "io/model.h"
#include "models/init.h"
#include "models/unet.h"
#include "ops/ops.h"
#include "lib/benchutil.h"
#include "lib/flops.h"

/* VmRSS / VmHWM of this process in MB. */
static double proc_mb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) kb = atol(line + strlen(key));
    if (f) fclose(f);
    return kb / 1024.0;
}

/* Peak RSS counts from here on (Linux: writing 5 to clear_refs resets VmHWM to VmRSS), so
 * each case reports its own peak, the mapped weights it touched included. */
static void reset_hwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) fputs("5", f), fclose(f);
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float randu(void) { /* xorshift64, uniform in [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (2.0 / 16777216.0)) - 1.0f;
}
static float randn(void) { /* sum of 4 uniforms, rescaled to unit variance: near-normal, cheap */
    return (randu() + randu() + randu() + randu()) * 0.8660254f;
}
static float *rand_buf(size_t n) {
    float *x = sd_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = randn();
    return x;
}

/* The training step at hw x hw latents, batch 1, as one line (bench_unet --flops). */
static void print_train_flops(const char *label, const unet_t *m, int hw, int T) {
    train_flops_t t;
    flops_t d;
    count_train_flops(&t, m, 1, hw, hw, T);
    count_flops(&d, m, 1, hw, hw, T);
    /* no ": " after "latents" here: bench/run_sdxl.sh reads the forward lines with that pattern */
    printf("%s SVDiff training step at %dx%d latents, batch 1, executes %.1f GFLOP (forward %.1f + backward %.1f; "
           "layers %.1f + %.1f, of which baking W_eff %.1f; attention %.1f + %.1f; %d layers baked, %d factored; "
           "dense-equivalent forward %.1f GFLOP)\n",
           label, hw, hw, train_flops_total(&t) / 1e9, (t.fwd + t.attn_fwd) / 1e9, (t.bwd + t.attn_bwd) / 1e9, t.fwd / 1e9,
           t.bwd / 1e9, t.bake / 1e9, t.attn_fwd / 1e9, t.attn_bwd / 1e9, t.n_baked, t.n_factored, flops_total(&d) / 1e9);
    printf("FLOPS case=train%d train_gflop=%.2f train_fwd_gflop=%.2f train_bwd_gflop=%.2f dense_fwd_gflop=%.2f\n", hw,
           train_flops_total(&t) / 1e9, (t.fwd + t.attn_fwd) / 1e9, (t.bwd + t.attn_bwd) / 1e9, flops_total(&d) / 1e9);
}

/* ---- cases ---- */

static void die(const char *what) {
    fprintf(stderr, "bench_unet: %s: %s\n", what, sd_last_error());
    exit(1);
}

static void out_stats(const float *out, size_t n, double *maxabs, double *rms, int *finite) {
    double m = 0, s = 0;
    *finite = 1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) *finite = 0;
        double a = fabs(out[i]);
        if (a > m) m = a;
        s += (double)out[i] * out[i];
    }
    *maxabs = m, *rms = sqrt(s / n);
}

/* SDXL's added conditioning (text_time): a random pooled embedding and the time ids diffusers
 * builds for a square image of 8*HW pixels (original = target = that size, crop (0, 0)). For
 * other models: NULL. The arrays are owned by the caller (free both). */
static const unet_added_cond_t *make_added(unet_added_cond_t *ac, const unet_t *m, int B, int HW) {
    if (!m->cfg.addition_text_time) return NULL;
    float *te = rand_buf((size_t)B * m->cfg.addition_text_embeds_dim), *ids = sd_xmalloc(sizeof(float) * 6 * B);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < 6; j++) ids[6 * b + j] = (j == 2 || j == 3) ? 0.0f : 8.0f * HW;
    ac->text_embeds = te, ac->time_ids = ids;
    return ac;
}
static void free_added(unet_added_cond_t *ac) {
    free((void *)ac->text_embeds), free((void *)ac->time_ids);
    ac->text_embeds = ac->time_ids = NULL;
}

/* Inference forwards at H x W latents, batch B: one untimed warm-up (first touch of the
 * mapped weights, scratch growth), then `reps` timed runs. */
static void bench_forward(const unet_t *m, int B, int HW, int T, int reps, int warmup, const char *save) {
    const unet_config_t *c = &m->cfg;
    const size_t ns = (size_t)B * c->in_channels * HW * HW, no = (size_t)B * c->out_channels * HW * HW;
    float *sample = rand_buf(ns), *ctx = rand_buf((size_t)B * T * c->cross_attention_dim);
    float *out = sd_xmalloc(no * sizeof(float));
    float *ts = sd_xmalloc(sizeof(float) * B);
    for (int b = 0; b < B; b++) ts[b] = 981.0f - 100.0f * b;   /* two distinct steps of a DDIM schedule */
    unet_added_cond_t acs = {0};
    const unet_added_cond_t *added = make_added(&acs, m, B, HW);

    reset_hwm();
    scratch_reset_peak();
    unet_acts_t acts;
    if (unet_acts_build(&acts, m, B, HW, HW, T, 0, UNET_CKPT_NONE)) die("activations");
    double times[64];
    if (reps > 64) reps = 64;
    for (int r = -warmup; r < reps; r++) {
        if (r == 0) bench_profile_on();
        double t0 = bench_now();
        if (unet_forward(out, m, &acts, sample, ts, ctx, added, B, HW, HW, T)) die("forward");
        double dt = bench_now() - t0;
        if (r >= 0) times[r] = dt;
        fprintf(stderr, "  fwd%d %s %d: %.2f s\n", HW, r < 0 ? "warm-up" : "rep", r < 0 ? 0 : r + 1, dt);
    }
    bench_profile_off();
    /* the ceilings of this process, measured after the timed part (the peak RSS is read first) */
    const double peak_rss = proc_mb("VmHWM:"), sgemm = bench_sgemm_gflops(3), bf16 = bench_bf16_gflops(3);
    double sorted[64];
    memcpy(sorted, times, sizeof(double) * reps);
    qsort(sorted, reps, sizeof *sorted, bench_cmp_double);
    const double med = sorted[reps / 2];
    flops_t f;
    count_flops(&f, m, B, HW, HW, T);
    double maxabs, rms;
    int finite;
    out_stats(out, no, &maxabs, &rms, &finite);
    char tl[512] = "";
    for (int r = 0; r < reps; r++) snprintf(tl + strlen(tl), sizeof tl - strlen(tl), "%s%.3f", r ? "," : "", times[r]);
    printf("RESULT side=svdiff case=fwd%d B=%d H=%d T=%d reps=%d median_s=%.3f times=%s gflop=%.1f gflops=%.1f "
           "peak_rss_mb=%.0f acts_mb=%.0f scratch_peak_mb=%.0f sgemm_gflops=%.1f bf16_gflops=%.1f "
           "out_maxabs=%.4g out_rms=%.4g finite=%d\n",
           HW, B, HW, T, reps, med, tl, flops_total(&f) / 1e9, flops_total(&f) / med / 1e9, peak_rss,
           acts.n_floats * 4.0 / 1048576.0, scratch_peak_bytes() / 1048576.0, sgemm, bf16, maxabs, rms, finite);
    fflush(stdout);
    if (save) { /* inputs and output for bench/unet_torch.py --check: same inputs, compare outputs */
        st_writer_t *w = st_writer_new();
        int64_t ss[4] = {B, c->in_channels, HW, HW}, cs[3] = {B, T, c->cross_attention_dim}, tsh[1] = {B},
                os[4] = {B, c->out_channels, HW, HW};
        int rc = st_writer_add(w, "sample", ST_F32, 4, ss, sample);
        rc = rc ? rc : st_writer_add(w, "ctx", ST_F32, 3, cs, ctx);
        rc = rc ? rc : st_writer_add(w, "timesteps", ST_F32, 1, tsh, ts);
        rc = rc ? rc : st_writer_add(w, "out", ST_F32, 4, os, out);
        if (added) {
            int64_t tes[2] = {B, c->addition_text_embeds_dim}, ids[2] = {B, 6};
            rc = rc ? rc : st_writer_add(w, "text_embeds", ST_F32, 2, tes, added->text_embeds);
            rc = rc ? rc : st_writer_add(w, "time_ids", ST_F32, 2, ids, added->time_ids);
        }
        rc = rc ? rc : st_writer_save(w, save);
        st_writer_free(w);
        if (rc) die(save);
    }
    unet_acts_free(&acts);
    if (added) free_added(&acs);
    free(sample), free(ctx), free(out), free(ts);
}

/* One training step at HW x HW, batch 1: every conv / linear spectral (factors only, as in
 * training), zero element norm shifts, gradients of the shifts only. */
static void bench_train(unet_t *m, int HW, int T, int reps, unet_ckpt_t ckpt) {
    const unet_config_t *c = &m->cfg;
    const int B = 1;
    reset_hwm();
    fprintf(stderr, "  SVD of every UNet layer (keep_base 0)...\n");
    double t0 = bench_now();
    if (unet_make_spectral(m, 0, NULL, NULL)) die("spectral");
    const double t_svd = bench_now() - t0;
    unet_add_norm_shifts(m, NORMSHIFT_ELEMENT);
    long n_shift = 0;
    for (int i = 0; i < m->n_layers; i++) n_shift += weight_shift_count(&m->layers[i]->w);
    const double rss_factors = proc_mb("VmRSS:");
    fprintf(stderr, "  SVD took %.1f s; RSS %.0f MB\n", t_svd, rss_factors);

    const size_t ns = (size_t)B * c->in_channels * HW * HW;
    float *sample = rand_buf(ns), *ctx = rand_buf((size_t)B * T * c->cross_attention_dim), *target = rand_buf(ns);
    float *out = sd_xmalloc(ns * sizeof(float)), *dout = sd_xmalloc(ns * sizeof(float));
    float ts[1] = {500.0f};
    unet_added_cond_t acs = {0};
    const unet_added_cond_t *added = make_added(&acs, m, B, HW);
    unet_acts_t acts;
    if (unet_acts_build(&acts, m, B, HW, HW, T, 1, ckpt)) die("training activations");
    unet_grads_t g;
    if (unet_grads_alloc(&g, m, UNET_GRAD_SHIFTS)) die("gradients");
    double tf[16], tb[16], tt[16];
    if (reps > 16) reps = 16;
    float loss = 0;
    bench_profile_on();
    for (int r = 0; r < reps; r++) {
        unet_grads_zero(&g);
        double a0 = bench_now();
        if (unet_forward(out, m, &acts, sample, ts, ctx, added, B, HW, HW, T)) die("training forward");
        loss = mse_forward(out, target, ns);
        double a1 = bench_now();
        memset(dout, 0, ns * sizeof(float));
        mse_backward(dout, out, target, ns, 1.0f);
        unet_backward(NULL, NULL, NULL, &g, dout, m, &acts);
        double a2 = bench_now();
        tf[r] = a1 - a0, tb[r] = a2 - a1, tt[r] = a2 - a0;
        fprintf(stderr, "  train%d rep %d: forward %.2f s, backward %.2f s\n", HW, r + 1, tf[r], tb[r]);
    }
    bench_profile_off();
    const double peak_rss = proc_mb("VmHWM:"), sgemm = bench_sgemm_gflops(3), bf16 = bench_bf16_gflops(3);
    qsort(tf, reps, sizeof *tf, bench_cmp_double), qsort(tb, reps, sizeof *tb, bench_cmp_double), qsort(tt, reps, sizeof *tt, bench_cmp_double);
    double gn = 0;   /* the gradient is real: its norm is reported */
    for (int i = 0; i < m->n_layers; i++)
        if (g.layers[i].dw)
            for (int j = 0; j < m->layers[i]->w.sp->rank; j++) gn += (double)g.layers[i].dw[j] * g.layers[i].dw[j];
    flops_t f;
    count_flops(&f, m, B, HW, HW, T);
    train_flops_t tfl;   /* executed: backward + forward (no optimizer here) */
    count_train_flops(&tfl, m, B, HW, HW, T);
    const double med = tt[reps / 2];
    printf("RESULT side=svdiff case=train%d B=%d H=%d T=%d reps=%d median_s=%.3f fwd_s=%.3f bwd_s=%.3f svd_s=%.1f "
           "shifts=%ld dense_fwd_gflop=%.1f train_gflop=%.1f gflops=%.1f peak_rss_mb=%.0f rss_factors_mb=%.0f "
           "acts_mb=%.0f grads_mb=%.1f loss=%.5g grad_norm=%.4g ckpt=%d sgemm_gflops=%.1f bf16_gflops=%.1f\n",
           HW, B, HW, T, reps, med, tf[reps / 2], tb[reps / 2], t_svd, n_shift, flops_total(&f) / 1e9,
           train_flops_total(&tfl) / 1e9, train_flops_total(&tfl) / med / 1e9, peak_rss, rss_factors,
           acts.n_floats * 4.0 / 1048576.0, g.n_floats * 4.0 / 1048576.0, loss, sqrt(gn), (int)ckpt, sgemm, bf16);
    fflush(stdout);
    unet_grads_free(&g);
    unet_acts_free(&acts);
    if (added) free_added(&acs);
    free(sample), free(ctx), free(target), free(out), free(dout);
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --model DIR [options]\n"
            "  --case LIST      comma list of fwdN (N x N latents: fwd32, fwd64, fwd128, ...) and trainN\n"
            "                   (one training step after the SVD of every layer: minutes)\n"
            "                   (default fwd32,fwd64)\n"
            "  --reps N         timed forwards at 32x32 and below (default 3)\n"
            "  --reps64 N       timed forwards at 64x64 (default 1)\n"
            "  --reps128 N      timed forwards above 64x64 (default 1)\n"
            "  --train-reps N   timed training steps (default 1)\n"
            "  --batch B        forward batch (default 2: classifier-free guidance)\n"
            "  --no-warmup      time the first forward too (default: one untimed warm-up)\n"
            "  --ckpt MODE      training checkpointing: none, transformers, all (default none)\n"
            "  --threads N      OpenMP + OpenBLAS threads (default: all cores)\n"
            "  --save FILE      write the first forward case's inputs and output (for unet_torch.py --check)\n"
            "  --flops          print the FLOP count per sample and exit (no weights read): SD 1.5's UNet,\n"
            "                   or with --config FILE the \"unet\" of a model config (configs/sdxl-base.json)\n"
            "                   or a model folder's unet/config.json; also the FLOPs an SVDiff training step\n"
            "                   executes at batch 1 (FLOPS case=trainN lines)\n",
            argv0);
}

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    const char *model_dir = NULL, *cases = "fwd32,fwd64", *save = NULL, *config = NULL;
    int reps = 3, reps64 = 1, reps128 = 1, train_reps = 1, B = 2, threads = 0, warmup = 1, flops_only = 0;
    unet_ckpt_t ckpt = UNET_CKPT_NONE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--model") && v) model_dir = v, i++;
        else if (!strcmp(a, "--case") && v) cases = v, i++;
        else if (!strcmp(a, "--reps") && v) reps = atoi(v), i++;
        else if (!strcmp(a, "--reps64") && v) reps64 = atoi(v), i++;
        else if (!strcmp(a, "--reps128") && v) reps128 = atoi(v), i++;
        else if (!strcmp(a, "--config") && v) config = v, i++;
        else if (!strcmp(a, "--train-reps") && v) train_reps = atoi(v), i++;
        else if (!strcmp(a, "--batch") && v) B = atoi(v), i++;
        else if (!strcmp(a, "--threads") && v) threads = atoi(v), i++;
        else if (!strcmp(a, "--save") && v) save = v, i++;
        else if (!strcmp(a, "--no-warmup")) warmup = 0;
        else if (!strcmp(a, "--flops")) flops_only = 1;
        else if (!strcmp(a, "--ckpt") && v) {
            ckpt = !strcmp(v, "all") ? UNET_CKPT_ALL : !strcmp(v, "transformers") ? UNET_CKPT_TRANSFORMERS : UNET_CKPT_NONE;
            i++;
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if ((!model_dir && !flops_only) || reps < 1 || reps64 < 1 || reps128 < 1 || train_reps < 1 || B < 1) {
        usage(argv[0]);
        return 2;
    }
    sd_set_threads(threads);
    const int T = 77;

    if (flops_only) { /* structure only: SD 1.5's config, or the "unet" of --config */
        const char *sd15_json =
            "{\"block_out_channels\":[320,640,1280,1280],\"layers_per_block\":2,\"attention_head_dim\":8,"
            "\"cross_attention_dim\":768,\"in_channels\":4,\"out_channels\":4,\"norm_num_groups\":32,"
            "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
            "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";
        cJSON *j = NULL;
        if (config ? model_init_read_config(config, &j) : !(j = cJSON_Parse(sd15_json))) die(config ? "--config" : "json");
        cJSON *ju = config ? cJSON_GetObjectItemCaseSensitive(j, "unet") : j;
        if (!ju && cJSON_GetObjectItemCaseSensitive(j, "block_out_channels")) ju = j;   /* a unet/config.json */
        if (!ju) {
            fprintf(stderr, "bench_unet: %s: neither a \"unet\" object nor a UNet config\n", config);
            return 2;
        }
        const char *label = config ? config : "SD 1.5";
        unet_config_t cfg;
        unet_t m;
        if (unet_config_from_json(&cfg, ju, label) || unet_build_structure(&m, &cfg)) die("structure");
        for (int hw = 32; hw <= 128; hw *= 2) {
            flops_t f;
            count_flops(&f, &m, 1, hw, hw, T);
            printf("%s UNet forward, 1 sample, %dx%d latents, %d context tokens: %.1f GFLOP "
                   "(conv %.0f%%, linear %.0f%%, attention %.0f%%)\n",
                   label, hw, hw, T, flops_total(&f) / 1e9, 100 * f.conv / flops_total(&f), 100 * f.linear / flops_total(&f),
                   100 * f.attn / flops_total(&f));
            print_train_flops(label, &m, hw, T);
        }
        free_unet(&m);
        cJSON_Delete(j);
        return 0;
    }

    printf("svdiff UNet benchmark: OpenBLAS kernel %s, %d threads, model %s\n", openblas_get_corename(),
           openblas_get_num_threads(), model_dir);

    double t0 = bench_now();
    model_t mf;
    if (model_open(&mf, model_dir, NULL)) die(model_dir);
    unet_t m;
    if (build_unet_from_component(&m, &mf.unet)) die("build_unet");
    long n_params = 0;
    for (int i = 0; i < mf.unet.n_tensors; i++) n_params += mf.unet.tensors[i].numel;
    printf("opened + built in %.2f s: %ld parameters (%s), %d layers, %d norms, RSS %.0f MB\n", bench_now() - t0, n_params,
           st_dtype_name(mf.unet.tensors[0].dtype), m.n_layers, m.n_norms, proc_mb("VmRSS:"));
    for (int hw = 32; hw <= 128; hw *= 2) {
        flops_t f;
        count_flops(&f, &m, 1, hw, hw, T);
        printf("FLOPS hw=%d per_sample_gflop=%.1f conv=%.1f linear=%.1f attn=%.1f\n", hw, flops_total(&f) / 1e9,
               f.conv / 1e9, f.linear / 1e9, f.attn / 1e9);
    }
    fflush(stdout);

    char list[256];
    snprintf(list, sizeof list, "%s", cases);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int hw = 0;
        char rest;
        if (sscanf(tok, "fwd%d%c", &hw, &rest) == 1 && hw >= 8) {
            bench_forward(&m, B, hw, T, hw <= 32 ? reps : hw <= 64 ? reps64 : reps128, warmup, save);
            save = NULL;   /* the first forward case only */
        } else if (sscanf(tok, "train%d%c", &hw, &rest) == 1 && hw >= 8) bench_train(&m, hw, T, train_reps, ckpt);
        else {
            fprintf(stderr, "bench_unet: unknown case %s\n", tok);
            return 2;
        }
    }
    free_unet(&m);
    model_close(&mf);
    scratch_free_all();
    return 0;
}
