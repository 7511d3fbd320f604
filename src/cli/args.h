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

#endif
