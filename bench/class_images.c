/* Class-image benchmark: images per minute of class_images_generate (the prior-preservation
 * images of `svdiff train --num-class-images`) at --res px, for the old default (DDIM, 50 steps,
 * one image at a time) and the new one (DPM++ 2M, 25 steps, --batch images together), in one
 * process on one loaded model, alternating old and new round by round. Each config is timed
 * with --s1 and --s2 sampler steps (the UNet cost of a step does not depend on the sampler), so
 * a run at the full step counts is fixed + steps x per_step, with fixed the text encoder, the VAE
 * decodes and the PNGs; --full times the full step counts instead. Peak RSS of each config
 * (VmHWM, reset before it), after a warm-up call. RESULT lines for bench/run_class_images.sh. Not part of the tests.
 * Usage: bench_class_images --model DIR [--res 512] [--batch 4] [--rounds 1] [--s1 1] [--s2 2]
 *                           [--full] [--threads N] [--out DIR (scratch, default /tmp)] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/error.h"
#include "base/runtime.h"
#include "pipeline/pipeline.h"
#include "train/dataset.h"
#include "lib/benchutil.h"

static double proc_mb(const char *key) {   /* VmRSS / VmHWM of this process in MB */
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) kb = atol(line + strlen(key));
    if (f) fclose(f);
    return kb / 1024.0;
}

static void reset_hwm(void) {   /* Linux: writing 5 to clear_refs resets VmHWM */
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) fputs("5", f), fclose(f);
}

static double load1(void) {
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f && fscanf(f, "%lf", &l) != 1) l = -1;
    if (f) fclose(f);
    return l;
}

/* Seconds of one class_images_generate call making `n` images into a fresh folder. */
static double one(pipeline_t *p, const char *out, const class_gen_t *g, int n, int res, double *hwm) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/bench-class-%ld-%d-%d", out, (long)getpid(), g->sampler, g->steps);
    reset_hwm();
    const double t0 = bench_now();
    if (class_images_generate(p, dir, "a photo of a dog", 0, n, res, g, 1)) {
        fprintf(stderr, "class_images_generate: %s\n", sd_last_error());
        exit(1);
    }
    const double t = bench_now() - t0;
    *hwm = proc_mb("VmHWM:");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return t;
}

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    const char *model = NULL, *out = "/tmp";
    int res = 512, batch = 4, rounds = 1, s1 = 1, s2 = 2, full = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--res") && i + 1 < argc) res = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--s1") && i + 1 < argc) s1 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--s2") && i + 1 < argc) s2 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--full")) full = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else model = NULL, i = argc;
    }
    if (!model || s2 <= s1 || s1 < 1 || batch < 1) {
        fprintf(stderr, "usage: %s --model DIR [--res N] [--batch B] [--rounds R] [--s1 N] [--s2 N] [--full] "
                "[--threads N] [--out DIR]\n", argv[0]);
        return 2;
    }
    sd_set_threads(threads);
    pipeline_t p;
    if (pipeline_open(&p, model, NULL)) {
        fprintf(stderr, "%s: %s\n", model, sd_last_error());
        return 1;
    }
    printf("model %s, %dx%d px, load %.2f at start\n", model, res, res, load1());
    /* warm-up: the first call pages the weights in and packs them (minutes on SD 1.5) */
    double hwm0;
    const double tw = one(&p, out, &(class_gen_t){SAMPLER_DDIM, 1, 7.5f, 1}, 1, res, &hwm0);
    printf("warm-up (1 image, 1 step): %.1f s\n", tw);
    const class_gen_t cfgs[2] = {{SAMPLER_DDIM, 50, 7.5f, 1}, {SAMPLER_DPMPP_2M, 25, 7.5f, batch}};
    const char *names[2] = {"old", "new"};
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j < 2; j++) {
            const int c = r % 2 ? 1 - j : j;   /* old, new; then new, old */
            class_gen_t g = cfgs[c];
            const int n = g.batch;
            double hwm1, hwm2, per_step, fixed, t1, t2;
            const double l0 = load1();
            if (full) {
                t2 = one(&p, out, &g, n, res, &hwm2);
                hwm1 = hwm2, t1 = t2, per_step = t2 / g.steps, fixed = 0;
            } else {
                g.steps = s1;
                t1 = one(&p, out, &g, n, res, &hwm1);
                g.steps = s2;
                t2 = one(&p, out, &g, n, res, &hwm2);
                per_step = (t2 - t1) / (s2 - s1);
                fixed = t1 - s1 * per_step;
            }
            const double total = fixed + cfgs[c].steps * per_step;
            printf("RESULT config=%s sampler=%s steps=%d batch=%d round=%d t_s1=%.1f t_s2=%.1f per_step_s=%.2f "
                   "fixed_s=%.1f est_s=%.1f images_per_min=%.3f peak_rss_mb=%.0f load=%.2f-%.2f\n",
                   names[c], sampler_kind_name(cfgs[c].sampler), cfgs[c].steps, n, r + 1, t1, t2, per_step, fixed,
                   total, 60.0 * n / total, hwm1 > hwm2 ? hwm1 : hwm2, l0, load1());
            fflush(stdout);
        }
    pipeline_close(&p);
    return 0;
}
