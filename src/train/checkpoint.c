/* Training checkpoints (see checkpoint.h): save, check against the current settings, restore. */
#include "train/checkpoint.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dist.h"
#include "base/error.h"
#include "io/outputs.h"
#include "io/safetensors.h"
#include "train/settings.h"
#include "weights/shift_name.h"

/* The settings and facts of the run as the table records them (train/settings.h). */
char *train_config_json(const trainer_t *t) {
    const train_facts_t facts = {t->model_hash, t->inst.n, t->cls.n, t->prompts.n};
    return train_settings_json(&t->cfg, &facts);
}

int checkpoint_save(const checkpoint_state_t *cs, const char *path) {
    st_writer_t *w = st_writer_new();
    char name[512], buf[64];
    int rc = SD_OK;
    for (int i = 0; i < cs->n_params && !rc; i++) {
        const train_param_t *p = &cs->params[i];
        const int64_t shape[1] = {p->n};
        rc = ckpt_param_key(name, sizeof name, CKPT_PARAM, p->name);
        if (!rc) rc = st_writer_add(w, name, ST_F32, 1, shape, p->value);
        if (!rc) rc = ckpt_param_key(name, sizeof name, CKPT_ADAM_M, p->name);
        if (!rc) rc = st_writer_add(w, name, ST_F32, 1, shape, p->m);
        if (!rc) rc = ckpt_param_key(name, sizeof name, CKPT_ADAM_V, p->name);
        if (!rc) rc = st_writer_add(w, name, ST_F32, 1, shape, p->v);
        if (!rc) rc = ckpt_param_key(name, sizeof name, CKPT_EMA, p->name);
        if (!rc && p->ema) rc = st_writer_add(w, name, ST_F32, 1, shape, p->ema);
    }
    const int64_t pshape[1] = {cs->order->n};
    if (!rc) rc = st_writer_add(w, "order/perm", ST_I32, 1, pshape, cs->order->perm);
    st_writer_meta(w, "format", CHECKPOINT_FORMAT);
    st_writer_meta(w, "config", cs->config);
#define META(key, fmt, val) snprintf(buf, sizeof buf, fmt, val), st_writer_meta(w, key, buf)
    META("step", "%d", cs->step);
    META("rng_counter", "%" PRIu64, cs->rng_counter);
    META("order_counter", "%" PRIu64, cs->order->rng.counter);
    META("order_pos", "%d", cs->order->pos);
    META("order_epoch", "%d", cs->order->epoch);
    META("loss_ema", "%a", cs->loss_ema);
    META("elapsed", "%a", cs->elapsed);
    META("threads", "%d", cs->threads);
#undef META
    st_writer_meta(w, "svdiff_version", SVDIFF_VERSION);
    if (!rc) rc = st_writer_save(w, path);
    st_writer_free(w);
    return rc;
}

/* Names the first setting whose value differs (or "" if none). */
static void first_difference(char *out, size_t cap, const char *saved, const char *now) {
    out[0] = 0;
    cJSON *a = cJSON_Parse(saved), *b = cJSON_Parse(now);
    if (!a || !b) {
        snprintf(out, cap, "the settings (unreadable in the checkpoint)");
    } else {
        for (cJSON *it = b->child; it && !out[0]; it = it->next) {
            cJSON *old = cJSON_GetObjectItemCaseSensitive(a, it->string);
            char *vb = cJSON_PrintUnformatted(it), *va = old ? cJSON_PrintUnformatted(old) : NULL;
            if (!va || strcmp(va, vb)) snprintf(out, cap, "%s (checkpoint: %s, now: %s)", it->string, va ? va : "absent", vb);
            free(va), free(vb);
        }
    }
    cJSON_Delete(a), cJSON_Delete(b);
}

/* Prefixes the current message with "--resume: " (once). */
static int resume_error(int rc) {
    if (!strncmp(sd_last_error(), "--resume", 8)) return rc;
    return sd_error_wrap(rc, "--resume");
}

