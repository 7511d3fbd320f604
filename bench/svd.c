/* SVD benchmark: the one-time SVD of every UNet conv / linear of a model folder, as training
 * runs it: weight_make_spectral_many (the SVDs in parallel, one single-threaded SVD per thread,
 * what unet_make_spectral_cached runs without an SVD cache), the seconds in all; or with --serial
 * spectral_init on an fp32 copy of each matrix, one after the other (threads inside each LAPACK
 * call), with the seconds per matrix too. Not part of the tests.
 * bench/run_svd.sh runs it side by side with PyTorch's torch.linalg.svd on the same matrices
 * (bench/svd_torch.py, fed the names this prints). Usage: bench_svd --help */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "base/error.h"
#include "base/hash64.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "io/model.h"
#include "models/unet.h"
#include "weights/spectral.h"
#include "weights/weight.h"
#include "lib/benchutil.h"

static void die(const char *what) {
    fprintf(stderr, "bench_svd: %s: %s\n", what, sd_last_error());
    exit(1);
}

/* The factors' bytes, to see that two runs (threads, builds) give the same ones. */
static uint64_t factor_hash(const spectral_t *sp) {
    uint64_t h = hash_bytes(sp->S, sizeof(float) * (size_t)sp->rank, 1);
    h = hash_bytes(sp->U, sizeof(float) * (size_t)sp->rows * sp->rank, h);
    return hash_bytes(sp->Vt, sizeof(float) * (size_t)sp->rank * sp->cols, h);
}

static long numel(const layer_t *l) { return (long)l->w.rows * l->w.cols; }

/* Largest first; equal sizes by name, so a selection does not depend on the build order. */
static int cmp_size(const void *a, const void *b) {
    const layer_t *x = *(const layer_t *const *)a, *y = *(const layer_t *const *)b;
    if (numel(x) != numel(y)) return numel(x) < numel(y) ? 1 : -1;
    return strcmp(x->name, y->name);
}

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    const char *model_dir = NULL, *match = NULL;
    int largest = -1, smallest = 0, threads = 0, serial = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--model") && v) model_dir = v, i++;
        else if (!strcmp(a, "--largest") && v) largest = atoi(v), i++;
        else if (!strcmp(a, "--smallest") && v) smallest = atoi(v), i++;
        else if (!strcmp(a, "--match") && v) match = v, i++;
        else if (!strcmp(a, "--threads") && v) threads = atoi(v), i++;
        else if (!strcmp(a, "--serial")) serial = 1;
        else {
            printf("usage: bench_svd --model DIR [--largest N] [--smallest M] [--match TEXT] [--threads N] [--serial]\n"
                   "  the UNet's conv / linear matrices (conv kernels as [out, in*k*k]), those whose name\n"
                   "  contains TEXT, the N largest and M smallest of them (default: all), factored as the\n"
                   "  trainer does (weight_make_spectral_many: one single-threaded SVD per thread, largest\n"
                   "  first); --serial: spectral_init on each, one after the other, threads inside LAPACK\n"
                   "  (the trainer's way before issue 19), with each matrix's seconds\n");
            return strcmp(a, "--help") ? 2 : 0;
        }
    }
    if (!model_dir) die("--model is required");
    sd_set_threads(threads);
    model_t mf;
    if (model_open(&mf, model_dir, NULL)) die(model_dir);
    unet_t m;
    if (build_unet_from_component(&m, &mf.unet)) die("build_unet");

    layer_t **all = sd_xmalloc(sizeof *all * (size_t)m.n_layers);
    int n_all = 0;
    for (int i = 0; i < m.n_layers; i++)
        if (m.layers[i]->w.kind == WEIGHT_DENSE && (!match || strstr(m.layers[i]->name, match)))
            all[n_all++] = m.layers[i];
    qsort(all, (size_t)n_all, sizeof *all, cmp_size);
    layer_t **sel = sd_xmalloc(sizeof *sel * (size_t)(n_all ? n_all : 1));
    int n = 0;
    for (int i = 0; i < n_all; i++)
        if (largest < 0 || i < largest || i >= n_all - smallest) sel[n++] = all[i];

    printf("svdiff SVD benchmark: OpenBLAS kernel %s, %d threads, %s, model %s, %d of %d matrices\n",
           openblas_get_corename(), openblas_get_num_threads(),
           serial ? "serial spectral_init" : "weight_make_spectral_many", model_dir, n, n_all);
    fflush(stdout);
    double total = 0;
    if (serial) {
        /* Each matrix is widened to fp32 before its clock starts, so the time is the SVD alone (not
         * the file's pages or the dtype change), and only one fp32 copy exists at a time. */
        for (int i = 0; i < n; i++) {
            const weight_t *w = &sel[i]->w;
            float *f = sd_xmalloc(sizeof(float) * (size_t)numel(sel[i]));
            st_to_f32(f, w->data, w->dtype, (size_t)numel(sel[i]));
            spectral_t sp;
            const double t = bench_now();
            if (spectral_init(&sp, f, w->rows, w->cols)) die(sel[i]->name);
            const double dt = bench_now() - t;
            total += dt;
            printf("MAT %s %d %d %.4f %016llx\n", sel[i]->name, w->rows, w->cols, dt, (unsigned long long)factor_hash(&sp));
            fflush(stdout);
            spectral_free(&sp);
            free(f);
        }
    } else {
        /* The pages of the matrices are touched first, so the clock holds the SVDs (and the dtype
         * change each one does inside its own working copy), not the reading of the file. */
        weight_t **w = sd_xmalloc(sizeof *w * (size_t)(n ? n : 1));
        volatile unsigned char sink = 0;
        for (int i = 0; i < n; i++) {
            w[i] = &sel[i]->w;
            const unsigned char *d = w[i]->data;
            for (size_t b = 0; b < (size_t)numel(sel[i]) * st_dtype_size(w[i]->dtype); b += 4096) sink ^= d[b];
        }
        (void)sink;
        const double t = bench_now();
        if (weight_make_spectral_many(w, n, 1)) die("weight_make_spectral_many");
        total = bench_now() - t;
        for (int i = 0; i < n; i++)
            printf("MAT %s %d %d - %016llx\n", sel[i]->name, w[i]->rows, w[i]->cols,
                   (unsigned long long)factor_hash(w[i]->sp));
        free(w);
    }
    printf("RESULT side=svdiff case=svd matrices=%d total_s=%.3f threads=%d mode=%s\n", n, total,
           openblas_get_num_threads(), serial ? "serial" : "parallel");
    free(sel), free(all);
    free_unet(&m);
    model_close(&mf);
    scratch_free_all();
    return 0;
}
