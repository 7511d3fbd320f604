/* `svdiff selfcheck`: a small end-to-end run of the engine, printed step by step. A tiny
 * random network (spectral conv 3x3 -> GroupNorm with gain shift -> SiLU -> self-attention
 * with spectral q/k/v/out and a residual -> spectral 1x1 conv) is factored by SVD; a teacher
 * with random shifts produces targets; the student's shifts start at zero and are trained
 * with AdamW on the MSE; then the shifts are baked and saved/reloaded as safetensors.
 * Every step is checked and the command fails (exit 1) if any check does not hold. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "train/optim.h"
#include "weights/shift_name.h"
#include "weights/spectral.h"

enum { B = 2, CIN = 3, C = 32, HW = 16, T = HW * HW, G = 8, HEADS = 4, COUT = 3 };
#define N_SPECTRAL 6

typedef struct {
    spectral_t sp[N_SPECTRAL];      /* conv1, to_q, to_k, to_v, to_out, conv2 */
    float *W[N_SPECTRAL];           /* the dense base weights (exact form) */
    float *gamma, *beta, *norm_delta, *out_bias, *conv1_bias, *conv2_bias;
} tiny_net_t;

static const char *SPECTRAL_NAMES[N_SPECTRAL] = {
    "conv1", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "conv2"};

typedef struct {  /* activations kept for backward */
    float *x, *h1, *h2, *gn_mean, *gn_rstd, *gain, *h3, *tok, *q, *k, *v, *att, *lse, *o, *res, *h4, *y;
} tiny_acts_t;

typedef struct { float *ddelta[N_SPECTRAL], *dnorm; } tiny_grads_t;

static const conv2d_shape_t CONV1 = {.B = B, .IC = CIN, .H = HW, .W = HW, .OC = C, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}};
static const conv2d_shape_t CONV2 = {.B = B, .IC = C, .H = HW, .W = HW, .OC = COUT, .KH = 1, .KW = 1, .stride = 1, .pad = {0, 0, 0, 0}};

static uint64_t g_rng = 0x5eed;
static float randn(void) {  /* xorshift + Box-Muller: a fixed stream, same on every machine */
    double u[2];
    for (int i = 0; i < 2; i++) {
        g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
        u[i] = ((g_rng >> 11) + 0.5) / 9007199254740992.0;
    }
    return (float)(sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
}
static float *randn_array(size_t n, float std) {
    float *a = sd_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = std * randn();
    return a;
}
static float *zeros(size_t n) { return sd_xcalloc(n, sizeof(float)); }
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int spectral_dims[N_SPECTRAL][2] = {{C, CIN * 9}, {C, C}, {C, C}, {C, C}, {C, C}, {COUT, C}};

static int build_tiny_net(tiny_net_t *net) {
    memset(net, 0, sizeof *net);
    for (int i = 0; i < N_SPECTRAL; i++) {
        int rows = spectral_dims[i][0], cols = spectral_dims[i][1];
        net->W[i] = randn_array((size_t)rows * cols, 1.0f / sqrtf((float)cols));
        int rc = spectral_init(&net->sp[i], net->W[i], rows, cols);
        if (rc) return rc;
    }
    net->gamma = randn_array(C, 0.1f);
    for (int c = 0; c < C; c++) net->gamma[c] += 1.0f;
    net->beta = randn_array(C, 0.1f);
    net->norm_delta = zeros(C);
    net->out_bias = randn_array(C, 0.1f);
    net->conv1_bias = randn_array(C, 0.1f);
    net->conv2_bias = randn_array(COUT, 0.1f);
    return SD_OK;
}

static void free_tiny_net(tiny_net_t *net) {
    for (int i = 0; i < N_SPECTRAL; i++) spectral_free(&net->sp[i]), free(net->W[i]);
    free(net->gamma), free(net->beta), free(net->norm_delta), free(net->out_bias);
    free(net->conv1_bias), free(net->conv2_bias);
}

static void build_acts(tiny_acts_t *a) {
    float **f = (float **)a;
    size_t sizes[] = {B * CIN * T, B * C * T, B * C * T, B * G, B * G, C, B * C * T, B * T * C,
                      B * T * C, B * T * C, B * T * C, B * T * C, B * HEADS * T, B * T * C,
                      B * T * C, B * C * T, B * COUT * T};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) f[i] = zeros(sizes[i]);
}
static void free_acts(tiny_acts_t *a) {
    float **f = (float **)a;
    for (size_t i = 0; i < sizeof *a / sizeof(float *); i++) free(f[i]);
}

