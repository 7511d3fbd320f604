/* What a model predicts (epsilon or v), decided once at model_open (rules in model.h). A
 * diffusers folder says it in scheduler_config.json; a single-file checkpoint does not (SD 2.x
 * 768-v and 512 base have the same tensors), so this file reads what other tools read for it:
 * the LDM config beside the file, the file's metadata, and, failing both, the heuristic ComfyUI
 * uses. The LDM config is YAML; one key of it is needed, so a small strict line scanner reads it
 * (no YAML library: the file is the user's, and a block-mapping path is all there is to follow). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "base/error.h"
#include "io/model_config.h"
#include "io/outputs.h"

static void set_prediction(model_t *m, const char *value) {
    cJSON *v = cJSON_CreateString(value);
    if (cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "prediction_type"))
        cJSON_ReplaceItemInObjectCaseSensitive(m->scheduler_config, "prediction_type", v);
    else
        cJSON_AddItemToObject(m->scheduler_config, "prediction_type", v);
}

/* LDM's parameterization names -> diffusers' prediction_type; NULL for anything else */
static const char *from_ldm(const char *p) {
    if (!strcmp(p, "eps")) return "epsilon";
    if (!strcmp(p, "v")) return "v_prediction";
    if (!strcmp(p, "x0")) return "sample";
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* NAME.yaml beside the checkpoint                                                          */

enum { YAML_MAX_BYTES = 1 << 20, YAML_MAX_DEPTH = 32 };

/* Finds the scalar at the block-mapping path model.params.parameterization. Lines are
 * "KEY:" or "KEY: VALUE" under space indentation; list items, flow collections and block
 * scalars are stepped over by indentation (their content can never sit at that path). A tab in
 * the indentation, a key deeper than 32 levels, or a value that is not one plain or quoted
 * word is an error naming the line. *value "" when the key is absent. */
static int yaml_parameterization(const char *path, char *value, size_t cap) {
    value[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    outputs_note_input_fd(fileno(f), path);
    char *buf = sd_xmalloc(YAML_MAX_BYTES + 1);
    size_t n = fread(buf, 1, YAML_MAX_BYTES + 1, f);
    int err = ferror(f);
    fclose(f);
    int rc = SD_OK;
    if (err) rc = sd_error(SD_ERR_IO, "%s: read error", path);
    else if (n > YAML_MAX_BYTES) rc = sd_error(SD_ERR_FORMAT, "%s: larger than %d bytes: not an LDM model config", path, YAML_MAX_BYTES);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n)) {
        free(buf);
        return sd_error(SD_ERR_FORMAT, "%s: holds a NUL byte: not a YAML text file", path);
    }
    static const char *const want[3] = {"model", "params", "parameterization"};
    int indent[YAML_MAX_DEPTH], matched[YAML_MAX_DEPTH];   /* per open key: its column, does the path so far match */
    int depth = 0, lineno = 0, block_indent = -1;   /* block_indent: inside a '|' / '>' scalar of that key column */
    for (char *line = buf, *next; line && !rc; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[--len] = '\0';
        int col = 0;
        while (line[col] == ' ') col++;
        char *s = line + col;
        if (block_indent >= 0) {
            if (!*s || col > block_indent) continue;   /* a line of the block scalar: any text */
            block_indent = -1;
        }
        if (*s == '\t') {
            rc = sd_error(SD_ERR_FORMAT, "%s:%d: a tab in the indentation (YAML indents with spaces)", path, lineno);
            break;
        }
        if (!*s || *s == '#') continue;
        while (depth > 0 && indent[depth - 1] >= col) depth--;
        if (depth == YAML_MAX_DEPTH) {
            rc = sd_error(SD_ERR_FORMAT, "%s:%d: nested deeper than %d keys", path, lineno, YAML_MAX_DEPTH);
            break;
        }
        char *colon = s;
        while (*colon && *colon != ':') colon++;
        if (*s == '-' || *s == '[' || *s == '{' || *s == '"' || *s == '\'' || *s == '?' || *s == '&' || *s == '*' ||
            *s == '!' || *s == '%' || *s == '|' || *s == '>' || *colon != ':' || (colon[1] && colon[1] != ' ')) {
            /* a list item, a flow collection, a continuation line...: off the path, and so is
             * whatever is indented under it (the keys of a list item's mapping) */
            indent[depth] = col, matched[depth] = 0;
            depth++;
            continue;
        }
        *colon = '\0';
        char *key = s, *val = colon + 1;
        size_t kl = strlen(key);
        while (kl && key[kl - 1] == ' ') key[--kl] = '\0';
        while (*val == ' ') val++;
        if (*val == '#') *val = '\0';
        char *hash = strstr(val, " #");   /* a trailing comment */
        if (hash) *hash = '\0';
        size_t vl = strlen(val);
        while (vl && val[vl - 1] == ' ') val[--vl] = '\0';
        const int on_path = depth < 3 && (depth == 0 || matched[depth - 1]) && !strcmp(key, want[depth]);
        if (on_path && depth == 2) {
            /* the value: one word, plain or quoted */
            char q = val[0] == '"' || val[0] == '\'' ? val[0] : 0;
            if (q) {
                if (vl < 2 || val[vl - 1] != q) {
                    rc = sd_error(SD_ERR_FORMAT, "%s:%d: parameterization: unterminated quote", path, lineno);
                    break;
                }
                val[vl - 1] = '\0';
                val++;
            }
            if (!*val || strlen(val) >= cap || strpbrk(val, " \"'#:{}[],")) {
                rc = sd_error(SD_ERR_FORMAT, "%s:%d: parameterization: expected one word (eps, v or x0), got '%s'", path,
                              lineno, val);
                break;
            }
            if (value[0]) {
                rc = sd_error(SD_ERR_FORMAT, "%s:%d: model.params.parameterization given twice", path, lineno);
                break;
            }
            snprintf(value, cap, "%s", val);
        }
        if (*val == '|' || *val == '>') block_indent = col;
        indent[depth] = col, matched[depth] = on_path;
        depth++;
    }
    free(buf);
    return rc;
}

