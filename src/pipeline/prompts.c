/* Prompts files and the image plan of a generate run (see prompts.h). */
#include "pipeline/prompts.h"

#include <cJSON.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "io/outputs.h"

static char *xstrdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = sd_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

void prompt_plan_free(prompt_plan_t *plan) {
    for (int j = 0; j < plan->n_jobs; j++) free(plan->jobs[j].prompt), free(plan->jobs[j].negative_prompt);
    free(plan->jobs), free(plan->images);
    memset(plan, 0, sizeof *plan);
}

/* Appends `job` to the plan's jobs; the plan takes over its strings. */
static void push_job(prompt_plan_t *plan, int *cap, const prompt_job_t *job) {
    if (plan->n_jobs == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        prompt_job_t *nj = realloc(plan->jobs, sizeof *nj * (size_t)*cap);
        SD_CHECK(nj, "out of memory for %d prompts", *cap);
        plan->jobs = nj;
    }
    plan->jobs[plan->n_jobs++] = *job;
}

/* The flat image list, job by job; jobs flagged in has_seed keep their seed, the others take
 * base_seed + the index of their first image. */
static void build_images(prompt_plan_t *plan, const unsigned char *has_seed, uint64_t base_seed) {
    int n = 0;
    for (int j = 0; j < plan->n_jobs; j++) n += plan->jobs[j].num_images;
    plan->images = sd_xmalloc(sizeof *plan->images * (size_t)n);
    plan->n_images = n;
    for (int j = 0, i = 0; j < plan->n_jobs; j++) {
        prompt_job_t *job = &plan->jobs[j];
        if (!has_seed[j]) job->seed = base_seed + (uint64_t)i;
        for (int k = 0; k < job->num_images; k++, i++)
            plan->images[i] = (prompt_image_t){.job = j, .k = k, .seed = job->seed + (uint64_t)k};
    }
}

int prompt_plan_single(prompt_plan_t *plan, const prompt_job_t *job) {
    memset(plan, 0, sizeof *plan);
    if (job->num_images < 1 || job->num_images > PROMPT_PLAN_MAX_IMAGES)
        return sd_error(SD_ERR_ARG, "%d images: need 1 to %d", job->num_images, PROMPT_PLAN_MAX_IMAGES);
    int cap = 0;
    prompt_job_t copy = *job;
    copy.prompt = xstrdup(job->prompt);
    copy.negative_prompt = xstrdup(job->negative_prompt);
    push_job(plan, &cap, &copy);
    const unsigned char has_seed = 1;
    build_images(plan, &has_seed, 0);
    return 0;
}

/* ---- one JSON line ---- */

enum { K_PROMPT, K_NEGATIVE, K_SEED, K_STEPS, K_CFG, K_ETA, K_WIDTH, K_HEIGHT, K_SAMPLER, K_NUM_IMAGES, K_COUNT };
static const char *const KEY_NAMES[K_COUNT] = {"prompt", "negative_prompt", "seed", "steps", "cfg",
                                               "eta", "width", "height", "sampler", "num_images"};

/* The value as the file wrote it, for messages (numbers too large for a double have no text). */
static void value_text(const cJSON *v, char *buf, size_t n) {
    if (cJSON_IsNumber(v) && !isfinite(v->valuedouble)) {
        snprintf(buf, n, "a number too large to represent");
        return;
    }
    char *s = cJSON_PrintUnformatted(v);
    snprintf(buf, n, "%.60s%s", s ? s : "?", s && strlen(s) > 60 ? "..." : "");
    free(s);
}

/* An integer key: a JSON number that is a whole number in [lo, hi]. */
static int json_int(const char *where, const char *key, const cJSON *v, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi) || v->valuedouble != floor(v->valuedouble)) {
        char got[96];
        value_text(v, got, sizeof got);
        return sd_error(SD_ERR_ARG, "%s: \"%s\" must be an integer in [%.17g, %.17g], got %s", where, key, lo, hi, got);
    }
    *out = v->valuedouble;
    return 0;
}

