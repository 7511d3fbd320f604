/* Shift names and their keys (shift_name.h): one table of prefixes and suffixes around the module
 * path, used both ways. */
#include "weights/shift_name.h"

#include <stdio.h>
#include <string.h>

#include "base/error.h"

#define TE_PATH_PREFIX "text_model."
#define TE_PROJECTION "text_projection"

static const char *const COMPONENT_PREFIX[SHIFT_N_COMPONENTS] = {"unet/", "te/", "te2/"};
static const char *const COMPONENT_NAME[SHIFT_N_COMPONENTS] = {"unet", "text_encoder", "text_encoder_2"};
static const char *const SLOT_PREFIX[4] = {"param/", "adam_m/", "adam_v/", "ema/"};

/* A key is prefix + path + suffix; [key][component]. The checkpoint key is the trainer key behind
 * "param/" (ckpt_param_key), so it has no row of its own. */
static const struct {
    const char *prefix[SHIFT_N_COMPONENTS], *suffix[SHIFT_N_COMPONENTS];
} AFFIX[] = {
    [SHIFT_KEY_TRAINER] = {{"unet/", "te/", "te2/"}, {"", ".weight", ".weight"}},
    [SHIFT_KEY_FILE] = {{"", "", SHIFT_TE2_PREFIX}, {".delta", ".delta", ".delta"}},
    [SHIFT_KEY_CACHE_U] = {{"", "te:", "te2:"}, {".U", ".U", ".U"}},
    [SHIFT_KEY_CACHE_S] = {{"", "te:", "te2:"}, {".S", ".S", ".S"}},
    [SHIFT_KEY_CACHE_VT] = {{"", "te:", "te2:"}, {".Vt", ".Vt", ".Vt"}},
    [SHIFT_KEY_WEIGHT] = {{"", "", ""}, {".weight", ".weight", ".weight"}},
    [SHIFT_KEY_SET] = {{"", "", SHIFT_TE2_PREFIX}, {"", "", ""}},
};

static const char *key_what(shift_key_t key) {
    switch (key) {
    case SHIFT_KEY_TRAINER: return "trainer parameter name";
    case SHIFT_KEY_CHECKPOINT: return "checkpoint key";
    case SHIFT_KEY_FILE: return "shift file key";
    case SHIFT_KEY_WEIGHT: return "model tensor key";
    case SHIFT_KEY_SET: return "shift set entry";
    default: return "SVD cache key";
    }
}

