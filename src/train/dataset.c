/* Training data (see dataset.h): folder scans with caption files, the prompt table, class-image
 * generation, the lazy VAE-posterior cache and the seeded epoch order. */
#include "train/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/dist.h"
#include "base/error.h"
#include "base/str.h"
#include "base/progress.h"
#include "io/image.h"
#include "io/outputs.h"

/* Streams of their own, so that adding a draw in one place never shifts another's numbers. */
#define CROP_SALT 0x6a09e667f3bcc909ull

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sd_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

/* ---- prompts ---- */

void prompt_table_free(prompt_table_t *pt) {
    for (int i = 0; i < pt->n; i++) free(pt->text[i]);
    free(pt->text), free(pt->ids);
    memset(pt, 0, sizeof *pt);
}

int prompt_table_add(prompt_table_t *pt, const clip_tokenizer_t *tok, const char *text, const char *where) {
    for (int i = 0; i < pt->n; i++)
        if (!strcmp(pt->text[i], text)) return i;
    if (!pt->T) pt->T = TOKENIZER_MAX_LENGTH;
    const int T = pt->T;
    int ids[TOKENIZER_MAX_LENGTH], before = 0;
    int got = tokenizer_encode(tok, text, ids, T, 1, &before);
    if (got < 0) return got;
    if (before > T)
        return sd_error(SD_ERR_ARG, "%s: the prompt has %d tokens, more than the text encoder's %d (with start and end): "
                        "shorten it (training does not truncate): \"%.60s...\"", where, before, T, text);
    pt->text = realloc(pt->text, sizeof *pt->text * (pt->n + 1));
    pt->ids = realloc(pt->ids, sizeof *pt->ids * (size_t)(pt->n + 1) * T);
    SD_CHECK(pt->text && pt->ids, "out of memory");
    pt->text[pt->n] = xstrdup(text);
    memcpy(pt->ids + (size_t)pt->n * T, ids, sizeof(int) * T);
    return pt->n++;
}

int prompt_table_ids2(const prompt_table_t *pt, const clip_tokenizer_t *tok2, int *ids2) {
    const int T = pt->T ? pt->T : TOKENIZER_MAX_LENGTH;
    for (int i = 0; i < pt->n; i++) {
        int before = 0;
        const int got = tokenizer_encode(tok2, pt->text[i], ids2 + (size_t)i * T, T, 1, &before);
        if (got < 0) return got;
        if (before > T)
            return sd_error(SD_ERR_ARG, "the prompt has %d tokens for tokenizer_2, more than %d (with start and end): "
                            "shorten it (training does not truncate): \"%.60s...\"", before, T, pt->text[i]);
    }
    return SD_OK;
}

/* ---- folders ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The caption next to `image` ("x.png" -> "x.txt"), trimmed, or NULL (malloc'ed). Reading errors
 * of an existing caption are errors (*rc). */
static char *read_caption(const char *image, int *rc) {
    char path[PATH_MAX];
    const char *dot = strrchr(image, '.'), *slash = strrchr(image, '/');
    if (!dot || (slash && dot < slash)) dot = image + strlen(image);
    snprintf(path, sizeof path, "%.*s.txt", (int)(dot - image), image);
    FILE *f = fopen(path, "rb");
    *rc = 0;
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (int c; (c = fgetc(f)) != EOF;) {
        if (n + 2 > cap) buf = realloc(buf, cap = cap ? 2 * cap : 256);
        SD_CHECK(buf, "out of memory");
        buf[n++] = (char)(c == '\n' || c == '\r' || c == '\t' ? ' ' : c);
    }
    if (ferror(f)) *rc = sd_error(SD_ERR_IO, "%s: cannot read caption: %s", path, strerror(errno));
    fclose(f);
    if (*rc) {
        free(buf);
        return NULL;
    }
    while (n && buf[n - 1] == ' ') n--;
    size_t start = 0;
    while (start < n && buf[start] == ' ') start++;
    if (start == n) { /* an empty caption: the folder's prompt */
        free(buf);
        return NULL;
    }
    char *out = sd_xmalloc(n - start + 1);
    memcpy(out, buf + start, n - start);
    out[n - start] = 0;
    free(buf);
    return out;
}