/* NCHW [B, C, T] <-> tokens [B, T, C] */
static void to_tokens(float *tok, const float *img) {
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < T; t++) tok[((size_t)b * T + t) * C + c] = img[((size_t)b * C + c) * T + t];
}
static void to_image(float *img, const float *tok) {
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < T; t++) img[((size_t)b * C + c) * T + t] = tok[((size_t)b * T + t) * C + c];
}

/* Weff: baked effective weights per layer, or NULL for the factored forms. */
static void tiny_forward(const tiny_net_t *n, tiny_acts_t *a, float *const *Weff) {
    const float scale = 1.0f / sqrtf((float)(C / HEADS));
#define WE(i) (Weff ? Weff[i] : NULL)
    spectral_conv2d_forward(a->h1, a->x, n->W[0], &n->sp[0], WE(0), n->conv1_bias, &CONV1);
    normshift_gain(a->gain, n->gamma, n->norm_delta, 1.0f, C, NORMSHIFT_ELEMENT);
    groupnorm_forward(a->h2, a->gn_mean, a->gn_rstd, a->h1, a->gain, n->beta, B, C, T, G, 1e-5f);
    silu_forward(a->h3, a->h2, (size_t)B * C * T);
    to_tokens(a->tok, a->h3);
    spectral_linear_forward(a->q, a->tok, n->W[1], &n->sp[1], WE(1), NULL, B * T);
    spectral_linear_forward(a->k, a->tok, n->W[2], &n->sp[2], WE(2), NULL, B * T);
    spectral_linear_forward(a->v, a->tok, n->W[3], &n->sp[3], WE(3), NULL, B * T);
    attention_forward(a->att, a->lse, a->q, a->k, a->v, B, T, T, HEADS, C / HEADS, scale, 0);
    spectral_linear_forward(a->o, a->att, n->W[4], &n->sp[4], WE(4), n->out_bias, B * T);
    for (size_t i = 0; i < (size_t)B * T * C; i++) a->res[i] = a->tok[i] + a->o[i];
    to_image(a->h4, a->res);
    spectral_conv2d_forward(a->y, a->h4, n->W[5], &n->sp[5], WE(5), n->conv2_bias, &CONV2);
#undef WE
}

/* Gradients of the shifts only (accumulated into g), given dy. */
static void tiny_backward(const tiny_net_t *n, const tiny_acts_t *a, const float *dy, tiny_grads_t *g) {
    const float scale = 1.0f / sqrtf((float)(C / HEADS));
    const size_t NT = (size_t)B * T * C;
    scratch_mark_t mark = scratch_mark();
    float *dh4 = scratch_floats(NT), *dres = scratch_floats(NT), *datt = scratch_floats(NT);
    float *dq = scratch_floats(NT), *dk = scratch_floats(NT), *dv = scratch_floats(NT);
    float *dtok = scratch_floats(NT), *dh3 = scratch_floats(NT), *dh2 = scratch_floats(NT);
    float *dgain = scratch_floats(C);
    memset(dh4, 0, NT * sizeof(float));
    spectral_conv2d_backward(dh4, g->ddelta[5], NULL, dy, a->h4, n->W[5], &n->sp[5], NULL, &CONV2);
    to_tokens(dres, dh4);  /* same [B, C, T] -> [B, T, C] transpose */
    memset(datt, 0, NT * sizeof(float));
    spectral_linear_backward(datt, g->ddelta[4], NULL, dres, a->att, n->W[4], &n->sp[4], NULL, B * T);
    memset(dq, 0, NT * sizeof(float)), memset(dk, 0, NT * sizeof(float)), memset(dv, 0, NT * sizeof(float));
    attention_backward(dq, dk, dv, datt, a->q, a->k, a->v, a->att, a->lse, B, T, T, HEADS, C / HEADS, scale, 0);
    memcpy(dtok, dres, NT * sizeof(float));  /* residual path */
    spectral_linear_backward(dtok, g->ddelta[1], NULL, dq, a->tok, n->W[1], &n->sp[1], NULL, B * T);
    spectral_linear_backward(dtok, g->ddelta[2], NULL, dk, a->tok, n->W[2], &n->sp[2], NULL, B * T);
    spectral_linear_backward(dtok, g->ddelta[3], NULL, dv, a->tok, n->W[3], &n->sp[3], NULL, B * T);
    to_image(dh3, dtok);
    memset(dh2, 0, NT * sizeof(float));
    silu_backward(dh2, dh3, a->h2, NT);
    float *dh1 = dh4;  /* reuse */
    memset(dh1, 0, NT * sizeof(float));
    memset(dgain, 0, C * sizeof(float));
    groupnorm_backward(dh1, dgain, NULL, dh2, a->h1, a->gain, a->gn_mean, a->gn_rstd, B, C, T, G);
    normshift_backward(g->dnorm, dgain, n->gamma, n->norm_delta, 1.0f, C, NORMSHIFT_ELEMENT);
    spectral_conv2d_backward(NULL, g->ddelta[0], NULL, dh1, a->x, n->W[0], &n->sp[0], NULL, &CONV1);
    scratch_release(mark);
}