int checkpoint_check(const char *path, const checkpoint_state_t *cs) {
    st_file_t f;
    int rc = st_open(&f, path);
    if (rc) return resume_error(rc);
    const char *format = st_meta(&f, "format"), *config = st_meta(&f, "config"), *threads = st_meta(&f, "threads");
    if (!format || strcmp(format, CHECKPOINT_FORMAT) || !config) {
        st_close(&f);
        return sd_error(SD_ERR_FORMAT, "--resume: %s is not an svdiff training checkpoint", path);
    }
    char diff[1024];
    first_difference(diff, sizeof diff, config, cs->config);
    if (diff[0] && !cs->force) rc = sd_error(SD_ERR_ARG, "--resume: %s was started with other settings: %s; "
                                                "use --force to resume anyway", path, diff);
    else if (diff[0]) fprintf(stderr, "warning: resuming with other settings (--force): %s\n", diff);
    char *tend = NULL;
    const long nthreads = threads ? strtol(threads, &tend, 10) : 0;
    if (!rc && threads && (tend == threads || *tend || nthreads < 1 || nthreads > 1 << 16))
        rc = sd_error(SD_ERR_FORMAT, "--resume: %s: checkpoint metadata 'threads' = '%s' is not a thread count", path,
                      threads);
    if (!rc && threads && nthreads != cs->threads)
        fprintf(stderr, "warning: the checkpoint was written with %s threads, this run uses %d: the result will not "
                "be bit-identical to an uninterrupted run\n", threads, cs->threads);
    st_close(&f);
    return rc;
}

static int meta_u64(const st_file_t *f, const char *key, uint64_t *out) {
    const char *s = st_meta(f, key);
    char *end;
    if (!s || !*s) return sd_error(SD_ERR_FORMAT, "%s: checkpoint metadata '%s' is missing", f->path, key);
    errno = 0;
    *out = strtoull(s, &end, 10);
    if (*end || s[0] == '-' || errno == ERANGE) return sd_error(SD_ERR_FORMAT, "%s: checkpoint metadata '%s' = '%s' is not a count", f->path, key, s);
    return SD_OK;
}

/* A number in [lo, hi] (so finite: "nan", "inf" and "1e999" are refused). */
static int meta_double(const st_file_t *f, const char *key, double lo, double hi, double *out) {
    const char *s = st_meta(f, key);
    char *end;
    if (!s || !*s) return sd_error(SD_ERR_FORMAT, "%s: checkpoint metadata '%s' is missing", f->path, key);
    *out = strtod(s, &end);
    if (*end || !(*out >= lo && *out <= hi))
        return sd_error(SD_ERR_FORMAT, "%s: checkpoint metadata '%s' = '%s' is not a number in [%g, %g]", f->path, key,
                        s, lo, hi);
    return SD_OK;
}

static int want_f32(const st_file_t *f, const char *name, int n, const st_tensor_t **out) {
    const st_tensor_t *x = st_find(f, name);
    if (!x) return sd_error(SD_ERR_FORMAT, "%s: tensor '%s' is missing (a checkpoint of another model or settings?)", f->path, name);
    if (x->dtype != ST_F32 || x->ndim != 1 || x->shape[0] != n)
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s' must be F32 [%d]", f->path, name, n);
    *out = x;
    return SD_OK;
}