void image_set_free(image_set_t *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->img[i].path);
        free(s->img[i].dist[0]), free(s->img[i].dist[1]);
    }
    free(s->img), free(s->dir);
    memset(s, 0, sizeof *s);
}

int image_set_scan(image_set_t *s, const char *dir, const char *what, int allow_missing, int allow_empty,
                   const char *default_prompt, prompt_table_t *pt, const clip_tokenizer_t *tok) {
    memset(s, 0, sizeof *s);
    s->dir = xstrdup(dir);
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT && allow_missing) return SD_OK;
        int rc = sd_error(SD_ERR_IO, "%s %s: cannot open the folder: %s", what, dir, strerror(errno));
        image_set_free(s);
        return rc;
    }
    char **names = NULL;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || str_ends_with_nocase(e->d_name, ".txt")) continue;
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) || !S_ISREG(st.st_mode)) continue;   /* sub-folders are not data */
        names = realloc(names, sizeof *names * (n + 1));
        SD_CHECK(names, "out of memory");
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof *names, cmp_str);   /* file order must not depend on the file system */
    int rc = SD_OK;
    s->img = calloc((size_t)(n ? n : 1), sizeof *s->img);
    for (int i = 0; i < n && !rc; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        image_t img;
        rc = image_load(&img, path);   /* "<path>: cannot read image (reason)" */
        if (rc) break;
        const int iw = img.w, ih = img.h;
        image_free(&img);
        char *caption = read_caption(path, &rc);
        if (rc) break;
        char where[PATH_MAX + 32];   /* the folder's prompt was checked by its flag already */
        snprintf(where, sizeof where, "caption file of %s", path);
        const char *text = caption ? caption : default_prompt;
        if (!text) rc = sd_error(SD_ERR_ARG, "%s: %s has no caption file and no prompt was given", what, path);
        int idx = rc ? 0 : prompt_table_add(pt, tok, text, where);
        free(caption);
        if (idx < 0) rc = idx;
        if (rc) break;
        train_image_t *im = &s->img[s->n++];
        im->path = xstrdup(path);
        im->prompt = idx;
        im->crop_x = im->crop_y = 0.5f;
        im->orig_w = iw, im->orig_h = ih;
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (!rc && !s->n && !allow_empty)
        rc = sd_error(SD_ERR_ARG, "%s %s: the folder holds no images (PNG or JPEG)", what, dir);
    if (rc) image_set_free(s);
    return rc;
}

/* Splits `line` (newline removed) at tabs into at most `max` fields; returns the count. */
static int split_tabs(char *line, char **f, int max) {
    int n = 0;
    f[n++] = line;
    for (char *c = line; *c && n < max; c++)
        if (*c == '\t') *c = 0, f[n++] = c + 1;
    return n;
}

