/* Typed JSON config getters (see json.h). */
#include "base/json.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "base/error.h"

const cJSON *json_item(const cJSON *obj, const char *key) {
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

static int missing(const char *key, const char *what) {
    return sd_error(SD_ERR_FORMAT, "%s: missing key \"%s\"", what, key);
}

/* range first: (int) of a double past INT_MAX is undefined */
static int is_int(const cJSON *v) {
    return cJSON_IsNumber(v) && fabs(v->valuedouble) <= JSON_INT_MAX && v->valuedouble == floor(v->valuedouble);
}

static int as_int(const cJSON *v, const char *key, int *out, const char *what) {
    if (!is_int(v)) return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be an integer", what, key);
    *out = (int)v->valuedouble;
    return SD_OK;
}

int json_int(const cJSON *obj, const char *key, int dflt, int *out, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return *out = dflt, SD_OK;
    return as_int(v, key, out, what);
}

int json_int_req(const cJSON *obj, const char *key, int *out, const char *what) {
    const cJSON *v = json_item(obj, key);
    return v ? as_int(v, key, out, what) : missing(key, what);
}

int json_int_range(const cJSON *obj, const char *key, int dflt, int lo, int hi, int *out, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return *out = dflt, SD_OK;
    if (!is_int(v) || v->valuedouble < lo || v->valuedouble > hi)
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be an integer in [%d, %d]", what, key, lo, hi);
    *out = (int)v->valuedouble;
    return SD_OK;
}

static int as_double(const cJSON *v, double limit, const char *key, double *out, const char *what) {
    if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) <= limit))
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be a finite number", what, key);
    *out = v->valuedouble;
    return SD_OK;
}

int json_float(const cJSON *obj, const char *key, float dflt, float *out, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return *out = dflt, SD_OK;
    double d = 0;
    int rc = as_double(v, FLT_MAX, key, &d, what);
    if (!rc) *out = (float)d;
    return rc;
}

int json_float_req(const cJSON *obj, const char *key, float *out, const char *what) {
    return json_item(obj, key) ? json_float(obj, key, 0.0f, out, what) : missing(key, what);
}

int json_double(const cJSON *obj, const char *key, double dflt, double *out, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return *out = dflt, SD_OK;
    return as_double(v, DBL_MAX, key, out, what);
}

int json_double_req(const cJSON *obj, const char *key, double *out, const char *what) {
    const cJSON *v = json_item(obj, key);
    return v ? as_double(v, DBL_MAX, key, out, what) : missing(key, what);
}

int json_bool(const cJSON *obj, const char *key, int dflt, int *out, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return *out = dflt, SD_OK;
    if (!cJSON_IsBool(v)) return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be true or false", what, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return SD_OK;
}

int json_bool_req(const cJSON *obj, const char *key, int *out, const char *what) {
    return json_item(obj, key) ? json_bool(obj, key, 0, out, what) : missing(key, what);
}

int json_str(const cJSON *obj, const char *key, const char *dflt, const char **out, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return *out = dflt, SD_OK;
    if (!cJSON_IsString(v)) return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be a string", what, key);
    *out = v->valuestring;
    return SD_OK;
}

int json_str_req(const cJSON *obj, const char *key, const char **out, const char *what) {
    return json_item(obj, key) ? json_str(obj, key, NULL, out, what) : missing(key, what);
}

int json_int_list(const cJSON *obj, const char *key, int dflt, int *out, int n, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v || cJSON_IsNumber(v)) {
        int x = dflt;
        int rc = json_int(obj, key, dflt, &x, what);
        if (rc) return rc;
        for (int i = 0; i < n; i++) out[i] = x;
        return SD_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be an integer or a list of %d integers", what, key, n);
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        if (!is_int(e)) return sd_error(SD_ERR_FORMAT, "%s: \"%s\"[%d] must be an integer", what, key, i);
        out[i] = (int)e->valuedouble;
    }
    return SD_OK;
}

int json_int_array(const cJSON *obj, const char *key, int *out, int max, int *n, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return missing(key, what);
    if (cJSON_IsNumber(v)) {
        *n = 1;
        return max >= 1 ? as_int(v, key, out, what)
                        : sd_error(SD_ERR_FORMAT, "%s: \"%s\" allows no entries", what, key);
    }
    if (!cJSON_IsArray(v)) return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be a list of integers", what, key);
    const int k = cJSON_GetArraySize(v);
    if (k > max)
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" has %d entries, more than the %d supported", what, key, k, max);
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        if (!is_int(e)) return sd_error(SD_ERR_FORMAT, "%s: \"%s\"[%d] must be an integer", what, key, i);
        out[i] = (int)e->valuedouble;
    }
    *n = k;
    return SD_OK;
}

int json_str_array(const cJSON *obj, const char *key, const char **out, int max, int *n, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v) return missing(key, what);
    const int k = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (k < 0 || k > max)
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be a list of at most %d strings", what, key, max);
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e)) return sd_error(SD_ERR_FORMAT, "%s: \"%s\"[%d] must be a string", what, key, i);
        out[i] = e->valuestring;
    }
    *n = k;
    return SD_OK;
}

int json_require_unset(const cJSON *obj, const char *key, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (v && !cJSON_IsFalse(v))
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" is set; this model variant is not supported (it must be null)",
                        what, key);
    return SD_OK;
}

int json_require_false(const cJSON *obj, const char *key, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (!v || cJSON_IsFalse(v)) return SD_OK;
    if (cJSON_IsArray(v)) {
        const cJSON *e;
        int ok = 1;
        cJSON_ArrayForEach(e, v) ok &= cJSON_IsFalse(e);
        if (ok) return SD_OK;
    }
    return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be false (not supported)", what, key);
}

int json_require_str(const cJSON *obj, const char *key, const char *want, const char *what) {
    const cJSON *v = json_item(obj, key);
    if (v && !(cJSON_IsString(v) && strcmp(v->valuestring, want) == 0))
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" = %s%s%s is not supported (only \"%s\")", what, key,
                        cJSON_IsString(v) ? "\"" : "", cJSON_IsString(v) ? v->valuestring : "(not a string)",
                        cJSON_IsString(v) ? "\"" : "", want);
    return SD_OK;
}