int checkpoint_load(checkpoint_state_t *cs, const char *path) {
    st_file_t f;
    int rc = st_open(&f, path);
    if (rc) return resume_error(rc);
    const int np = cs->n_params;
    const int K = cs->has_ema ? 4 : 3;   /* param, adam_m, adam_v [, ema] */
    const st_tensor_t **src = calloc((size_t)K * (np ? np : 1), sizeof *src);
    char name[512];
    /* 1. check everything */
    for (int i = 0; i < np && !rc; i++) {
        const train_param_t *p = &cs->params[i];
        rc = ckpt_param_key(name, sizeof name, CKPT_PARAM, p->name);
        if (!rc) rc = want_f32(&f, name, p->n, &src[K * i]);
        if (!rc) rc = ckpt_param_key(name, sizeof name, CKPT_ADAM_M, p->name);
        if (!rc) rc = want_f32(&f, name, p->n, &src[K * i + 1]);
        if (!rc) rc = ckpt_param_key(name, sizeof name, CKPT_ADAM_V, p->name);
        if (!rc) rc = want_f32(&f, name, p->n, &src[K * i + 2]);
        if (!rc) rc = ckpt_param_key(name, sizeof name, CKPT_EMA, p->name);
        if (!rc && K == 4) rc = want_f32(&f, name, p->n, &src[K * i + 3]);
    }
    const int expected = K * np + 1;
    if (!rc && f.n_tensors != expected)
        rc = sd_error(SD_ERR_FORMAT, "%s: %d tensors, expected %d (a checkpoint of other settings?)", path, f.n_tensors,
                      expected);
    const st_tensor_t *perm = rc ? NULL : st_find(&f, "order/perm");
    if (!rc && (!perm || (perm->dtype != ST_I32 && perm->dtype != ST_I64) || perm->ndim != 1 ||
                perm->shape[0] != cs->order->n))
        rc = sd_error(SD_ERR_FORMAT, "%s: tensor 'order/perm' must be I32 [%d]", path, cs->order->n);
    int64_t *pv = sd_xcalloc((size_t)cs->order->n + 1, sizeof *pv);
    if (!rc) rc = st_read_i64(pv, perm);
    if (!rc) { /* a permutation of 0..n-1 */
        char *seen = sd_xcalloc((size_t)cs->order->n + 1, 1);
        for (int i = 0; i < cs->order->n && !rc; i++) {
            if (pv[i] < 0 || pv[i] >= cs->order->n || seen[pv[i]])
                rc = sd_error(SD_ERR_FORMAT, "%s: 'order/perm' is not a permutation", path);
            else seen[pv[i]] = 1;
        }
        free(seen);
    }
    uint64_t step = 0, rc_counter = 0, oc = 0, pos = 0, epoch = 0;
    double ema = 0, elapsed = 0;
    if (!rc) rc = meta_u64(&f, "step", &step);
    if (!rc) rc = meta_u64(&f, "rng_counter", &rc_counter);
    if (!rc) rc = meta_u64(&f, "order_counter", &oc);
    if (!rc) rc = meta_u64(&f, "order_pos", &pos);
    if (!rc) rc = meta_u64(&f, "order_epoch", &epoch);
    if (!rc) rc = meta_double(&f, "loss_ema", 0.0, 1e30, &ema);
    if (!rc) rc = meta_double(&f, "elapsed", 0.0, 1e10, &elapsed);   /* seconds: 300 years */
    if (!rc && (step > (uint64_t)cs->max_step || pos > (uint64_t)cs->order->n || epoch > INT32_MAX))
        rc = sd_error(SD_ERR_FORMAT, "%s: step %" PRIu64 " / epoch position %" PRIu64 " out of range for --steps %d",
                      path, step, pos, cs->max_step);
    /* values must be finite: a NaN would poison the rest of the run */
    for (int i = 0; i < K * np && !rc; i++) {
        float *tmp = sd_xmalloc(sizeof(float) * (size_t)(src[i]->numel ? src[i]->numel : 1));
        rc = st_read_f32(tmp, src[i]);
        for (int64_t k = 0; k < src[i]->numel && !rc; k++)
            if (!isfinite(tmp[k])) rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' holds non-finite values", path, src[i]->name);
        free(tmp);
    }
    /* 2. restore */
    if (!rc) {
        for (int i = 0; i < np; i++) {
            train_param_t *p = &cs->params[i];
            st_read_f32(p->value, src[K * i]);
            st_read_f32(p->m, src[K * i + 1]);
            st_read_f32(p->v, src[K * i + 2]);
            if (K == 4) st_read_f32(p->ema, src[K * i + 3]);
        }
        for (int i = 0; i < cs->order->n; i++) cs->order->perm[i] = (int)pv[i];
        cs->order->pos = (int)pos, cs->order->epoch = (int)epoch, cs->order->rng.counter = oc;
        cs->rng_counter = rc_counter;
        cs->step = (int)step, cs->loss_ema = ema, cs->elapsed = elapsed;
    } else {
        rc = resume_error(rc);
    }
    free(pv), free(src);
    st_close(&f);
    outputs_forget_input(path);   /* read: the run's next checkpoint replaces it */
    return rc;
}