int image_set_from_tsv(image_set_t *s, const char *tsv, const char *image_root, prompt_table_t *pt,
                       const clip_tokenizer_t *tok) {
    memset(s, 0, sizeof *s);
    s->dir = xstrdup(tsv);
    FILE *f = fopen(tsv, "r");
    if (!f) {
        int rc = sd_error(SD_ERR_IO, "--data %s: cannot open: %s", tsv, strerror(errno));
        image_set_free(s);
        return rc;
    }
    outputs_note_input_fd(fileno(f), tsv);
    char root[PATH_MAX];
    if (image_root) snprintf(root, sizeof root, "%s", image_root);
    else { /* the TSV's folder */
        snprintf(root, sizeof root, "%s", tsv);
        char *slash = strrchr(root, '/');
        if (slash) *slash = 0;
        else snprintf(root, sizeof root, ".");
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = SD_OK, lineno = 0, cap_img = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len || line[0] == '#') continue;
        char *fld[4];
        const int nf = split_tabs(line, fld, 4);
        if (lineno == 1 && (!strcmp(fld[0], "path") || !strcmp(fld[0], "file") || !strcmp(fld[0], "image")))
            continue;   /* a header */
        if (nf < 2 || nf > 3 || !fld[0][0] || !fld[1][0]) {
            rc = sd_error(SD_ERR_FORMAT, "--data %s:%d: expected 'path<TAB>caption[<TAB>split]'", tsv, lineno);
            break;
        }
        if (nf == 3 && fld[2][0] && strcmp(fld[2], "train")) continue;   /* held out */
        char path[2 * PATH_MAX];
        if (fld[0][0] == '/') snprintf(path, sizeof path, "%s", fld[0]);
        else snprintf(path, sizeof path, "%s/%s", root, fld[0]);
        image_t img;
        rc = image_load(&img, path);   /* decoded once: a bad file is reported before anything is written */
        if (rc) break;
        const int iw = img.w, ih = img.h;
        image_free(&img);
        char where[PATH_MAX + 32];
        snprintf(where, sizeof where, "%.*s:%d", PATH_MAX, tsv, lineno);
        const int idx = prompt_table_add(pt, tok, fld[1], where);
        if (idx < 0) {
            rc = idx;
            break;
        }
        if (s->n == cap_img) {
            cap_img = cap_img ? 2 * cap_img : 256;
            s->img = realloc(s->img, sizeof *s->img * (size_t)cap_img);
            SD_CHECK(s->img, "out of memory");
        }
        train_image_t *im = &s->img[s->n++];
        memset(im, 0, sizeof *im);
        im->path = xstrdup(path);
        im->prompt = idx;
        im->crop_x = im->crop_y = 0.5f;
        im->orig_w = iw, im->orig_h = ih;
    }
    free(line);
    fclose(f);
    if (!rc && !s->n) rc = sd_error(SD_ERR_ARG, "--data %s: no training rows (split 'train' or none)", tsv);
    if (rc) image_set_free(s);
    return rc;
}

void image_set_draw_crops(image_set_t *s, uint64_t seed) {
    rng_t r;
    rng_init(&r, seed ^ CROP_SALT);
    for (int i = 0; i < s->n; i++) {
        s->img[i].crop_x = (float)rng_uniform(&r);
        s->img[i].crop_y = (float)rng_uniform(&r);
    }
}

/* ---- latents ---- */

size_t train_latent_floats(const pipeline_t *p, int res) {
    const size_t hw = (size_t)(res / p->scale_factor);
    return (size_t)p->latent_channels * hw * hw;
}

int train_image_posterior(pipeline_t *p, const image_t *img, int res, float *out) {
    const size_t n = train_latent_floats(p, res);
    int rc = SD_OK;
    if (p->has_vae) {
        float *x = malloc(sizeof(float) * 3 * res * res);
        if (x) vae_image_to_tensor(x, img->rgb, res, res, 3);
        rc = x ? vae_encode(&p->vae, out, out + n, x, 1, res, res) : sd_nomem("training image", sizeof(float) * 3 * res * res);
        free(x);
    } else if (p->latent_channels == 3) {
        vae_image_to_tensor(out, img->rgb, res, res, 3);
        memset(out + n, 0, sizeof(float) * n);
    } else {
        rc = sd_error(SD_ERR_FORMAT, "a model without a VAE must work on 3 channels, not %d", p->latent_channels);
    }
    return rc;
}

