/* CLI number parsing (see args.h). */
#include "cli/args.h"

#include <errno.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "ops/gemm.h"
#include "shifts/shifts.h"
#include <stddef.h>

int cli_parse_int(const char *verb, const char *flag, const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "svdiff %s: %s needs an integer in [%d, %d], got '%s'\n", verb, flag, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *verb, const char *flag, const char *s, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        if (lo <= -FLT_MAX && hi >= FLT_MAX)
            fprintf(stderr, "svdiff %s: %s needs a finite number, got '%s'\n", verb, flag, s);
        else
            fprintf(stderr, "svdiff %s: %s needs a number in [%g, %g], got '%s'\n", verb, flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_add_file_spec(const char *verb, const char *flag, const char *arg, pipeline_shift_t *list,
                      char (*paths)[4096], int max, int *n) {
    if (*n == max) {
        fprintf(stderr, "svdiff %s: at most %d %s\n", verb, max, flag);
        return -1;
    }
    if (shift_spec_parse(arg, paths[*n], sizeof paths[0], &list[*n].scale)) {
        fprintf(stderr, "svdiff %s: %s %s: %s\n", verb, flag, arg, sd_last_error());
        return -1;
    }
    list[*n].path = paths[*n];
    (*n)++;
    return 0;
}

int cli_set_compute_dtype(const char *verb, const char *arg) {
    sd_compute_t dt;
    if (sd_parse_compute_dtype(arg, &dt)) {
        fprintf(stderr, "svdiff %s: --compute-dtype must be fp32 or bf16, got '%s'\n", verb, arg);
        return -1;
    }
    sd_set_compute_dtype(dt);
    return 0;
}

const char *cli_svd_cache_dir(const char *flag, char *buf, size_t cap) {
    if (flag && !strcmp(flag, "none")) return NULL;
    if (!flag) svd_cache_default_dir(buf, cap);
    else snprintf(buf, cap, "%s", flag);
    return buf;
}

/* ---- shared options ---- */

#define C(field) offsetof(cli_common_t, field)
static const char *const prediction_choices[] = {"epsilon", "v_prediction", NULL};
static const struct {
    unsigned bit;
    setting_t s;
} common_tab[] = {
    {.bit = CLI_MODEL, .s = {.name = "model", .type = SETTING_STR, .offset = C(model), .flag = "model", .aliases = "pretrained-model-name-or-path", .arg = "PATH", .help = "diffusers model folder or single-file .safetensors or .ckpt checkpoint"}},
    {.bit = CLI_TOKENIZER, .s = {.name = "tokenizer", .type = SETTING_STR, .offset = C(tokenizer), .flag = "tokenizer", .arg = "DIR", .help = "CLIP tokenizer folder (vocab.json, merges.txt); needed for single files"}},
    {.bit = CLI_MODEL_OPTS, .s = {.name = "prediction_type", .type = SETTING_STR, .offset = C(mo.prediction_type), .flag = "prediction-type", .arg = "T", .help = "epsilon or v_prediction: what the UNet predicts, over what the model\n"
                      "says (single files: NAME.yaml beside it, metadata, else a guess that\n"
                      "`svdiff info` explains; SD 2.x 768 models are v_prediction)", .choices = prediction_choices}},
    {.bit = CLI_MODEL_OPTS, .s = {.name = "scheduler_config", .type = SETTING_STR, .offset = C(mo.scheduler_config), .flag = "scheduler-config", .arg = "FILE", .help = "a diffusers scheduler_config.json replacing the model's (its\n"
                      "prediction_type counts unless --prediction-type is given)"}},
    {.bit = CLI_SEED, .s = {.name = "seed", .type = SETTING_U64, .offset = C(seed), .flag = "seed", .arg = "S", .help = "seed of the random draws"}},
    {.bit = CLI_THREADS, .s = {.name = "threads", .type = SETTING_INT, .offset = C(threads), .flag = "threads", .arg = "N", .help = "CPU threads (default: all cores); results are reproducible per count", .lo = 1, .hi = 1024}},
    {.bit = CLI_COMPUTE, .s = {.name = "compute_dtype", .type = SETTING_STR, .offset = C(compute_dtype), .flag = "compute-dtype", .arg = "fp32|bf16", .help = "precision of the large matrix products: fp32 (default, exact) or bf16\n"
                   "(bfloat16 inputs, fp32 accumulation, on AMX / avx512_bf16 CPUs: faster,\n"
                   "about 1e-2 relative error per product; other CPUs stay fp32); default\n"
                   "from env SVDIFF_COMPUTE"}},
    {.bit = CLI_FORCE, .s = {.name = "force", .type = SETTING_BOOL, .offset = C(force), .flag = "force", .help = "overwrite or accept what a run would otherwise refuse (see above)"}},
    {.bit = CLI_QUIET, .s = {.name = "quiet", .type = SETTING_BOOL, .offset = C(quiet), .flag = "quiet", .help = "no progress bar"}},
    {.bit = CLI_OUTPUT, .s = {.name = "output", .type = SETTING_STR, .offset = C(output), .flag = "output", .aliases = "output-dir", .arg = "PATH", .help = "the output named in the usage line above", .short_flag = 'o'}},

};
#define N_COMMON ((int)(sizeof common_tab / sizeof common_tab[0]))
enum { CODE_COMMON = 0x7200, CODE_TABLE = 0x7400 };   /* table entry i: CODE_TABLE + 2 i (+1: its neg flag) */

static void add_opt(cli_parser_t *ps, int *n, const char *name, int has_arg, int code) {
    SD_CHECK(*n < CLI_MAX_OPTIONS - 1, "%s: too many options", ps->verb);
    ps->opts[(*n)++] = (struct option){name, has_arg, 0, code};
    ps->opts[*n] = (struct option){0, 0, 0, 0};
}

/* The entry's flag, aliases (split in place of a copy: option names must outlive the parser, so
 * aliases are kept in a static pool) and neg flag. */
static char alias_pool[4096];
static size_t alias_used;
static void add_setting(cli_parser_t *ps, int *n, const setting_t *s, int code) {
    const int has_arg = s->type == SETTING_BOOL ? no_argument : required_argument;
    if (s->flag) add_opt(ps, n, s->flag, has_arg, code);
    for (const char *p = s->aliases; p && *p;) {
        const size_t len = strcspn(p, " ");
        SD_CHECK(alias_used + len + 1 <= sizeof alias_pool, "alias pool full");
        char *name = memcpy(alias_pool + alias_used, p, len);
        name[len] = 0;
        alias_used += len + 1;
        add_opt(ps, n, name, has_arg, code);
        p += len;
        while (*p == ' ') p++;
    }
    if (s->neg) add_opt(ps, n, s->neg, no_argument, code + 1);
}

static int count_opts(const cli_parser_t *ps) {
    int n = 0;
    while (ps->opts[n].name) n++;
    return n;
}

void cli_parser_init(cli_parser_t *ps, const char *verb, const struct option *verb_opts, unsigned common,
                     cli_common_t *cm) {
    memset(ps, 0, offsetof(cli_parser_t, opts));
    ps->verb = verb, ps->common = common, ps->cm = cm;
    alias_used = 0;
    int n = 0;
    ps->opts[0] = (struct option){0, 0, 0, 0};
    for (int i = 0; verb_opts && verb_opts[i].name; i++) add_opt(ps, &n, verb_opts[i].name, verb_opts[i].has_arg, verb_opts[i].val);
    for (int i = 0; i < N_COMMON; i++)
        if (common & common_tab[i].bit) add_setting(ps, &n, &common_tab[i].s, CODE_COMMON + i);
    add_opt(ps, &n, "help", no_argument, 'h');
    snprintf(ps->shortopts, sizeof ps->shortopts, "%sh", common & CLI_OUTPUT ? "o:" : "");
    optind = 1;
}

/* Test hook (tests/cli_help.cmake): SVDIFF_TEST_LIST_OPTIONS=1 prints every long option the verb
 * takes, one a line, and ends the process, so a test can check that --help names each of them. */
static void list_options(const cli_parser_t *ps) {
    const char *e = getenv("SVDIFF_TEST_LIST_OPTIONS");
    if (!e || strcmp(e, "1")) return;
    for (int i = 0; ps->opts[i].name; i++) printf("--%s\n", ps->opts[i].name);
    exit(0);
}

void cli_parser_settings(cli_parser_t *ps, const setting_t *tab, size_t stride, int n, void *base,
                         const unsigned char *use, unsigned char *given) {
    ps->tab = tab, ps->stride = stride, ps->n_tab = n, ps->tab_base = base, ps->given = given;
    int k = count_opts(ps);
    for (int i = 0; i < n; i++)
        if (!use || use[i]) add_setting(ps, &k, (const setting_t *)((const char *)tab + (size_t)i * stride), CODE_TABLE + 2 * i);
}

static int common_option(cli_parser_t *ps, int i, const char *arg) {
    const setting_t *s = &common_tab[i].s;
    cli_common_t *cm = ps->cm;
    if (s->choices) {   /* --prediction-type: a string the model options take, one of the choices */
        int ok = 0;
        for (int k = 0; s->choices[k]; k++) ok |= !strcmp(arg, s->choices[k]);
        if (!ok) {
            fprintf(stderr, "svdiff %s: --%s must be epsilon or v_prediction, got '%s'\n", ps->verb, s->flag, arg);
            return CLI_BAD;
        }
    }
    if (common_tab[i].bit == CLI_COMPUTE && cli_set_compute_dtype(ps->verb, arg)) return CLI_BAD;
    if (setting_parse(s, cm, arg ? arg : "", 0)) {
        fprintf(stderr, "svdiff %s: %s\n", ps->verb, sd_last_error());
        return CLI_BAD;
    }
    cm->given |= common_tab[i].bit;
    if (common_tab[i].bit == CLI_TOKENIZER) cm->mo.tokenizer_dir = cm->tokenizer;
    return 0;
}

int cli_getopt(cli_parser_t *ps, int argc, char **argv) {
    list_options(ps);
    for (;;) {
        const int c = getopt_long(argc, argv, ps->shortopts, ps->opts, NULL);
        if (c == -1) {
            if (optind < argc && !ps->operands) {
                fprintf(stderr, "svdiff %s: unexpected argument '%s'\n", ps->verb, argv[optind]);
                return CLI_BAD;
            }
            return -1;
        }
        if (c == 'o' && (ps->common & CLI_OUTPUT)) {
            for (int i = 0; i < N_COMMON; i++)
                if (common_tab[i].bit == CLI_OUTPUT && common_option(ps, i, optarg)) return CLI_BAD;
            continue;
        }
        if (c >= CODE_COMMON && c < CODE_COMMON + N_COMMON) {
            if (common_option(ps, c - CODE_COMMON, optarg)) return CLI_BAD;
            continue;
        }
        if (ps->tab && c >= CODE_TABLE && c < CODE_TABLE + 2 * ps->n_tab) {
            const int i = (c - CODE_TABLE) / 2;
            const setting_t *s = (const setting_t *)((const char *)ps->tab + (size_t)i * ps->stride);
            if (setting_parse(s, ps->tab_base, optarg ? optarg : "", (c - CODE_TABLE) & 1)) {
                fprintf(stderr, "svdiff %s: %s\n", ps->verb, sd_last_error());
                return CLI_BAD;
            }
            if (ps->given) ps->given[i] = 1;
            continue;
        }
        return c;
    }
}

void cli_common_help(FILE *f, unsigned common, const char *seed_default) {
    for (int i = 0; i < N_COMMON; i++)
        if (common & common_tab[i].bit)
            setting_help(f, &common_tab[i].s, common_tab[i].bit == CLI_SEED ? seed_default : NULL);
}
