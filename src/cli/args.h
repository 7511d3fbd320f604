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

/* `--prediction-type epsilon|v_prediction` and `--scheduler-config FILE`, spelled the same in
 * every verb that opens a model to sample or train: CLI_MODEL_OPTIONS goes into the verb's
 * getopt_long table, CLI_MODEL_HELP into its usage, and cli_model_option handles the two codes.
 * The model applies them (io/model.h: model_open_options_t). */
#include <getopt.h>
#include "io/model.h"
enum { CLI_O_PREDICTION_TYPE = 0x7100, CLI_O_SCHEDULER_CONFIG };
#define CLI_MODEL_OPTIONS                                                     \
    {"prediction-type", required_argument, 0, CLI_O_PREDICTION_TYPE},        \
    {"scheduler-config", required_argument, 0, CLI_O_SCHEDULER_CONFIG}
#define CLI_MODEL_HELP                                                                                      \
    "  --prediction-type T        epsilon or v_prediction: what the UNet predicts, over what the model\n"  \
    "                             says (single files: NAME.yaml beside it, metadata, else a guess that\n"  \
    "                             `svdiff info` explains; SD 2.x 768 models are v_prediction)\n"          \
    "  --scheduler-config FILE    a diffusers scheduler_config.json replacing the model's (its\n"         \
    "                             prediction_type counts unless --prediction-type is given)\n"
/* 1 when c is one of the two codes (arg stored in *o), 0 when not, -1 (one line on stderr) for a
 * bad --prediction-type value. */
int cli_model_option(const char *verb, int c, const char *arg, model_open_options_t *o);

/* The folder of the SVD cache from a verb's `--svd-cache` value: NULL (flag absent) gives the default
 * folder ($SVDIFF_CACHE_DIR, else ~/.cache/svdiff), "none" gives NULL (no cache; never a folder named
 * "none"), anything else that folder. The result is buf or NULL. */
const char *cli_svd_cache_dir(const char *flag, char *buf, size_t cap);

#endif
