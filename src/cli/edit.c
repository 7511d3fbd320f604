/* `svdiff edit`: single-image editing (CoSINE, docs/method.md section 5). Fine-tunes spectral shifts on
 * one image and its plain prompt (the trainer of `svdiff train`, no prior preservation) or takes
 * them from --shifts, DDIM-inverts the image, samples every edit prompt from the inverted latent,
 * and writes the edits, the reconstruction, a grid and the shifts. A client of the public API
 * (svdiff.h): the fine-tuning (svdiff_train on a one-row data set), the folder lock, the model and
 * its shifts, the inversion and sampling (svdiff_edit, svdiff_edit_report), the PNGs and the grid. */
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "svdiff.h"

#include "base/error.h"         /* messages of the CLI's own checks (sd_error) */
#include "base/progress.h"      /* the progress bar drawn from the progress callback */
#include "cli/args.h"
#include "cli/commands.h"
#include "train/settings.h"     /* the training settings table: the fine-tuning's flags */
#include "train/trainer.h"      /* train_config_t, the struct the table's flags are parsed into */

#define MAX_EDITS 64

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff edit --model PATH --image IMG --prompt SOURCE --edit TARGET [--edit ...] -o OUT_DIR\n\n"
            "Edits one image by changing its prompt (CoSINE): spectral shifts are fine-tuned on the image and\n"
            "its plain prompt (no identifier, no prior preservation), the image is DDIM-inverted, and every\n"
            "edit prompt is sampled from the inverted latent. Writes OUT_DIR/edit-K.png (one per --edit),\n"
            "OUT_DIR/reconstruction.png (the source prompt sampled back from the inversion with eta 0 and\n"
            "guidance 1: it should look like the input), OUT_DIR/grid.png (input, reconstruction, edits from\n"
            "left to right) and the shifts (OUT_DIR/spectral_shifts.safetensors [+ _te], as `svdiff train`).\n\n"
            "input:\n");
    cli_common_help(f, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS, NULL);
    fprintf(f,
            "  --image IMG                the image to edit (PNG or JPEG); resized so its shorter side is\n"
            "                             --resolution, then centre-cropped to a square\n"
            "  --prompt TEXT              what the image shows, plainly (\"photo of a pink chair with black legs\")\n"
            "  --edit TEXT                the edited prompt (\"photo of a blue chair with black legs\"); repeat\n"
            "                             for several edits (at most %d)\n",
            MAX_EDITS);
    train_settings_help(f, TS_DATA, TS_EDIT);   /* --resolution */
    fprintf(f,
            "fine-tuning (skipped with --shifts; the training settings `svdiff train` has too):\n"
            "  --shifts PATH              reuse shifts trained before (a shift file or a training output folder)\n"
            "                             instead of fine-tuning; they are copied to OUT_DIR\n");
    train_settings_help(f, TS_OPTIM, TS_EDIT);
    fprintf(f,
            "inversion and sampling:\n"
            "  --invert-prompt WHICH      the prompt the DDIM inversion is conditioned on (guidance 1): target\n"
            "                             (default, as the method: each edit is inverted with its own prompt) or\n"
            "                             source (one inversion with --prompt, shared by every edit)\n"
            "  --no-inversion             start every edit from seeded noise instead of the inverted image\n"
            "  --sample-steps N           DDIM steps of inversion and of sampling (default 50; the two must walk\n"
            "                             the same timesteps); also spelled --inversion-steps, --steps-sample\n"
            "  --cfg G                    guidance scale of the edits against the empty prompt (default 3)\n"
            "  --eta E                    DDIM noise of the edits, in [0, 1] (default 0.1)\n"
            "  --slerp A                  mix the inverted latent with fresh noise by spherical interpolation,\n"
            "                             A in [0, 1]: 0 keeps the inverted latent (default), larger A allows\n"
            "                             larger structural changes\n"
            "  --seed S                   seed of training, of the fresh noise (--no-inversion, --slerp: the\n"
            "                             same noise for every edit) and of the DDIM noise (default 42)\n"
            "output:\n"
            "  -o, --output DIR           output folder (created; also --output-dir)\n"
            "  --report                   also sample the source prompt from seeded noise and print (stdout) the\n"
            "                             PSNR of that and of the reconstruction against the input, the VAE round\n"
            "                             trip's PSNR (the ceiling of a latent model), the reconstruction's against\n"
            "                             that round trip, and each edit's PSNR against the input\n"
            "  --force                    overwrite the outputs of an earlier run in OUT_DIR; apply --shifts made\n"
            "                             for another base model or whose two files were not written together\n"
            "  --quiet                    no progress bars\n");
    cli_common_help(f, CLI_THREADS | CLI_COMPUTE, NULL);
    fprintf(f,
            "  -h, --help                 this help\n\n"
            "The reconstruction's PSNR against the input (at --resolution) is always printed.\n");
}