/* "<path without its extension>.yaml" (the name A1111 looks for beside a checkpoint) */
static void yaml_beside(const char *path, char *out, size_t cap) {
    const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
    size_t n = dot && (!slash || dot > slash) ? (size_t)(dot - path) : strlen(path);
    snprintf(out, cap, "%.*s.yaml", (int)n, path);
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* ---------------------------------------------------------------------------------------- */
/* metadata                                                                                 */

/* 1 decided (*out set, why filled), 0 no key, <0 error */
static int from_metadata(const model_t *m, const char **out, char *why, size_t cap) {
    if (m->n_sets < 1 || m->sets[0].n_files < 1) return 0;
    const st_file_t *f = &m->sets[0].files[0];
    const char *v = st_meta(f, "modelspec.prediction_type");
    if (v) {
        if (!strcmp(v, "v") || !strcmp(v, "v_prediction")) *out = "v_prediction";
        else if (!strcmp(v, "epsilon") || !strcmp(v, "eps")) *out = "epsilon";
        else return sd_error(SD_ERR_FORMAT, "%s: metadata modelspec.prediction_type is '%s', expected v or epsilon: "
                             "pass --prediction-type", m->path, v);
        snprintf(why, cap, "metadata modelspec.prediction_type \"%s\"", v);
        return 1;
    }
    v = st_meta(f, "ss_v_parameterization");
    if (v) {
        if (!strcasecmp(v, "true")) *out = "v_prediction";
        else if (!strcasecmp(v, "false")) *out = "epsilon";
        else return sd_error(SD_ERR_FORMAT, "%s: metadata ss_v_parameterization is '%s', expected True or False: "
                             "pass --prediction-type", m->path, v);
        snprintf(why, cap, "metadata ss_v_parameterization \"%s\"", v);
        return 1;
    }
    v = st_meta(f, "modelspec.architecture");
    if (v && !strncmp(v, "stable-diffusion-v", 18)) {
        /* ModelSpec ids: stable-diffusion-v1, -v2-512, -v2-768-v (an adapter adds "/lora") */
        size_t n = strcspn(v, "/");
        *out = n > 2 && !strncmp(v + n - 2, "-v", 2) ? "v_prediction" : "epsilon";
        snprintf(why, cap, "metadata modelspec.architecture \"%.*s\"", (int)n, v);
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the guess                                                                                */

/* SD 2.x: ComfyUI's test. The 768-v model's last-level transformer norm biases are spread far
 * wider than the 512 base model's; std > 0.09 reads as v. An inpainting UNet (more than 4 input
 * channels) is epsilon. Without that tensor, v (what diffusers assumes for every SD 2.x file). */
static int guess_sd2(const model_t *m, const char **out, char *why, size_t cap) {
    const model_component_t *u = &m->unet;
    int in_ch = 4, boc[8], nb = 0, lpb = 0, rc;
    if ((rc = config_int(u, "in_channels", &in_ch)) || (rc = config_int_array(u, "block_out_channels", boc, 8, &nb)) ||
        (rc = config_int(u, "layers_per_block", &lpb)))
        return rc;
    if (in_ch != 4) {
        *out = "epsilon";
        snprintf(why, cap, "the UNet takes %d input channels (inpainting / depth): epsilon, as ComfyUI", in_ch);
        return 0;
    }
    char name[160];
    snprintf(name, sizeof name, "up_blocks.%d.attentions.%d.transformer_blocks.0.norm1.bias", nb - 1, lpb);
    const st_tensor_t *t = component_find(u, name);
    if (!t || t->ndim != 1 || t->numel < 1) {
        *out = "v_prediction";
        snprintf(why, cap, "no %s to test: v_prediction, as diffusers reads SD 2.x files", name);
        return 0;
    }
    float *b = malloc(sizeof(float) * (size_t)t->numel);
    if (!b) return sd_nomem(name, sizeof(float) * (size_t)t->numel);
    if ((rc = st_read_f32(b, t))) {
        free(b);
        return rc;
    }
    double mean = 0, var = 0;
    for (int64_t i = 0; i < t->numel; i++) mean += b[i];
    mean /= (double)t->numel;
    for (int64_t i = 0; i < t->numel; i++) var += (b[i] - mean) * (b[i] - mean);
    free(b);
    const double sd = sqrt(var / (double)t->numel);
    *out = sd > 0.09 ? "v_prediction" : "epsilon";
    snprintf(why, cap, "std of %s is %.3g, %s 0.09 (ComfyUI's test)", name, sd, sd > 0.09 ? "above" : "not above");
    return 0;
}

int model_decide_prediction(model_t *m, const model_open_options_t *opt) {
    const char *flag = opt ? opt->prediction_type : NULL, *sc = opt ? opt->scheduler_config : NULL;
    m->prediction_guessed = 0;
    if (flag) {
        if (strcmp(flag, "epsilon") && strcmp(flag, "v_prediction"))
            return sd_error(SD_ERR_ARG, "--prediction-type must be epsilon or v_prediction, got '%s'", flag);
        set_prediction(m, flag);
        snprintf(m->prediction_why, sizeof m->prediction_why, "--prediction-type");
        return SD_OK;
    }
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "prediction_type");
    if (sc && cJSON_IsString(pt)) {
        snprintf(m->prediction_why, sizeof m->prediction_why, "prediction_type in --scheduler-config %s", sc);
        return SD_OK;
    }
    if (m->layout == MODEL_LAYOUT_DIFFUSERS) {
        char sp[4096];
        snprintf(sp, sizeof sp, "%s/scheduler/scheduler_config.json", m->path);
        struct stat sb;
        if (stat(sp, &sb) != 0)
            snprintf(m->prediction_why, sizeof m->prediction_why, "the folder has no scheduler: SD's default");
        else if (cJSON_IsString(pt))
            snprintf(m->prediction_why, sizeof m->prediction_why, "the folder's scheduler/scheduler_config.json");
        else
            snprintf(m->prediction_why, sizeof m->prediction_why,
                     "diffusers' default: the folder's scheduler/scheduler_config.json names none");
        return SD_OK;
    }
    /* a single file: its config beside it, its metadata, a guess */
    char yaml[4096], why[400] = "";
    const char *value = NULL;
    yaml_beside(m->path, yaml, sizeof yaml);
    FILE *probe = fopen(yaml, "rb");
    if (probe || errno != ENOENT) {
        if (probe) fclose(probe);
        char p[32];
        int rc = yaml_parameterization(yaml, p, sizeof p);
        if (rc) return rc;
        if (!p[0]) {
            value = "epsilon";
            snprintf(why, sizeof why, "%.200s beside the file names no model.params.parameterization: LDM's default eps",
                     base_name(yaml));
        } else if (!(value = from_ldm(p))) {
            return sd_error(SD_ERR_FORMAT, "%s: model.params.parameterization is '%s', expected eps, v or x0", yaml, p);
        } else {
            snprintf(why, sizeof why, "parameterization \"%s\" in %.200s beside the file", p, base_name(yaml));
        }
    } else {
        int r = from_metadata(m, &value, why, sizeof why);
        if (r < 0) return r;
        if (r == 0 && m->layout == MODEL_LAYOUT_LDM_SD1) {
            value = "epsilon";
            snprintf(why, sizeof why, "SD 1.x single file without %.200s or metadata: epsilon, as every SD 1.x base model",
                     base_name(yaml));
        } else if (r == 0 && m->layout == MODEL_LAYOUT_LDM_SDXL) {
            value = "epsilon";
            snprintf(why, sizeof why, "SDXL single file without %.200s or metadata: epsilon, as SDXL base 1.0",
                     base_name(yaml));
        } else if (r == 0) {
            int rc = guess_sd2(m, &value, why, sizeof why);
            if (rc) return rc;
            m->prediction_guessed = 1;
            static int warned;
            if (!warned) {
                warned = 1;
                fprintf(stderr,
                        "warning: %s: an SD 2.x single file says nothing of its prediction type (no %.200s beside it, no "
                        "metadata); guessing %s (%s). Pass --prediction-type epsilon|v_prediction if that is wrong "
                        "(SD 2.x 768 models are v_prediction, 512 base models epsilon)\n",
                        m->path, base_name(yaml), value, why);
            }
            char g[sizeof why];
            snprintf(g, sizeof g, "guess: SD 2.x single file without %.100s or metadata; %.200s; pass --prediction-type to override",
                     base_name(yaml), why);
            memcpy(why, g, sizeof why);
        }
    }
    set_prediction(m, value);
    snprintf(m->prediction_why, sizeof m->prediction_why, "%s", why);
    return SD_OK;
}
