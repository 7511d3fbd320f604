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

int cli_model_option(const char *verb, int c, const char *arg, model_open_options_t *o) {
    if (c == CLI_O_SCHEDULER_CONFIG) {
        o->scheduler_config = arg;
        return 1;
    }
    if (c != CLI_O_PREDICTION_TYPE) return 0;
    if (strcmp(arg, "epsilon") && strcmp(arg, "v_prediction")) {
        fprintf(stderr, "svdiff %s: --prediction-type must be epsilon or v_prediction, got '%s'\n", verb, arg);
        return -1;
    }
    o->prediction_type = arg;
    return 1;
}

const char *cli_svd_cache_dir(const char *flag, char *buf, size_t cap) {
    if (flag && !strcmp(flag, "none")) return NULL;
    if (!flag) svd_cache_default_dir(buf, cap);
    else snprintf(buf, cap, "%s", flag);
    return buf;
}