/* A float key: a finite JSON number in [lo, hi] (which lies within the float range). */
static int json_float(const char *where, const char *key, const cJSON *v, double lo, double hi, float *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        char got[96];
        value_text(v, got, sizeof got);
        if (lo <= -FLT_MAX && hi >= FLT_MAX)
            return sd_error(SD_ERR_ARG, "%s: \"%s\" must be a finite number, got %s", where, key, got);
        return sd_error(SD_ERR_ARG, "%s: \"%s\" must be a number in [%g, %g], got %s", where, key, lo, hi, got);
    }
    *out = (float)v->valuedouble;
    return 0;
}

static int json_string(const char *where, const char *key, const cJSON *v, const char **out) {
    if (!cJSON_IsString(v)) {
        char got[96];
        value_text(v, got, sizeof got);
        return sd_error(SD_ERR_ARG, "%s: \"%s\" must be a string, got %s", where, key, got);
    }
    *out = v->valuestring;
    return 0;
}

/* A seed: an integer JSON number up to 2^53 (beyond that a double no longer holds every
 * integer), or a string of decimal digits for the whole 64-bit range. */
static int json_seed(const char *where, const cJSON *v, uint64_t *out, int *has) {
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 10);
        if (s[0] < '0' || s[0] > '9' || *end || errno)
            return sd_error(SD_ERR_ARG, "%s: \"seed\" as a string must be decimal digits of a 64-bit integer, got \"%s\"",
                            where, s);
        *out = x, *has = 1;
        return 0;
    }
    double d;
    int rc = json_int(where, "seed", v, 0, 9007199254740992.0, &d);
    if (!rc) *out = (uint64_t)d, *has = 1;
    return rc;
}

/* Applies the JSON object of one line to *job (which holds the defaults). */
static int parse_json_line(const char *where, const char *text, size_t len, prompt_job_t *job, int *has_seed) {
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (o && end) {   /* only blanks may follow the object */
        while (end < text + len && (*end == ' ' || *end == '\t')) end++;
        if (end < text + len) {
            cJSON_Delete(o);
            return sd_error(SD_ERR_ARG, "%s: text after the JSON object at column %td", where, end - text + 1);
        }
    }
    if (!o)
        return sd_error(SD_ERR_ARG, "%s: not a valid JSON object (error at column %td); a JSON line holds one "
                        "object such as {\"prompt\": \"a cat\", \"seed\": 3}", where, end ? end - text + 1 : (ptrdiff_t)1);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return sd_error(SD_ERR_ARG, "%s: a line starting with '{' must be a JSON object", where);
    }
    const cJSON *vals[K_COUNT] = {0};
    int rc = 0;
    for (const cJSON *v = o->child; v && !rc; v = v->next) {
        int k = 0;
        while (k < K_COUNT && strcmp(v->string, KEY_NAMES[k])) k++;
        if (k == K_COUNT)
            rc = sd_error(SD_ERR_ARG, "%s: unknown key \"%s\" (known: prompt, negative_prompt, seed, steps, cfg, eta, "
                          "width, height, sampler, num_images)", where, v->string);
        else if (vals[k]) rc = sd_error(SD_ERR_ARG, "%s: key \"%s\" given twice", where, v->string);
        else vals[k] = v;
    }
    const char *prompt = NULL, *negative = job->negative_prompt, *sampler = NULL;
    double d;
    if (!rc && !vals[K_PROMPT]) rc = sd_error(SD_ERR_ARG, "%s: no \"prompt\" key", where);
    if (!rc) rc = json_string(where, "prompt", vals[K_PROMPT], &prompt);
    if (!rc && prompt[strspn(prompt, " \t\r\n")] == '\0') rc = sd_error(SD_ERR_ARG, "%s: \"prompt\" is empty", where);
    if (!rc && vals[K_NEGATIVE]) rc = json_string(where, "negative_prompt", vals[K_NEGATIVE], &negative);
    if (!rc && vals[K_SEED]) rc = json_seed(where, vals[K_SEED], &job->seed, has_seed);
    if (!rc && vals[K_STEPS] && !(rc = json_int(where, "steps", vals[K_STEPS], 1, 1000, &d))) job->steps = (int)d;
    if (!rc && vals[K_WIDTH] && !(rc = json_int(where, "width", vals[K_WIDTH], 8, 8192, &d))) job->width = (int)d;
    if (!rc && vals[K_HEIGHT] && !(rc = json_int(where, "height", vals[K_HEIGHT], 8, 8192, &d))) job->height = (int)d;
    if (!rc && vals[K_NUM_IMAGES] && !(rc = json_int(where, "num_images", vals[K_NUM_IMAGES], 1, 10000, &d)))
        job->num_images = (int)d;
    if (!rc && vals[K_CFG]) rc = json_float(where, "cfg", vals[K_CFG], -FLT_MAX, FLT_MAX, &job->cfg);
    if (!rc && vals[K_ETA]) rc = json_float(where, "eta", vals[K_ETA], 0, 1, &job->eta);
    if (!rc && vals[K_SAMPLER]) rc = json_string(where, "sampler", vals[K_SAMPLER], &sampler);
    if (!rc && sampler && (sampler_kind_parse(sampler, &job->sampler) || job->sampler == SAMPLER_DDIM_INVERSE))
        rc = sd_error(SD_ERR_ARG, "%s: unknown \"sampler\" \"%s\" (ddim, euler, euler_a, dpmpp_2m)", where, sampler);
    if (!rc) {
        job->prompt = xstrdup(prompt);
        job->negative_prompt = xstrdup(negative);
    }
    cJSON_Delete(o);
    return rc;
}

