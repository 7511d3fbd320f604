/* Shift names and their keys (shift_name.h): one table of prefixes and suffixes around the module
 * path, used both ways. */
#include "weights/shift_name.h"

#include <stdio.h>
#include <string.h>

#include "base/error.h"

#define TE_PATH_PREFIX "text_model."

static const char *const COMPONENT_PREFIX[2] = {"unet/", "te/"};
static const char *const SLOT_PREFIX[4] = {"param/", "adam_m/", "adam_v/", "ema/"};

/* A key is prefix + path + suffix; [key][component]. The checkpoint key is the trainer key behind
 * "param/" (ckpt_param_key), so it has no row of its own. */
static const struct {
    const char *prefix[2], *suffix[2];
} AFFIX[] = {
    [SHIFT_KEY_TRAINER] = {{"unet/", "te/"}, {"", ".weight"}},
    [SHIFT_KEY_FILE] = {{"", ""}, {".delta", ".delta"}},
    [SHIFT_KEY_CACHE_U] = {{"", "te:"}, {".U", ".U"}},
    [SHIFT_KEY_CACHE_S] = {{"", "te:"}, {".S", ".S"}},
    [SHIFT_KEY_CACHE_VT] = {{"", "te:"}, {".Vt", ".Vt"}},
    [SHIFT_KEY_WEIGHT] = {{"", ""}, {".weight", ".weight"}},
};

static const char *key_what(shift_key_t key) {
    switch (key) {
    case SHIFT_KEY_TRAINER: return "trainer parameter name";
    case SHIFT_KEY_CHECKPOINT: return "checkpoint key";
    case SHIFT_KEY_FILE: return "shift file key";
    case SHIFT_KEY_WEIGHT: return "model tensor key";
    default: return "SVD cache key";
    }
}

static int is_cache(shift_key_t key) {
    return key == SHIFT_KEY_CACHE_U || key == SHIFT_KEY_CACHE_S || key == SHIFT_KEY_CACHE_VT;
}

shift_component_t shift_component_of_path(const char *path) {
    return strncmp(path, TE_PATH_PREFIX, strlen(TE_PATH_PREFIX)) == 0 ? SHIFT_TE : SHIFT_UNET;
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
    if (!n->path[0] || shift_component_of_path(n->path) != n->component)
        return sd_error(SD_ERR_ARG, "shift path '%s' is not a %s module path", n->path, c == SHIFT_TE ? "text encoder" : "UNet");
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

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

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
    /* the prefix names the component where the key has one; a key with none is routed by its path */
    const int explicit_component = strcmp(AFFIX[kind].prefix[SHIFT_UNET], AFFIX[kind].prefix[SHIFT_TE]) != 0;
    for (int c = SHIFT_TE; c >= SHIFT_UNET; c--) {
        const char *pre = AFFIX[kind].prefix[c], *suf = AFFIX[kind].suffix[c];
        if (!starts_with(name, pre)) continue;   /* "" (UNet) matches last */
        const size_t len = strlen(name), lp = strlen(pre), ls = strlen(suf);
        if (len <= lp + ls || strcmp(name + len - ls, suf)) goto bad;
        const size_t n = len - lp - ls;
        if (n >= cap) return sd_error(SD_ERR_FORMAT, "%s '%s' is too long", key_what(asked), key);
        memcpy(path_buf, name + lp, n);
        path_buf[n] = '\0';
        out->component = shift_component_of_path(path_buf);
        if (explicit_component && (int)out->component != c) goto bad;
        out->kind = is_cache(kind) ? SHIFT_SPECTRAL : SHIFT_KIND_UNKNOWN;
        return SD_OK;
    }
bad:
    if (cap) path_buf[0] = '\0';
    return sd_error(SD_ERR_FORMAT, "'%s' is not a %s", key, key_what(asked));
}