int train_image_dist(pipeline_t *p, train_image_t *im, int flip, int res, int center, const float **dist) {
    flip = flip ? 1 : 0;
    if (im->dist[flip]) {
        *dist = im->dist[flip];
        return SD_OK;
    }
    image_t src, img;
    int rc = image_load(&src, im->path);
    if (rc) return rc;
    rc = image_resize_crop(&img, &src, res, center, im->crop_x, im->crop_y);
    image_free(&src);
    if (rc) return rc;
    if (flip)
        for (int y = 0; y < res; y++) {
            uint8_t *row = img.rgb + (size_t)y * res * 3;
            for (int x = 0; x < res / 2; x++)
                for (int k = 0; k < 3; k++) {
                    uint8_t t = row[3 * x + k];
                    row[3 * x + k] = row[3 * (res - 1 - x) + k];
                    row[3 * (res - 1 - x) + k] = t;
                }
        }
    const size_t n = train_latent_floats(p, res);
    float *out = malloc(sizeof(float) * 2 * n);
    rc = out ? train_image_posterior(p, &img, res, out) : sd_nomem("training image latents", sizeof(float) * 2 * n);
    image_free(&img);
    if (rc) {
        free(out);
        return rc;
    }
    im->dist[flip] = out;
    *dist = out;
    return SD_OK;
}

void train_image_time_ids(float out[6], const train_image_t *im, int flip, int res, int center) {
    int rw, rh, x0, y0;
    image_crop_box(im->orig_w, im->orig_h, res, center, im->crop_x, im->crop_y, &rw, &rh, &x0, &y0);
    const int left = flip ? rw - res - x0 : x0;
    out[0] = (float)im->orig_h, out[1] = (float)im->orig_w;
    out[2] = (float)y0, out[3] = (float)left;
    out[4] = out[5] = (float)res;
}

void train_composite_time_ids(float out[6], int res) {
    out[0] = out[1] = (float)res;
    out[2] = out[3] = 0.0f;
    out[4] = out[5] = (float)res;
}

void train_sample_latent(const pipeline_t *p, float *x0, const float *dist, const float *noise, size_t n) {
    if (p->has_vae) vae_sample_latents(x0, dist, dist + n, noise, n, &p->vae.cfg);
    else memcpy(x0, dist, sizeof(float) * n);
}

/* ---- class images ---- */

typedef struct {
    progress_t *bar;
    long base;
} class_progress_t;

static void on_class_step(void *vctx, int step, int num_steps, float t, const float *latents) {
    (void)num_steps, (void)t, (void)latents;
    class_progress_t *c = vctx;
    progress_update(c->bar, c->base + step, NULL);
}