/* ---- the file ---- */

int prompt_plan_parse(prompt_plan_t *plan, FILE *f, const char *name, const prompt_job_t *defaults,
                      uint64_t base_seed) {
    memset(plan, 0, sizeof *plan);
    char *line = NULL;
    size_t line_cap = 0;
    int cap = 0, rc = 0;
    long total = 0;
    unsigned char *has_seed = NULL;
    for (int lineno = 1; !rc; lineno++) {
        errno = 0;
        ssize_t got = getline(&line, &line_cap, f);
        if (got < 0) {
            if (ferror(f)) rc = sd_error(SD_ERR_IO, "%s: cannot read: %s", name, strerror(errno ? errno : EIO));
            break;
        }
        char where[4200];
        snprintf(where, sizeof where, "%s:%d", name, lineno);
        if (lineno == INT_MAX) { rc = sd_error(SD_ERR_ARG, "%s: too many lines", where); break; }
        size_t len = (size_t)got;
        if (strlen(line) != len) { rc = sd_error(SD_ERR_ARG, "%s: holds a NUL byte (not a text file?)", where); break; }
        char *s = line;
        if (lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3, len -= 3;   /* UTF-8 BOM */
        while (len && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
        s[len] = '\0';
        while (*s == ' ' || *s == '\t') s++, len--;
        if (*s == '\0' || *s == '#') continue;
        prompt_job_t job = *defaults;
        job.line = lineno;
        int seeded = 0;
        if (*s == '{') {
            rc = parse_json_line(where, s, len, &job, &seeded);
            if (rc) break;
        } else {
            job.prompt = xstrdup(s);
            job.negative_prompt = xstrdup(defaults->negative_prompt);
        }
        total += job.num_images;
        if (total > PROMPT_PLAN_MAX_IMAGES) {
            rc = sd_error(SD_ERR_ARG, "%s: more than %d images in the file", where, PROMPT_PLAN_MAX_IMAGES);
            free(job.prompt), free(job.negative_prompt);
            break;
        }
        push_job(plan, &cap, &job);
        unsigned char *nh = realloc(has_seed, (size_t)plan->n_jobs);
        SD_CHECK(nh, "out of memory");
        has_seed = nh;
        has_seed[plan->n_jobs - 1] = (unsigned char)seeded;
    }
    free(line);
    if (!rc && plan->n_jobs == 0)
        rc = sd_error(SD_ERR_ARG, "%s: no prompt in the file (only blank or '#' comment lines)", name);
    if (!rc) build_images(plan, has_seed, base_seed);
    else prompt_plan_free(plan);
    free(has_seed);
    return rc;
}

int prompt_plan_read(prompt_plan_t *plan, const char *path, const prompt_job_t *defaults, uint64_t base_seed) {
    memset(plan, 0, sizeof *plan);
    FILE *f = fopen(path, "rb");
    if (!f) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    outputs_note_input_fd(fileno(f), path);
    int rc = prompt_plan_parse(plan, f, path, defaults, base_seed);
    fclose(f);
    return rc;
}