enum {
    O_IMAGE = 1000, O_PROMPT, O_EDIT, O_SHIFTS, O_INVERT_PROMPT, O_NO_INV, O_SAMPLE_STEPS, O_CFG, O_ETA, O_SLERP,
    O_REPORT
};

typedef struct {
    progress_t bar;
    int on;
    long base;   /* steps done by the earlier runs */
} edit_progress_t;

static void on_progress(svdiff_stage_t stage, int step, int total, double seconds_per_step, void *vctx) {
    (void)stage, (void)total, (void)seconds_per_step;
    edit_progress_t *e = vctx;
    /* step counts every run of the svdiff_edit call (base 0), then --report's run (base: those) */
    if (e->on) progress_update(&e->bar, e->base + step, NULL);
}

static void no_progress(svdiff_stage_t stage, int step, int total, double seconds_per_step, void *user_data) {
    (void)stage, (void)step, (void)total, (void)seconds_per_step, (void)user_data;
}

/* Copies a file byte for byte through "<dst>.tmp.<pid>" and a rename. */
static int copy_file(const char *src, const char *dst) {
    int rc = svdiff_output_check(dst);
    if (rc) return rc;
    char tmp[PATH_MAX + 128];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dst, (long)getpid());
    FILE *in = fopen(src, "rb");
    if (!in) return sd_error(SD_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    FILE *out = fopen(tmp, "wb");
    if (!out) {
        fclose(in);
        return sd_error(SD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            rc = sd_error(SD_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
            break;
        }
    if (!rc && ferror(in)) rc = sd_error(SD_ERR_IO, "%s: read failed", src);
    if (fclose(out) && !rc) rc = sd_error(SD_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    fclose(in);
    if (!rc && rename(tmp, dst)) rc = sd_error(SD_ERR_IO, "%s: cannot rename to %s: %s", tmp, dst, strerror(errno));
    if (rc) unlink(tmp);
    return rc;
}

/* --shifts: the files are copied into OUT_DIR under the names `svdiff train` writes (a single
 * file, which may hold both parts, becomes spectral_shifts.safetensors). */
static int copy_shifts(const char *spec, const char *out_dir, int force) {
    svdiff_shifts_t *s = NULL;
    int rc = svdiff_shifts_load_ex(spec, force, &s);   /* which files: the per-part view */
    static const char *names[SVDIFF_SHIFTS_PARTS] = {"spectral_shifts.safetensors", "spectral_shifts_te.safetensors",
                                                     "spectral_shifts_te2.safetensors"};
    for (int i = 0; i < SVDIFF_SHIFTS_PARTS && !rc; i++) {
        svdiff_shifts_part_t pi;
        svdiff_shifts_part(s, i, &pi);
        if (!pi.present) continue;
        char dst[PATH_MAX + 64], a[PATH_MAX], b[PATH_MAX];
        snprintf(dst, sizeof dst, "%s/%s", out_dir, names[i]);
        if (realpath(pi.file, a) && realpath(dst, b) && !strcmp(a, b)) continue;   /* already there */
        rc = copy_file(pi.file, dst);
    }
    svdiff_shifts_free(s);
    return rc;
}

static int save_png(const svdiff_image_t *img, const char *path, const char *params) {
    int rc = svdiff_png_write(path, img->rgb, img->width, img->height, params);
    if (!rc) fprintf(stderr, "wrote %s\n", path);
    return rc;
}

static int has_tab_or_newline(const char *s) { return strpbrk(s, "\t\r\n") != NULL; }

int cmd_edit(int argc, char **argv) {
    const char *image_path = NULL, *prompt = NULL;
    const char *shifts_path = NULL;
    const char *edits[MAX_EDITS];
    int n_edits = 0, sample_steps = 50, invert_target = 1, no_inversion = 0;
    int report = 0;
    float cfg = 3.0f, eta = 0.1f, slerp = 0.0f;
    /* the fine-tuning's settings: train's table entries marked TS_EDIT (train/settings.h) */
    train_config_t tc;
    train_config_default(&tc);
    tc.train_text_encoder = 1;   /* edit trains the text encoder's shifts too (--freeze-text-encoder) */
    unsigned char use[256];
    SD_CHECK(n_train_settings <= (int)sizeof use, "settings table longer than %zu", sizeof use);
    for (int i = 0; i < n_train_settings; i++) use[i] = !!(train_settings[i].verbs & TS_EDIT);
    static const struct option opts[] = {
        {"image", required_argument, 0, O_IMAGE},
        {"prompt", required_argument, 0, O_PROMPT},
        {"edit", required_argument, 0, O_EDIT},
        {"shifts", required_argument, 0, O_SHIFTS},
        {"invert-prompt", required_argument, 0, O_INVERT_PROMPT},
        {"no-inversion", no_argument, 0, O_NO_INV},
        {"sample-steps", required_argument, 0, O_SAMPLE_STEPS},
        {"inversion-steps", required_argument, 0, O_SAMPLE_STEPS},
        {"steps-sample", required_argument, 0, O_SAMPLE_STEPS},
        {"cfg", required_argument, 0, O_CFG},
        {"eta", required_argument, 0, O_ETA},
        {"slerp", required_argument, 0, O_SLERP},
        {"report", no_argument, 0, O_REPORT},
        {0, 0, 0, 0}};
    cli_common_t cm = {.seed = 42};
    static cli_parser_t ps;
    cli_parser_init(&ps, "edit", opts, CLI_ALL_COMMON, &cm);
    cli_parser_settings(&ps, &train_settings[0].s, sizeof train_settings[0], n_train_settings, &tc, use, NULL);
    for (int o; (o = cli_getopt(&ps, argc, argv)) != -1;) {
        int bad = 0;
        switch (o) {
        case O_IMAGE: image_path = optarg; break;
        case O_PROMPT: prompt = optarg; break;
        case O_EDIT:
            if (n_edits == MAX_EDITS) {
                fprintf(stderr, "svdiff edit: at most %d --edit\n", MAX_EDITS);
                bad = 1;
            } else {
                edits[n_edits++] = optarg;
            }
            break;
        case O_SHIFTS: shifts_path = optarg; break;
        case O_INVERT_PROMPT:
            if (!strcmp(optarg, "source") || !strcmp(optarg, "target")) invert_target = optarg[0] == 't';
            else {
                fprintf(stderr, "svdiff edit: --invert-prompt must be source or target, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_NO_INV: no_inversion = 1; break;
        case O_SAMPLE_STEPS: bad = cli_parse_int("edit", "--sample-steps", optarg, 1, 1000, &sample_steps); break;
        case O_CFG: bad = cli_parse_float("edit", "--cfg", optarg, 0, 100, &cfg); break;
        case O_ETA: bad = cli_parse_float("edit", "--eta", optarg, 0, 1, &eta); break;
        case O_SLERP: bad = cli_parse_float("edit", "--slerp", optarg, 0, 1, &slerp); break;
        case O_REPORT: report = 1; break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    const char *model = cm.model, *tokenizer = cm.tokenizer, *out = cm.output;
    const int force = cm.force, threads = cm.threads, quiet = cm.quiet;
    const unsigned long long seed = cm.seed;
    const model_open_options_t mo = cm.mo;
    int res = tc.resolution;   /* 0: the model's native size, once it is open */
    if (!model || !image_path || !prompt || !out) {
        fprintf(stderr, "svdiff edit: --model, --image, --prompt and -o are required (see --help)\n");
        return 2;
    }
    if (!n_edits) {
        fprintf(stderr, "svdiff edit: give at least one --edit PROMPT (the edited description of the image)\n");
        return 2;
    }
    if (no_inversion && slerp > 0) {
        fprintf(stderr, "svdiff edit: --slerp mixes the inverted latent with noise; it has no effect with --no-inversion\n");
        return 2;
    }
    if (!shifts_path && has_tab_or_newline(prompt)) {
        fprintf(stderr, "svdiff edit: --prompt must not contain tabs or line breaks\n");
        return 2;
    }
    svdiff_set_threads(threads);

    /* everything that can be checked is checked before the (long) fine-tuning */
    svdiff_image_t *input = NULL;
    if (svdiff_image_read(image_path, &input)) {
        fprintf(stderr, "svdiff edit: --image: %s\n", svdiff_last_error());
        return 1;
    }
    struct stat st;
    if (!stat(out, &st) && !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "svdiff edit: -o %s: exists and is not a folder\n", out);
        svdiff_images_free(input, 1);
        return 1;
    }
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/grid.png", out);
    if (!force && !stat(path, &st)) {
        fprintf(stderr, "svdiff edit: -o %s: already holds the results of an edit (use --force to overwrite)\n", out);
        svdiff_images_free(input, 1);
        return 1;
    }
    svdiff_model_params_t mp = svdiff_model_default_params();
    mp.tokenizer_dir = tokenizer, mp.prediction_type = mo.prediction_type, mp.scheduler_config = mo.scheduler_config;
    mp.svd_cache_dir = tc.svd_cache_dir;   /* NULL: the default folder; "": --svd-cache none */
    mp.force = force;
    svdiff_model_t *m = NULL;
    int rc = svdiff_model_open(model, &mp, &m);
    svdiff_model_info_t mi;
    if (!rc) rc = svdiff_model_info(m, &mi);
    if (rc) {
        fprintf(stderr, "svdiff edit: %s\n", svdiff_last_error());
        svdiff_model_close(m);
        svdiff_images_free(input, 1);
        return 1;
    }
    const int multiple = mi.scale_factor * (1 << (mi.unet_levels - 1));
    if (!res) res = mi.native_width;
    if (res % multiple) {
        fprintf(stderr, "svdiff edit: --resolution %d: must be a multiple of %d for this model\n", res, multiple);
        svdiff_model_close(m);
        svdiff_images_free(input, 1);
        return 2;
    }

    /* 1. the shifts: fine-tuned on the one image-prompt pair, or given */
    svdiff_folder_lock_t *lock = NULL;   /* of the output folder, from its creation to the end */
    if (!shifts_path) {
        svdiff_model_close(m);   /* the trainer opens the model in its training form */
        m = NULL;
        char abs_image[PATH_MAX];
        if (!realpath(image_path, abs_image)) {
            fprintf(stderr, "svdiff edit: --image %s: %s\n", image_path, strerror(errno));
            svdiff_images_free(input, 1);
            return 1;
        }
        if (strpbrk(abs_image, "\t\r\n")) {
            fprintf(stderr, "svdiff edit: --image %s: the path must not contain tabs or line breaks\n", image_path);
            svdiff_images_free(input, 1);
            return 1;
        }
        /* the training data: a one-row captioned data set (kept: it records what was trained) */
        snprintf(path, sizeof path, "%s/edit-train.tsv", out);
        if (mkdir(out, 0777) && errno != EEXIST) {
            fprintf(stderr, "svdiff edit: -o %s: cannot create the folder: %s\n", out, strerror(errno));
            svdiff_images_free(input, 1);
            return 1;
        }
        /* the folder is this run's until it ends (the trainer takes the lock again) */
        rc = svdiff_folder_lock(out, &lock);   /* and stale temp files removed */
        if (rc || svdiff_output_check(path)) {
            fprintf(stderr, "svdiff edit: %s\n", svdiff_last_error());
            svdiff_folder_unlock(lock);
            svdiff_images_free(input, 1);
            return 1;
        }
        FILE *f = fopen(path, "w");
        if (!f || fprintf(f, "%s\t%s\n", abs_image, prompt) < 0 || fclose(f)) {
            fprintf(stderr, "svdiff edit: %s: cannot write: %s\n", path, strerror(errno));
            svdiff_folder_unlock(lock);
            svdiff_images_free(input, 1);
            return 1;
        }
        static char tsv_path[PATH_MAX + 64];
        snprintf(tsv_path, sizeof tsv_path, "%s", path);
        /* training on one captioned image: a data set row, centre crop, no flip, the text
         * encoder's shifts, edit's settings */
        svdiff_train_params_t tp = svdiff_train_default_params();
        tp.model = model, tp.tokenizer_dir = tokenizer;
        tp.prediction_type = mo.prediction_type, tp.scheduler_config = mo.scheduler_config;
        tp.out_dir = out;
        tp.resolution = res, tp.steps = tc.steps, tp.lr = tc.lr, tp.lr_1d = tc.lr_1d;
        tp.train_text_encoder = tc.train_text_encoder;
        tp.seed = seed, tp.threads = threads;
        tp.svd_cache_dir = tc.svd_cache_dir;
        tp.force = force;
        char data[PATH_MAX + 80];
        snprintf(data, sizeof data, "data=%s", tsv_path);
        const char *settings[3] = {data, "center-crop", "flip=0"};
        tp.settings = settings, tp.n_settings = 3;
        if (quiet) tp.callbacks.progress = no_progress;   /* else the trainer's bar, as `svdiff train` */
        fprintf(stderr, "fine-tuning spectral shifts on %s (\"%s\"), %d steps at %d px\n", image_path, prompt, tc.steps, res);
        rc = svdiff_train(&tp);
        if (rc) fprintf(stderr, "svdiff edit: %s\n", svdiff_last_error());
        if (rc) {
            svdiff_folder_unlock(lock);
            svdiff_images_free(input, 1);
            return 1;
        }
        mp.force = 0;   /* the shifts were just trained on this model */
        rc = svdiff_model_open(model, &mp, &m);
        if (!rc && (rc = svdiff_model_apply_shifts(m, out, 1.0f))) svdiff_model_close(m), m = NULL;
    } else {
        rc = svdiff_model_apply_shifts(m, shifts_path, 1.0f);
        if (!rc && mkdir(out, 0777) && errno != EEXIST)
            rc = sd_error(SD_ERR_IO, "-o %s: cannot create the folder: %s", out, strerror(errno));
        if (!rc) rc = svdiff_folder_lock(out, &lock);   /* and stale temp files removed */
        if (!rc) rc = copy_shifts(shifts_path, out, force);
        if (rc) svdiff_model_close(m), m = NULL;
    }
    if (rc) {
        fprintf(stderr, "svdiff edit: %s\n", svdiff_last_error());
        svdiff_folder_unlock(lock);
        svdiff_images_free(input, 1);
        return 1;
    }

    /* 2. inversion and sampling: [0] the input as edited, [1] the reconstruction, [2 + k] edit k */
    const int inv_runs = no_inversion ? 0 : 1 + (invert_target ? n_edits : 0);
    edit_progress_t prog = {.on = !quiet};
    if (prog.on) progress_start(&prog.bar, "edit", (long)sample_steps * (inv_runs + 1 + n_edits + report), "step");
    svdiff_edit_params_t ep = svdiff_edit_default_params();
    ep.image = input, ep.prompt = prompt, ep.edits = edits, ep.n_edits = n_edits, ep.resolution = res;
    ep.steps = sample_steps, ep.cfg = cfg, ep.eta = eta, ep.slerp = slerp;
    ep.invert_source = !invert_target, ep.no_inversion = no_inversion, ep.seed = seed;
    ep.callbacks = (svdiff_callbacks_t){.progress = on_progress, .user_data = &prog};
    svdiff_image_t *imgs = NULL;
    double psnr = NAN;
    rc = svdiff_edit(m, &ep, &imgs, &psnr);
    const size_t npix = (size_t)res * res * 3;
    svdiff_edit_report_t rep = {NAN, INFINITY, psnr};
    if (!rc && report) {
        /* --report's seeded-noise reconstruction and VAE round trip, after the runs above */
        prog.base = (long)sample_steps * (inv_runs + 1 + n_edits);
        rc = svdiff_edit_report(m, &ep, imgs, &rep);
    }
    svdiff_images_free(input, 1);
    if (!rc && prog.on) progress_finish(&prog.bar);

    /* 3. outputs */
    char params[8192];
    const char *inv_text = no_inversion ? "none (seeded noise)" : invert_target ? "target prompt" : "source prompt";
    if (!rc) {
        snprintf(path, sizeof path, "%s/reconstruction.png", out);
        snprintf(params, sizeof params,
                 "%s\nReconstruction of %s: inversion %s, Steps: %d, Sampler: ddim, CFG scale: 1, Eta: 0, Seed: %llu, "
                 "Size: %dx%d, Model: %s, Version: svdiff %s",
                 prompt, image_path, no_inversion ? "none (seeded noise)" : "source prompt", sample_steps, seed, res,
                 res, model, SVDIFF_VERSION);
        rc = save_png(&imgs[1], path, params);
    }
    for (int k = 0; k < n_edits && !rc; k++) {
        snprintf(path, sizeof path, "%s/edit-%d.png", out, k + 1);
        snprintf(params, sizeof params,
                 "%s\nEdit of %s (\"%s\"): inversion %s, Slerp: %g, Steps: %d, Sampler: ddim, CFG scale: %g, Eta: %g, "
                 "Seed: %llu, Size: %dx%d, Model: %s, Version: svdiff %s",
                 edits[k], image_path, prompt, inv_text, slerp, sample_steps, cfg, eta, seed, res, res, model,
                 SVDIFF_VERSION);
        rc = save_png(&imgs[2 + k], path, params);
    }
    if (!rc) {
        /* the image library has no text rendering: the order of the columns is in the PNG text */
        svdiff_image_t *grid = NULL;
        rc = svdiff_image_grid(imgs, n_edits + 2, n_edits + 2, 2, &grid);
        int k = snprintf(params, sizeof params, "input | reconstruction");
        for (int e = 0; e < n_edits && k < (int)sizeof params; e++)
            k += snprintf(params + k, sizeof params - k, " | %s", edits[e]);
        snprintf(path, sizeof path, "%s/grid.png", out);
        if (!rc) rc = save_png(grid, path, params);
        if (!rc) fprintf(stderr, "grid columns: %s\n", params);
        svdiff_images_free(grid, 1);
    }
    if (!rc) {
        fprintf(stderr, "reconstruction PSNR %.2f dB against the input at %d px (%s)\n", psnr, res,
                no_inversion ? "from seeded noise" : "from the DDIM inversion");
        if (report) {
            printf("reconstruction_psnr_db %.4f\n", psnr);
            printf("vae_roundtrip_psnr_db %.4f\n", rep.vae_roundtrip_psnr);
            printf("reconstruction_vs_vae_roundtrip_psnr_db %.4f\n", rep.reconstruction_vs_vae_psnr);
            printf("noise_reconstruction_psnr_db %.4f\n", rep.noise_reconstruction_psnr);
            for (int e = 0; e < n_edits; e++) printf("edit_%d_psnr_db %.4f\n", e + 1, svdiff_psnr(imgs[2 + e].rgb, imgs[0].rgb, npix));
        }
    }
    if (rc) fprintf(stderr, "svdiff edit: %s\n", svdiff_last_error());
    svdiff_images_free(imgs, n_edits + 2);
    svdiff_model_close(m);
    svdiff_folder_unlock(lock);
    return rc ? 1 : 0;
}