int class_images_generate(pipeline_t *p, const char *dir, const char *prompt, int have, int want, int res,
                          const class_gen_t *g, uint64_t seed) {
    if (have >= want) return SD_OK;
    const int missing = want - have, me = dist_rank(), N = dist_size(), steps = g->steps;
    /* euler_a draws its per-step noise for the whole batch from the first image's seed: batched,
     * an image would depend on its neighbours */
    const int B = g->sampler == SAMPLER_EULER_ANCESTRAL || g->batch < 1 ? 1 : g->batch;
    int rc = SD_OK;
    if (mkdir(dir, 0777) && errno != EEXIST)
        rc = sd_error(SD_ERR_IO, "--class-dir %s: cannot create the folder: %s", dir, strerror(errno));
    /* The numbers to fill: the first `missing` free class-NNNNN.png (kept files from an earlier
     * run are reused), listed by every rank before any rank writes. Image k always has seed + k,
     * and pipeline_txt2img seeds image i of a batch with its first seed + i, so a batch is a run
     * of consecutive numbers (at most B long). Batch b goes to rank b % N: the files depend
     * neither on the number of ranks nor on the batch size. */
    int *todo = sd_xmalloc(sizeof(int) * (size_t)missing), *first = sd_xmalloc(sizeof(int) * (size_t)(missing + 1));
    for (int k = 0, n = 0; n < missing && !rc; k++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/class-%05d.png", dir, k);
        struct stat st;
        if (stat(path, &st)) todo[n++] = k;
    }
    if ((rc = dist_agree(rc))) {
        free(todo), free(first);
        return rc;
    }
    int nb = 0;   /* batch b is todo[first[b] .. first[b + 1] - 1] */
    for (int j = 0; j < missing; nb++) {
        first[nb] = j++;
        while (j < missing && j - first[nb] < B && todo[j] == todo[j - 1] + 1) j++;
    }
    first[nb] = missing;
    const int mine = nb / N + (me < nb % N);
    if (me == 0)
        fprintf(stderr, "generating %d class image%s in %s with \"%s\" (%s, %d steps, %d a batch)%s\n", missing,
                missing == 1 ? "" : "s", dir, prompt, sampler_kind_name(g->sampler), steps, B,
                N > 1 ? " (split over the MPI ranks)" : "");
    int C, h, w;
    pipeline_latent_shape(p, res, res, &C, &h, &w);
    const size_t per_image = (size_t)C * h * w;
    float *lat = malloc(sizeof(float) * B * per_image);
    uint8_t **rgb = calloc((size_t)B, sizeof *rgb);
    if (!lat || !rgb) rc = sd_nomem("class image latents", sizeof(float) * B * per_image);   /* agreed on below */
    progress_t bar;
    class_progress_t cp = {&bar, 0};
    if (me == 0) progress_start(&bar, "class images", (long)mine * steps, "step");
    int made = 0;
    for (int b = me; b < nb && !rc; b += N) {
        const int k0 = todo[first[b]], n = first[b + 1] - first[b];
        txt2img_opts_t o = {.prompt = prompt, .width = res, .height = res, .steps = steps, .cfg = g->cfg,
                            .sampler = g->sampler, .seed = seed + (uint64_t)k0, .batch = n,
                            .progress = me == 0 ? on_class_step : NULL, .progress_ctx = &cp};
        cp.base = (long)made * steps;
        rc = pipeline_txt2img(p, &o, NULL, lat);
        if (!rc) rc = pipeline_decode(p, lat, n, h, w, rgb);
        for (int i = 0; i < n && !rc; i++) {
            const int k = k0 + i;
            char path[PATH_MAX], params[2048];
            snprintf(path, sizeof path, "%s/class-%05d.png", dir, k);
            snprintf(params, sizeof params, "%s\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, "
                     "Version: svdiff %s (class image)", prompt, steps, sampler_kind_name(g->sampler), g->cfg,
                     (unsigned long long)(seed + k), res, res, SVDIFF_VERSION);
            const char *keys[1] = {"parameters"}, *vals[1] = {params};
            image_t img = {.w = res, .h = res, .rgb = rgb[i]};
            rc = image_save_png(&img, path, keys, vals, 1);
        }
        for (int i = 0; i < n; i++) free(rgb[i]), rgb[i] = NULL;
        made++;
    }
    if (!rc && me == 0) progress_finish(&bar);
    free(lat), free(rgb), free(todo), free(first);
    return dist_agree(rc);   /* every file is there before any rank scans the folder */
}

/* ---- epoch order ---- */

#define ORDER_SALT 0xbb67ae8584caa73bull

void data_order_init(data_order_t *o, int n, uint64_t seed) {
    memset(o, 0, sizeof *o);
    o->n = n;
    o->perm = sd_xmalloc(sizeof(int) * (size_t)(n ? n : 1));
    o->pos = n;   /* the first call begins epoch 0 */
    rng_init(&o->rng, seed ^ ORDER_SALT);
}

void data_order_free(data_order_t *o) {
    free(o->perm);
    memset(o, 0, sizeof *o);
}

int data_order_next(data_order_t *o) {
    if (o->pos >= o->n) {
        for (int i = 0; i < o->n; i++) o->perm[i] = i;
        for (int i = o->n - 1; i > 0; i--) {
            int j = rng_randint(&o->rng, i + 1), t = o->perm[i];
            o->perm[i] = o->perm[j], o->perm[j] = t;
        }
        o->pos = 0;
        o->epoch++;
    }
    return o->perm[o->pos++];
}