static int is_cache(shift_key_t key) {
    return key == SHIFT_KEY_CACHE_U || key == SHIFT_KEY_CACHE_S || key == SHIFT_KEY_CACHE_VT;
}

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* a module path of a text encoder (either of SDXL's: they share their paths) */
static int is_te_module(const char *path) { return starts_with(path, TE_PATH_PREFIX) || !strcmp(path, TE_PROJECTION); }

/* whether a bare module path belongs to component c */
static int path_fits(shift_component_t c, const char *path) {
    if (!path[0]) return 0;
    if (c == SHIFT_UNET) return !is_te_module(path) && !starts_with(path, SHIFT_TE2_PREFIX);
    return is_te_module(path);
}

shift_component_t shift_component_of_path(const char *path) {
    if (starts_with(path, SHIFT_TE2_PREFIX)) return SHIFT_TE2;
    return is_te_module(path) ? SHIFT_TE : SHIFT_UNET;
}

shift_name_t shift_name_of_entry(const char *set_path) {
    const shift_component_t c = shift_component_of_path(set_path);
    return (shift_name_t){c, SHIFT_KIND_UNKNOWN, c == SHIFT_TE2 ? set_path + strlen(SHIFT_TE2_PREFIX) : set_path};
}

const char *shift_component_name(shift_component_t c) {
    return (unsigned)c < SHIFT_N_COMPONENTS ? COMPONENT_NAME[c] : "?";
}

int train_param_name(char *buf, size_t cap, shift_component_t component, const char *stem) {
    if ((size_t)snprintf(buf, cap, "%s%s", COMPONENT_PREFIX[component], stem) >= cap)
        return sd_error(SD_ERR_ARG, "parameter name %s%s is too long", COMPONENT_PREFIX[component], stem);
    return SD_OK;
}

int ckpt_param_key(char *buf, size_t cap, ckpt_slot_t slot, const char *param_name) {
    if ((size_t)snprintf(buf, cap, "%s%s", SLOT_PREFIX[slot], param_name) >= cap)
        return sd_error(SD_ERR_ARG, "checkpoint key %s%s is too long", SLOT_PREFIX[slot], param_name);
    return SD_OK;
}

int shift_key(char *buf, size_t cap, const shift_name_t *n, shift_key_t key) {
    const int c = n->component;
    static const char *const WHAT[SHIFT_N_COMPONENTS] = {"UNet", "text encoder", "text_encoder_2"};
    if ((unsigned)c >= SHIFT_N_COMPONENTS || !path_fits(n->component, n->path))
        return sd_error(SD_ERR_ARG, "shift path '%s' is not a %s module path", n->path,
                        (unsigned)c < SHIFT_N_COMPONENTS ? WHAT[c] : "known");
    if (is_cache(key) && n->kind == SHIFT_NORM)
        return sd_error(SD_ERR_ARG, "norm shift %s has no SVD cache key", n->path);
    if (key == SHIFT_KEY_CHECKPOINT) {
        char name[512];
        int rc = shift_key(name, sizeof name, n, SHIFT_KEY_TRAINER);
        return rc ? rc : ckpt_param_key(buf, cap, CKPT_PARAM, name);
    }
    if ((size_t)snprintf(buf, cap, "%s%s%s", AFFIX[key].prefix[c], n->path, AFFIX[key].suffix[c]) >= cap)
        return sd_error(SD_ERR_ARG, "%s of %s is too long", key_what(key), n->path);
    return SD_OK;
}

int shift_key_parse(shift_name_t *out, char *path_buf, size_t cap, const char *key, shift_key_t kind) {
    memset(out, 0, sizeof *out);
    out->path = path_buf;
    if (cap) path_buf[0] = '\0';
    const char *name = key;
    const shift_key_t asked = kind;
    if (kind == SHIFT_KEY_CHECKPOINT) {
        if (!starts_with(key, SLOT_PREFIX[CKPT_PARAM])) goto bad;
        name += strlen(SLOT_PREFIX[CKPT_PARAM]);
        kind = SHIFT_KEY_TRAINER;
    }
    /* a prefix that no other component shares names the component; a shared one ("") leaves it to
     * the path. Longer prefixes are tried first ("te2:" before "te:", "" last). */
    for (int c = SHIFT_N_COMPONENTS - 1; c >= SHIFT_UNET; c--) {
        const char *pre = AFFIX[kind].prefix[c], *suf = AFFIX[kind].suffix[c];
        if (!starts_with(name, pre)) continue;
        int shared = 0;
        for (int o = 0; o < SHIFT_N_COMPONENTS; o++) shared |= o != c && !strcmp(AFFIX[kind].prefix[o], pre);
        const size_t len = strlen(name), lp = strlen(pre), ls = strlen(suf);
        if (len <= lp + ls || strcmp(name + len - ls, suf)) goto bad;
        const size_t n = len - lp - ls;
        if (n >= cap) return sd_error(SD_ERR_FORMAT, "%s '%s' is too long", key_what(asked), key);
        memcpy(path_buf, name + lp, n);
        path_buf[n] = '\0';
        if (shared) {   /* routed by the path, among the components that share the prefix */
            out->component = is_te_module(path_buf) ? SHIFT_TE : SHIFT_UNET;
            if (strcmp(AFFIX[kind].prefix[out->component], pre)) goto bad;
        } else {
            out->component = (shift_component_t)c;
        }
        if (!path_fits(out->component, path_buf)) goto bad;
        out->kind = is_cache(kind) ? SHIFT_SPECTRAL : SHIFT_KIND_UNKNOWN;
        return SD_OK;
    }
bad:
    if (cap) path_buf[0] = '\0';
    return sd_error(SD_ERR_FORMAT, "'%s' is not a %s", key, key_what(asked));
}
