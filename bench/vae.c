/* VAE benchmark: time and peak memory of decoding (and optionally encoding) one image with
 * an SD-size AutoencoderKL (128, 256, 512, 512 channels, 2 layers per block, 83.65 M
 * parameters) whose random weights this program makes (F32 or F16), or the VAE of a model folder
 * (--model DIR: the random SD 1.5 of bench/run_all.sh, the weights bench/vae_torch.py decodes
 * with). Decode time is the median of --reps runs (no warm-up: one decode is seconds); a RESULT
 * line for bench/run_all.sh. Not part of the tests.
 * Usage: bench_vae [--latent N (64 = 512 px)] [--f16] [--encode] [--threads N] [--band FLOATS]
 *                  [--model DIR] [--reps N] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "io/model.h"
#include "models/vae.h"
#include "ops/gemm.h"
#include "lib/benchutil.h"

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

/* Peak RSS counts from here on (Linux: writing 5 to clear_refs resets VmHWM). */
static void reset_hwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) fputs("5", f), fclose(f);
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float uniform_pm1(void) {   /* xorshift64, uniform in [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (2.0 / 16777216.0)) - 1.0f;
}

typedef struct {
    int n;
    st_tensor_t *t;
} table_t;

static const st_tensor_t *get_table(void *ctx, const char *name) {
    const table_t *tb = ctx;
    for (int i = 0; i < tb->n; i++)
        if (!strcmp(tb->t[i].name, name)) return &tb->t[i];
    return NULL;
}

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    int latent = 64, f16 = 0, encode = 0, threads = 0, reps = 1;
    const char *model_dir = NULL;
    size_t band = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--latent") && i + 1 < argc) latent = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--f16")) f16 = 1;
        else if (!strcmp(argv[i], "--encode")) encode = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--band") && i + 1 < argc) band = (size_t)atoll(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model_dir = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--latent N] [--f16] [--encode] [--threads N] [--band FLOATS] [--model DIR] "
                    "[--reps N]\n", argv[0]);
            return 2;
        }
    }
    sd_set_threads(threads);

    vae_config_t cfg = {.in_channels = 3, .out_channels = 3, .latent_channels = 4, .n_blocks = 4,
                        .block_out_channels = {128, 256, 512, 512}, .layers_per_block = 2, .norm_num_groups = 32,
                        .scaling_factor = 0.18215f, .sample_size = 512, .use_quant_conv = 1,
                        .use_post_quant_conv = 1, .mid_block_add_attention = 1};
    const int n = vae_param_specs(&cfg, NULL, 0);
    vae_param_spec_t *specs = sd_xmalloc(sizeof *specs * n);
    vae_param_specs(&cfg, specs, n);
    table_t tb = {.n = n, .t = sd_xcalloc((size_t)n, sizeof(st_tensor_t))};
    size_t params = 0;
    for (int i = 0; i < n && !model_dir; i++) {   /* with --model the folder's weights are used */
        st_tensor_t *t = &tb.t[i];
        t->name = specs[i].name;
        t->ndim = specs[i].ndim;
        t->numel = 1;
        for (int d = 0; d < t->ndim; d++) t->shape[d] = specs[i].shape[d], t->numel *= t->shape[d];
        t->dtype = f16 ? ST_F16 : ST_F32;
        t->nbytes = (size_t)t->numel * st_dtype_size(t->dtype);
        void *data = sd_xmalloc(t->nbytes);
        /* kernels uniform with variance 1/fan_in (activations stay O(1)); gains 1; biases 0 */
        const double fan_in = t->ndim > 1 ? (double)t->numel / t->shape[0] : 0.0;
        const int gain = t->ndim == 1 && strstr(t->name, "norm") && strstr(t->name, ".weight");
        for (int64_t j = 0; j < t->numel; j++) {
            const float v = fan_in > 0 ? uniform_pm1() * (float)sqrt(3.0 / fan_in) : (gain ? 1.0f : 0.0f);
            if (f16) ((uint16_t *)data)[j] = st_f32_to_f16(v);
            else ((float *)data)[j] = v;
        }
        t->data = data;
        params += (size_t)t->numel;
    }
    vae_t m;
    model_t mf;
    if (model_dir) {   /* the folder's VAE instead of the random one made above */
        if (model_open(&mf, model_dir, NULL)) {
            fprintf(stderr, "%s: %s\n", model_dir, sd_last_error());
            return 1;
        }
        if (!mf.vae.n_tensors || vae_config_from_component(&cfg, &mf.vae) || build_vae_from_component(&m, &mf.vae)) {
            fprintf(stderr, "%s: %s\n", model_dir, mf.vae.n_tensors ? sd_last_error() : "no vae/ component");
            return 1;
        }
    } else if (build_vae(&m, &cfg, get_table, &tb)) {
        fprintf(stderr, "build_vae: %s\n", sd_last_error());
        return 1;
    }
    m.band_floats = band;
    const int f = vae_scale_factor(&cfg), H = latent * f;
    if (model_dir)
        printf("VAE of %s; latents 4x%dx%d -> image 3x%dx%d; compute %s\n", model_dir, latent, latent, H, H,
               sd_compute_dtype_name(sd_compute_dtype()));
    else
        printf("SD-size VAE, %zu parameters stored as %s (%.0f MB); latents 4x%dx%d -> image 3x%dx%d\n", params,
               f16 ? "F16" : "F32", params * (f16 ? 2.0 : 4.0) / 1048576.0, latent, latent, H, H);

    const size_t nl = (size_t)4 * latent * latent, ni = (size_t)3 * H * H;
    float *lat = sd_xmalloc(sizeof(float) * nl), *img = sd_xmalloc(sizeof(float) * ni);
    for (size_t i = 0; i < nl; i++) lat[i] = uniform_pm1();
    memset(img, 0, sizeof(float) * ni);   /* touch: the output counts in the baseline */

    const double rss0 = proc_mb("VmRSS:");
    reset_hwm();
    vae_reset_peak();
    scratch_reset_peak();
    double t0 = bench_now(), times[16];
    if (reps < 1) reps = 1;
    if (reps > 16) reps = 16;
    for (int r = 0; r < reps; r++) {
        const double t1 = bench_now();
        if (vae_decode(&m, img, lat, 1, latent, latent)) {
            fprintf(stderr, "vae_decode: %s\n", sd_last_error());
            return 1;
        }
        times[r] = bench_now() - t1;
    }
    for (int a = 0; a < reps; a++)   /* sort for the median */
        for (int b = a + 1; b < reps; b++)
            if (times[b] < times[a]) t0 = times[a], times[a] = times[b], times[b] = t0;
    const double dt = times[reps / 2];
    double lo = img[0], hi = img[0];
    for (size_t i = 0; i < ni; i++) lo = img[i] < lo ? img[i] : lo, hi = img[i] > hi ? img[i] : hi;
    printf("decode: %.2f s; peak RSS %.0f MB (baseline with weights, latents and output %.0f MB, +%.0f MB); "
           "activations peak %.0f MB; operator scratch peak %.0f MB; output range [%.2f, %.2f]\n",
           dt, proc_mb("VmHWM:"), rss0, proc_mb("VmHWM:") - rss0, vae_peak_activation_bytes() / 1048576.0,
           scratch_peak_bytes() / 1048576.0, lo, hi);
    printf("RESULT side=svdiff case=vae%d compute=%s reps=%d median_s=%.3f times=", H, sd_compute_dtype_name(sd_compute_dtype()),
           reps, dt);
    for (int r = 0; r < reps; r++) printf("%s%.3f", r ? "," : "", times[r]);
    printf(" peak_rss_mb=%.0f\n", proc_mb("VmHWM:"));

    if (encode) {
        float *mean = sd_xmalloc(sizeof(float) * nl), *logvar = sd_xmalloc(sizeof(float) * nl);
        for (size_t i = 0; i < ni; i++) img[i] = uniform_pm1();
        const double rss1 = proc_mb("VmRSS:");
        reset_hwm();
        vae_reset_peak();
        scratch_reset_peak();
        t0 = bench_now();
        if (vae_encode(&m, mean, logvar, img, 1, H, H)) {
            fprintf(stderr, "vae_encode: %s\n", sd_last_error());
            return 1;
        }
        printf("encode: %.2f s; peak RSS %.0f MB (baseline %.0f MB, +%.0f MB); activations peak %.0f MB; "
               "operator scratch peak %.0f MB\n",
               bench_now() - t0, proc_mb("VmHWM:"), rss1, proc_mb("VmHWM:") - rss1,
               vae_peak_activation_bytes() / 1048576.0, scratch_peak_bytes() / 1048576.0);
        free(mean), free(logvar);
    }
    free_vae(&m);
    if (model_dir) model_close(&mf);
    for (int i = 0; i < n; i++) free((void *)tb.t[i].data);
    free(tb.t), free(specs), free(lat), free(img);
    scratch_free_all();
    return 0;
}