static int g_failures = 0;
static void check(int ok, const char *what) {
    printf("  [%s] %s\n", ok ? " ok " : "FAIL", what);
    if (!ok) g_failures++;
}

static double loss_of(const tiny_net_t *n, tiny_acts_t *a, const float *target) {
    tiny_forward(n, a, NULL);
    return mse_forward(a->y, target, (size_t)B * COUT * T);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff selfcheck [--steps N] [--threads N] [--keep DIR]\n\n"
            "Runs a small end-to-end computation with the engine and checks every step:\n"
            "SVD of each weight, exactness at zero shift, finite-difference gradients of the\n"
            "shifts through the whole network, AdamW training of the shifts towards a teacher,\n"
            "baking, and a safetensors round trip. Exit status 0 when every check holds.\n\n"
            "  --steps N     training steps (default 300)\n"
            "  --threads N   OpenMP/BLAS threads (default: all cores)\n"
            "  --keep DIR    write the trained shifts to DIR/spectral_shifts.safetensors and keep it\n"
            "                (default: a temporary folder, removed at the end)\n"
            "  -h, --help    this help\n");
}

int cmd_selfcheck(int argc, char **argv) {
    int steps = 300;
    const char *keep = NULL;
    static const struct option opts[] = {{"steps", required_argument, 0, 's'},
                                         {"keep", required_argument, 0, 'k'},
                                         {0, 0, 0, 0}};
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "selfcheck", opts, CLI_THREADS, &cm);
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        char *end;
        switch (c) {
        case 's': steps = (int)strtol(optarg, &end, 10);
            if (*end || steps < 1) { fprintf(stderr, "svdiff selfcheck: --steps needs a positive integer\n"); return 2; }
            break;
        case 'k': keep = optarg; break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
    }
    if (cm.given & CLI_THREADS) sd_set_threads(cm.threads);

    printf("svdiff selfcheck: tiny network, batch %d, %dx%d images, %d channels, %d attention heads\n",
           B, HW, HW, C, HEADS);
    double t0 = now();
    tiny_net_t teacher, student;
    g_rng = 0x5eed;
    if (build_tiny_net(&student)) { fprintf(stderr, "svdiff selfcheck: %s\n", sd_last_error()); return 1; }
    g_rng = 0x5eed;  /* same base weights */
    if (build_tiny_net(&teacher)) { fprintf(stderr, "svdiff selfcheck: %s\n", sd_last_error()); return 1; }
    printf("1. thin SVD (LAPACK sgesdd) of %d weight matrices in %.1f ms\n", 2 * N_SPECTRAL, 1e3 * (now() - t0));
    double worst_rec = 0;
    for (int i = 0; i < N_SPECTRAL; i++) {
        spectral_t *sp = &student.sp[i];
        float *rec = zeros((size_t)sp->rows * sp->cols);
        spectral_bake(rec, NULL, sp);
        double md = 0, mr = 0;
        for (size_t j = 0; j < (size_t)sp->rows * sp->cols; j++) {
            md = fmax(md, fabs(rec[j] - student.W[i][j]));
            mr = fmax(mr, fabs(student.W[i][j]));
        }
        worst_rec = fmax(worst_rec, md / mr);
        printf("   %-14s %3d x %-3d rank %3d  sigma %.3f .. %.3f\n", SPECTRAL_NAMES[i], sp->rows, sp->cols,
               sp->rank, sp->S[0], sp->S[sp->rank - 1]);
        free(rec);
    }
    check(worst_rec < 1e-5, "U diag(sigma) V^T reconstructs every W to < 1e-5 relative");

    tiny_acts_t acts;
    build_acts(&acts);
    float *x = randn_array((size_t)B * CIN * T, 1.0f);
    memcpy(acts.x, x, sizeof(float) * B * CIN * T);

    /* exactness: zero shifts + residual give the dense network bit for bit */
    tiny_forward(&student, &acts, NULL);
    float *y0 = zeros((size_t)B * COUT * T);
    memcpy(y0, acts.y, sizeof(float) * B * COUT * T);
    float *Wb[N_SPECTRAL];
    int bit_exact = 1;
    for (int i = 0; i < N_SPECTRAL; i++) {
        Wb[i] = zeros((size_t)student.sp[i].rows * student.sp[i].cols);
        spectral_bake(Wb[i], student.W[i], &student.sp[i]);
        bit_exact &= !memcmp(Wb[i], student.W[i], sizeof(float) * student.sp[i].rows * student.sp[i].cols);
    }
    check(bit_exact, "2. with delta = 0 the baked weights equal the base weights bit for bit");

    /* teacher: random shifts of about 30% of each singular value */
    for (int i = 0; i < N_SPECTRAL; i++)
        for (int j = 0; j < teacher.sp[i].rank; j++) teacher.sp[i].delta[j] = 0.3f * teacher.sp[i].S[j] * randn();
    for (int c = 0; c < C; c++) teacher.norm_delta[c] = 0.2f * randn();
    float *target = zeros((size_t)B * COUT * T);
    tiny_forward(&teacher, &acts, NULL);
    memcpy(target, acts.y, sizeof(float) * B * COUT * T);

    /* gradient check through the whole network at a random non-zero point */
    tiny_grads_t grads;
    size_t sizes[N_SPECTRAL + 1];
    float *gptr[N_SPECTRAL + 1], *m[N_SPECTRAL + 1], *v[N_SPECTRAL + 1], *params[N_SPECTRAL + 1];
    for (int i = 0; i < N_SPECTRAL; i++) {
        sizes[i] = student.sp[i].rank;
        grads.ddelta[i] = gptr[i] = zeros(sizes[i]);
        params[i] = student.sp[i].delta;
        for (size_t j = 0; j < sizes[i]; j++) params[i][j] = 0.05f * student.sp[i].S[j] * randn();
    }
    sizes[N_SPECTRAL] = C;
    grads.dnorm = gptr[N_SPECTRAL] = zeros(C);
    params[N_SPECTRAL] = student.norm_delta;
    for (int i = 0; i <= N_SPECTRAL; i++) m[i] = zeros(sizes[i]), v[i] = zeros(sizes[i]);
    const size_t ny = (size_t)B * COUT * T;
    float *dy = zeros(ny);
    loss_of(&student, &acts, target);
    mse_backward(dy, acts.y, target, ny, 1.0f);
    tiny_backward(&student, &acts, dy, &grads);
    double worst_fd = 0;
    int probes = 0;
    for (int i = 0; i <= N_SPECTRAL; i++) {
        for (int j = 0; j < 3; j++, probes++) {
            float *p = &params[i][j * (sizes[i] / 3)];
            const float h = 1e-2f, p0 = *p;
            double l[4];
            const float offs[4] = {2 * h, h, -h, -2 * h};
            for (int k = 0; k < 4; k++) *p = p0 + offs[k], l[k] = loss_of(&student, &acts, target);
            *p = p0;
            double fd = (-l[0] + 8 * l[1] - 8 * l[2] + l[3]) / (12 * h);
            double an = gptr[i][j * (sizes[i] / 3)];
            double gmax = 0;
            for (size_t q = 0; q < sizes[i]; q++) gmax = fmax(gmax, fabs(gptr[i][q]));
            worst_fd = fmax(worst_fd, fabs(fd - an) / fmax(gmax, 1e-12));
        }
    }
    char msg[4400];
    snprintf(msg, sizeof msg, "3. d loss / d delta matches finite differences at %d probes across all 7 layers (worst %.2e)",
             probes, worst_fd);
    check(worst_fd < 1e-2, msg);

    /* training */
    for (int i = 0; i <= N_SPECTRAL; i++) memset(params[i], 0, sizes[i] * sizeof(float));
    adamw_config_t cfg = adamw_defaults(), cfg1d = adamw_defaults();
    cfg.lr = 1e-2f;
    cfg1d.lr = 1e-3f;
    double loss_start = loss_of(&student, &acts, target), loss = loss_start;
    printf("4. training %d shifts (+%d norm-gain shifts) with AdamW (lr %.0e / %.0e), %d steps\n",
           (int)(sizes[0] + sizes[1] + sizes[2] + sizes[3] + sizes[4] + sizes[5]), C, cfg.lr, cfg1d.lr, steps);
    double tt = now();
    for (int s = 1; s <= steps; s++) {
        for (int i = 0; i <= N_SPECTRAL; i++) memset(gptr[i], 0, sizes[i] * sizeof(float));
        memset(dy, 0, ny * sizeof(float));
        loss = loss_of(&student, &acts, target);
        mse_backward(dy, acts.y, target, ny, 1.0f);
        tiny_backward(&student, &acts, dy, &grads);
        double gn = clip_grad_norm(gptr, sizes, N_SPECTRAL + 1, 1.0);
        for (int i = 0; i <= N_SPECTRAL; i++)
            adamw_step(params[i], gptr[i], m[i], v[i], sizes[i], s, i == N_SPECTRAL ? &cfg1d : &cfg);
        if (s == 1 || s % (steps / 5 > 0 ? steps / 5 : 1) == 0 || s == steps)
            printf("   step %4d  loss %.6f  grad-norm %.4f\n", s, loss, gn);
    }
    double dt = now() - tt;
    loss = loss_of(&student, &acts, target);
    printf("   %.1f ms per step (forward + backward + AdamW)\n", 1e3 * dt / steps);
    snprintf(msg, sizeof msg, "loss fell from %.6f to %.6f (%.1fx)", loss_start, loss, loss_start / loss);
    check(loss < 0.2 * loss_start, msg);

    /* bake and compare */
    float *y_fact = zeros(ny);
    memcpy(y_fact, acts.y, ny * sizeof(float));
    for (int i = 0; i < N_SPECTRAL; i++) spectral_bake(Wb[i], student.W[i], &student.sp[i]);
    tiny_forward(&student, &acts, Wb);
    double md = 0, mr = 0;
    for (size_t i = 0; i < ny; i++) md = fmax(md, fabs(acts.y[i] - y_fact[i])), mr = fmax(mr, fabs(y_fact[i]));
    snprintf(msg, sizeof msg, "5. baked weights give the factored output (relative difference %.1e)", md / mr);
    check(md / mr < 1e-5, msg);

    /* save and reload the shifts */
    char tmpl[] = "/tmp/svdiff-selfcheck-XXXXXX", path[4200];
    const char *dir = keep ? keep : mkdtemp(tmpl);
    if (!dir) { perror("svdiff selfcheck: mkdtemp"); return 1; }
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", dir);
    st_writer_t *w = st_writer_new();
    char names[N_SPECTRAL + 1][64];
    for (int i = 0; i <= N_SPECTRAL; i++) {
        const shift_name_t n = {SHIFT_UNET, i < N_SPECTRAL ? SHIFT_SPECTRAL : SHIFT_NORM,
                                i < N_SPECTRAL ? SPECTRAL_NAMES[i] : "norm"};
        if (shift_key(names[i], sizeof names[i], &n, SHIFT_KEY_FILE)) {
            fprintf(stderr, "svdiff selfcheck: %s\n", sd_last_error());
            return 1;
        }
        int64_t shape[1] = {(int64_t)sizes[i]};
        st_writer_add(w, names[i], ST_F32, 1, shape, params[i]);
    }
    st_writer_meta(w, "format", "svdiff");
    st_writer_meta(w, "svdiff_version", SVDIFF_VERSION);
    st_writer_meta(w, "norm_shift", "element");
    int rc = st_writer_save(w, path);
    st_writer_free(w);
    if (rc) { fprintf(stderr, "svdiff selfcheck: %s\n", sd_last_error()); return 1; }
    st_file_t f;
    int same = st_open(&f, path) == 0 && f.n_tensors == N_SPECTRAL + 1;
    long bytes = same ? (long)f.map_size : 0;
    for (int i = 0; same && i <= N_SPECTRAL; i++) {
        const st_tensor_t *t = st_find(&f, names[i]);
        same = t && t->dtype == ST_F32 && t->numel == (int64_t)sizes[i] &&
               !memcmp(t->data, params[i], sizes[i] * sizeof(float));
    }
    if (same) same = st_meta(&f, "svdiff_version") != NULL, st_close(&f);
    snprintf(msg, sizeof msg, "6. shifts saved atomically to %s (%ld bytes) and read back bit for bit", path, bytes);
    check(same, msg);
    if (!keep) unlink(path), rmdir(dir);

    printf("selfcheck %s: %d failed checks, %.2f s in all\n", g_failures ? "FAILED" : "passed", g_failures, now() - t0);
    for (int i = 0; i <= N_SPECTRAL; i++) free(gptr[i]), free(m[i]), free(v[i]);
    for (int i = 0; i < N_SPECTRAL; i++) free(Wb[i]);
    free(x), free(y0), free(target), free(dy), free(y_fact);
    free_acts(&acts);
    free_tiny_net(&student), free_tiny_net(&teacher);
    scratch_free_all();
    return g_failures ? 1 : 0;
}
