/* Number parsing for CLI flags, shared by the verbs: the whole string must be a number in
 * [lo, hi] (NaN refused); otherwise one line "svdiff <verb>: <flag> needs ..." on stderr and
 * -1 (the caller exits with 2, a usage error). */
#ifndef SVDIFF_CLI_ARGS_H
#define SVDIFF_CLI_ARGS_H

int cli_parse_int(const char *verb, const char *flag, const char *s, int lo, int hi, int *out);
int cli_parse_float(const char *verb, const char *flag, const char *s, float lo, float hi, float *out);

/* `--shifts / --delta / --lora PATH[:SCALE]`, repeatable: appends the parsed spec to list[*n]
 * (its path stored in paths[*n]); -1 with one line on stderr when the list is full (max) or the
 * spec is bad. */
#include "pipeline/pipeline.h"
/* `--compute-dtype fp32|bf16`: sets the process's compute dtype (ops/gemm.h) at once; -1 with one
 * line on stderr for any other value. */
int cli_set_compute_dtype(const char *verb, const char *arg);
int cli_add_file_spec(const char *verb, const char *flag, const char *arg, pipeline_shift_t *list,
                      char (*paths)[4096], int max, int *n);

#include <getopt.h>
#include "io/model.h"

/* The folder of the SVD cache from a verb's `--svd-cache` value: NULL (flag absent) gives the default
 * folder ($SVDIFF_CACHE_DIR, else ~/.cache/svdiff), "none" gives NULL (no cache; never a folder named
 * "none"), anything else that folder. The result is buf or NULL. */
const char *cli_svd_cache_dir(const char *flag, char *buf, size_t cap);

/* ---- The options every verb shares, parsed here and spelled the same everywhere ----
 *   --model PATH (also --pretrained-model-name-or-path), --tokenizer DIR,
 *   --prediction-type epsilon|v_prediction and --scheduler-config FILE (io/model.h applies them),
 *   --seed S, --threads N, --quiet, --force, -o/--output PATH (also --output-dir),
 *   --compute-dtype fp32|bf16 (applied at once).
 * A verb names the ones it takes (CLI_* bits), lists only its own in its getopt table, and loops on
 * cli_getopt, which handles the shared ones (and a settings table, base/setting.h) itself. */
#include <stdint.h>
#include "base/setting.h"

typedef struct {
    const char *model, *tokenizer, *output;
    uint64_t seed;                 /* the verb's default before cli_parser_init */
    int threads, quiet, force;     /* threads 0: all cores */
    const char *compute_dtype;     /* as given (already applied), NULL: the default */
    model_open_options_t mo;       /* --prediction-type, --scheduler-config; tokenizer_dir = tokenizer */
    unsigned given;                /* CLI_* bits of the options given */
} cli_common_t;

enum {
    CLI_MODEL = 1 << 0, CLI_TOKENIZER = 1 << 1, CLI_MODEL_OPTS = 1 << 2, CLI_SEED = 1 << 3, CLI_THREADS = 1 << 4,
    CLI_QUIET = 1 << 5, CLI_FORCE = 1 << 6, CLI_OUTPUT = 1 << 7, CLI_COMPUTE = 1 << 8,
};
#define CLI_ALL_COMMON 0x1ff
enum { CLI_BAD = -2 };   /* cli_getopt: a bad value (one line printed); the verb exits 2 */

#define CLI_MAX_OPTIONS 224
typedef struct {
    const char *verb;
    unsigned common;
    cli_common_t *cm;
    const setting_t *tab;   /* a settings table (entries `stride` bytes apart) into tab_base, or NULL */
    size_t stride;
    int n_tab;
    void *tab_base;
    unsigned char *given;   /* [n_tab]: 1 once the entry's flag was seen (may be NULL) */
    int operands;           /* the verb takes arguments after the options (set after init) */
    char shortopts[8];
    struct option opts[CLI_MAX_OPTIONS];
} cli_parser_t;

/* verb_opts: the verb's own options ({0} terminated; codes below 0x7000). Resets getopt. */
void cli_parser_init(cli_parser_t *ps, const char *verb, const struct option *verb_opts, unsigned common,
                     cli_common_t *cm);
/* Adds the flags of a settings table (parsed into base): the entries i with use[i] (use NULL: all). */
void cli_parser_settings(cli_parser_t *ps, const setting_t *tab, size_t stride, int n, void *base,
                         const unsigned char *use, unsigned char *given);
/* The next of the verb's own options (getopt_long's code, optarg set), 'h' for -h/--help, '?' for
 * an unknown option or a missing value (getopt said which), CLI_BAD for a bad value, -1 at the end
 * (an argument left over is an error here, CLI_BAD, unless ps->operands: then argv[optind...]). */
int cli_getopt(cli_parser_t *ps, int argc, char **argv);
/* The help lines of the shared options in `common` (seed_default: the verb's, shown as the default). */
void cli_common_help(FILE *f, unsigned common, const char *seed_default);

#endif
