/* Typed reading of JSON config objects (diffusers' and transformers' config.json, the scheduler
 * config, ...), one set of getters for every config reader.
 *
 * Every getter takes the object, the key and `what`, the file or component that errors name
 * ("unet config", "te/config.json"). A key that is absent or JSON null (diffusers writes None
 * for "use the default") takes the default `dflt`; the _req forms refuse it instead. A value of
 * the wrong type is SD_ERR_FORMAT with a one-line message:
 *     <what>: "<key>" must be an integer          (missing: <what>: missing key "<key>")
 * Integers are whole numbers within +-JSON_INT_MAX: no config count is larger, and the limit
 * keeps products of sizes in range and the cast to int defined (JSON's 1e12 is a double).
 * Floats must be finite (JSON's 1e39 parses as Inf). */
#ifndef SVDIFF_BASE_JSON_H
#define SVDIFF_BASE_JSON_H

#include <cJSON.h>

#define JSON_INT_MAX 1000000000

/* The value at key, or NULL when the key is absent or null (obj may be NULL). */
const cJSON *json_item(const cJSON *obj, const char *key);

int json_int(const cJSON *obj, const char *key, int dflt, int *out, const char *what);
int json_int_req(const cJSON *obj, const char *key, int *out, const char *what);
/* An integer in [lo, hi]: "<what>: "<key>" must be an integer in [lo, hi]". */
int json_int_range(const cJSON *obj, const char *key, int dflt, int lo, int hi, int *out, const char *what);
int json_float(const cJSON *obj, const char *key, float dflt, float *out, const char *what);
int json_float_req(const cJSON *obj, const char *key, float *out, const char *what);
int json_double(const cJSON *obj, const char *key, double dflt, double *out, const char *what);
int json_double_req(const cJSON *obj, const char *key, double *out, const char *what);
int json_bool(const cJSON *obj, const char *key, int dflt, int *out, const char *what);
int json_bool_req(const cJSON *obj, const char *key, int *out, const char *what);
/* *out points into obj (dflt may be NULL). */
int json_str(const cJSON *obj, const char *key, const char *dflt, const char **out, const char *what);
int json_str_req(const cJSON *obj, const char *key, const char **out, const char *what);

/* An integer or a list of exactly n integers (one integer applies to all n); absent: dflt
 * everywhere. diffusers' per-block settings (layers_per_block, attention heads, ...). */
int json_int_list(const cJSON *obj, const char *key, int dflt, int *out, int n, const char *what);
/* A required list of at most max integers (a single integer is a list of one); *n entries. */
int json_int_array(const cJSON *obj, const char *key, int *out, int max, int *n, const char *what);
/* A required list of at most max strings (pointing into obj); *n entries. */
int json_str_array(const cJSON *obj, const char *key, const char **out, int max, int *n, const char *what);

/* Keys of model variants this code does not build. json_require_unset: absent, null or false.
 * json_require_false: absent, null, false or a list of false. json_require_str: absent, null
 * or the string `want`. Otherwise "<what>: "<key>" ... is not supported". */
int json_require_unset(const cJSON *obj, const char *key, const char *what);
int json_require_false(const cJSON *obj, const char *key, const char *what);
int json_require_str(const cJSON *obj, const char *key, const char *want, const char *what);

#endif
