/* Weight deltas and LoRA files merged into a loaded model (adapters.h): name resolution against
 * the UNet registry and the text encoder's modules, shape checks, base-model checks, merging. */
#include "pipeline/adapters.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/error.h"
#include "base/str.h"
#include "ops/ops.h"
#include "shifts/shifts.h"

/* ---- name resolution ---- */

/* What a tensor name points at: a weight matrix, or an fp32 vector (bias, gain, offset) of n. */
typedef struct {
    weight_t *w;
    float *vec;
    int n;
} target_t;

/* module + ".weight" / ".bias" in the text encoder (the embeddings have no bias) */
static int clip_resolve(clip_t *c, const char *module, int is_bias, target_t *t) {
    clip_module_t mod;
    if (!clip_find_module(c, module, &mod)) return 0;
    if (mod.ln) {
        t->vec = is_bias ? mod.ln->beta : mod.ln->gamma, t->n = c->cfg.hidden_size;
        return 1;
    }
    if (!is_bias) return t->w = mod.w, 1;
    if (!mod.bias) return 0;
    t->vec = mod.bias, t->n = mod.w->rows;
    return 1;
}

static int unet_resolve(unet_t *u, const char *module, int is_bias, target_t *t) {
    layer_t *l = unet_find_layer(u, module);
    if (l) {
        if (is_bias && !l->bias) return 0;
        if (is_bias) t->vec = l->bias, t->n = l->out;
        else t->w = &l->w;
        return 1;
    }
    norm_layer_t *nm = unet_find_norm(u, module);
    if (!nm) return 0;
    t->vec = is_bias ? nm->beta : nm->gamma, t->n = nm->C;
    return 1;
}

/* The text encoder `te` names: 1 the first, 2 SDXL's second (NULL when the model has none). */
static clip_t *te_model(pipeline_t *p, int te) { return te == 2 ? (p->has_te2 ? &p->clip2 : NULL) : &p->clip; }

static const char *te_what(int te) { return te == 2 ? "text_encoder_2" : te ? "text encoder" : "UNet"; }

/* A parameter tensor name ("<module>.weight" / ".bias") to its target; 0 if none. te: 0 the UNet,
 * 1 the text encoder, 2 SDXL's text_encoder_2. */
static int resolve_param(pipeline_t *p, int te, const char *name, target_t *t) {
    memset(t, 0, sizeof *t);
    const char *dot = strrchr(name, '.');
    if (!dot || (strcmp(dot, ".weight") && strcmp(dot, ".bias"))) return 0;
    char module[512];
    snprintf(module, sizeof module, "%.*s", (int)(dot - name), name);
    const int is_bias = !strcmp(dot, ".bias");
    if (te && !te_model(p, te)) return 0;
    return te ? clip_resolve(te_model(p, te), module, is_bias, t) : unet_resolve(&p->unet, module, is_bias, t);
}

weight_t *pipeline_find_weight(pipeline_t *p, int te, const char *module) {
    target_t t = {0};
    if (te && !te_model(p, te)) return NULL;
    int ok = te ? clip_resolve(te_model(p, te), module, 0, &t) : unet_resolve(&p->unet, module, 0, &t);
    return ok ? t.w : NULL;
}

/* The effective fp32 matrix of a weight, created (baked) on first use. */
static float *effective(weight_t *w) {
    if (!w->baked) weight_bake(w);
    return w->baked;
}

/* A LoRA's alpha beyond this is a broken file, not a strength (alpha / rank scales B A). */
#define LORA_MAX_ALPHA 65536.0

/* The values of a tensor read from an adapter file must be finite. */
static int check_finite(const float *x, size_t n, const char *path, const char *name) {
    const size_t k = first_nonfinite(x, n);
    if (k < n) return sd_error(SD_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value (NaN or Inf) at flat index %zu",
                               path, name, k);
    return SD_OK;
}

/* base_model_hash of a file against the model's. */
static int check_base(const st_file_t *f, const char *path, const char *hash, int force, const char *what) {
    const char *base = st_meta(f, "base_model_hash");
    if (!base) {
        fprintf(stderr, "warning: %s has no base_model_hash: cannot check that it was made for this model (%s)\n", path,
                hash);
        return SD_OK;
    }
    if (!strcmp(base, hash)) return SD_OK;
    if (!force)
        return sd_error(SD_ERR_ARG, "%s: this %s was made for base model %s, but this model hashes to %s (--force "
                        "applies it anyway)", path, what, base, hash);
    fprintf(stderr, "warning: %s was made for base model %s, not this one (%s): applied anyway (--force)\n", path, base,
            hash);
    return SD_OK;
}

static int is_dir(const char *path) {
    struct stat st;
    return !stat(path, &st) && S_ISDIR(st.st_mode);
}

static int exists(const char *path) {
    struct stat st;
    return !stat(path, &st);
}

/* ---- weight deltas ---- */

static int apply_delta_file(pipeline_t *p, const char *path, float scale, int force, const char *hash) {
    st_file_t f;
    int rc = st_open(&f, path);
    if (rc) return rc;
    rc = check_base(&f, path, hash, force, "weight delta");
    for (int i = 0; i < f.n_tensors && !rc; i++) {
        const st_tensor_t *x = &f.tensors[i];
        const int te = shift_component_of_path(x->name) == SHIFT_TE;
        const model_component_t *comp = te ? &p->model.text_encoder : &p->model.unet;
        const st_tensor_t *ref = component_find(comp, x->name);
        target_t t;
        if (!ref || !resolve_param(p, te, x->name, &t)) {
            rc = sd_error(SD_ERR_ARG, "%s: tensor '%s' is not a parameter of this model's %s (a delta of another model?)",
                          path, x->name, te ? "text encoder" : "UNet");
            break;
        }
        if (ref->ndim != x->ndim || memcmp(ref->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim)) {
            char a[96], b[96];
            shape_str(a, sizeof a, x->ndim, x->shape), shape_str(b, sizeof b, ref->ndim, ref->shape);
            rc = sd_error(SD_ERR_SHAPE, "%s: tensor '%s' is %s but the model's is %s (a delta of another model?)", path,
                          x->name, a, b);
            break;
        }
        const size_t n = (size_t)x->numel;
        float *d = sd_xmalloc(sizeof(float) * (n ? n : 1));
        rc = st_read_f32(d, x);
        if (!rc) rc = check_finite(d, n, path, x->name);
        if (!rc) {
            float *dst = t.w ? effective(t.w) : t.vec;
            SD_CHECK(t.w ? (size_t)t.w->rows * t.w->cols == n : (size_t)t.n == n, "%s: size", x->name);
            for (size_t k = 0; k < n; k++) dst[k] += scale * d[k];
        }
        free(d);
    }
    st_close(&f);
    return rc;
}

int pipeline_apply_deltas(pipeline_t *p, const pipeline_shift_t *deltas, int n, int force) {
    char hash[17];
    int rc = n ? model_weights_hash(&p->model, hash) : SD_OK;
    for (int i = 0; i < n && !rc; i++) {
        const char *path = deltas[i].path;
        if (!is_dir(path)) {
            if (!exists(path)) return sd_error(SD_ERR_IO, "--delta %s: no such file or folder", path);
            rc = apply_delta_file(p, path, deltas[i].scale, force, hash);
            continue;
        }
        static const char *const files[2] = {"weight_delta.safetensors", "weight_delta_te.safetensors"};
        char pair[2][4200];
        for (int k = 0; k < 2; k++) {
            snprintf(pair[k], sizeof pair[k], "%s/%s", path, files[k]);
            if (!exists(pair[k])) pair[k][0] = '\0';
        }
        if ((rc = st_pair_check(pair[0], pair[1], force))) break;   /* both from one run? */
        int found = 0;
        for (int k = 0; k < 2 && !rc; k++) {
            char file[4200];
            snprintf(file, sizeof file, "%s/%s", path, files[k]);
            if (!exists(file)) continue;
            found++;
            rc = apply_delta_file(p, file, deltas[i].scale, force, hash);
        }
        if (!rc && !found)
            rc = sd_error(SD_ERR_IO, "--delta %s: the folder holds neither weight_delta.safetensors nor "
                          "weight_delta_te.safetensors (train with --mode full --save-delta)", path);
    }
    return rc;
}

/* ---- LoRA files ---- */

typedef struct {
    int te;
    char key[320];     /* module as written in the file (kohya: with '_') */
    const st_tensor_t *A, *B, *alpha;
    const st_tensor_t *diff, *diff_b;   /* full differences of the weight / bias (LyCORIS "diff") */
} lora_group_t;

/* "down_blocks.0.attn1" -> "down_blocks_0_attn1" */
static void underscored(char *dst, size_t cap, const char *s) {
    snprintf(dst, cap, "%s", s);
    for (char *c = dst; *c; c++)
        if (*c == '.') *c = '_';
}

typedef struct {
    const char *key;
    char *module;
    size_t cap;
} kohya_find_t;

static int kohya_visit(void *ctx, const clip_module_t *mod) {
    kohya_find_t *f = ctx;
    char u[512];
    underscored(u, sizeof u, mod->path);
    if (strcmp(u, f->key)) return 0;
    snprintf(f->module, f->cap, "%s", mod->path);
    return 1;
}

/* A kohya module key back to the model's module path (a layer or a norm of the UNet; a linear,
 * embedding or LayerNorm of the text encoder), or 0. */
static int kohya_module(pipeline_t *p, int te, const char *key, char *module, size_t cap) {
    char u[512];
    if (!te) {
        for (int i = 0; i < p->unet.n_layers; i++) {
            underscored(u, sizeof u, p->unet.layers[i]->name);
            if (!strcmp(u, key)) return snprintf(module, cap, "%s", p->unet.layers[i]->name), 1;
        }
        for (int i = 0; i < p->unet.n_norms; i++) {
            underscored(u, sizeof u, p->unet.norms[i]->name);
            if (!strcmp(u, key)) return snprintf(module, cap, "%s", p->unet.norms[i]->name), 1;
        }
        return 0;
    }
    kohya_find_t f = {.key = key, .module = module, .cap = cap};
    return te_model(p, te) ? clip_visit_modules(te_model(p, te), NULL, kohya_visit, &f) : 0;
}

static int group_lora_tensors(const st_file_t *f, const char *path, lora_group_t **out, int *n_out) {
    lora_group_t *g = calloc((size_t)f->n_tensors + 1, sizeof *g);
    SD_CHECK(g, "out of memory");
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor_t *x = &f->tensors[i];
        const char *name = x->name, *body = NULL;
        int te = 0, role = -1;   /* 0 A, 1 B, 2 alpha, 3 diff, 4 diff_b */
        size_t stem = 0;
        if (!strncmp(name, "unet.", 5)) body = name + 5;
        else if (!strncmp(name, "text_encoder.", 13)) body = name + 13, te = 1;
        else if (!strncmp(name, "text_encoder_2.", 15)) body = name + 15, te = 2;   /* SDXL's second encoder */
        else if (!strncmp(name, "lora_unet_", 10)) body = name + 10;
        else if (!strncmp(name, "lora_te_", 8)) body = name + 8, te = 1;
        else if (!strncmp(name, "lora_te1_", 9)) body = name + 9, te = 1;
        else if (!strncmp(name, "lora_te2_", 9)) body = name + 9, te = 2;
        if (body) {
            if (str_cut_suffix(body, ".lora_A.weight", &stem) || str_cut_suffix(body, ".lora_down.weight", &stem) ||
                str_cut_suffix(body, ".lora.down.weight", &stem))
                role = 0;
            else if (str_cut_suffix(body, ".lora_B.weight", &stem) || str_cut_suffix(body, ".lora_up.weight", &stem) ||
                     str_cut_suffix(body, ".lora.up.weight", &stem))
                role = 1;
            else if (str_cut_suffix(body, ".alpha", &stem))
                role = 2;
            else if (str_cut_suffix(body, ".diff", &stem))
                role = 3;
            else if (str_cut_suffix(body, ".diff_b", &stem))
                role = 4;
        }
        if (role < 0 || stem >= sizeof g[0].key) {
            free(g);
            return sd_error(SD_ERR_FORMAT, "%s: tensor '%s' is not a LoRA tensor (expected unet.<module>.lora_A.weight / "
                            "lora_B.weight, text_encoder(_2).<module>..., or kohya lora_unet_<module>.lora_down.weight / "
                            "lora_up.weight / alpha / diff / diff_b, lora_te(1|2)_...)", path, name);
        }
        int k = 0;
        while (k < n && !(g[k].te == te && strlen(g[k].key) == stem && !strncmp(g[k].key, body, stem))) k++;
        if (k == n) g[n].te = te, snprintf(g[n].key, sizeof g[n].key, "%.*s", (int)stem, body), n++;
        if (role == 0) g[k].A = x;
        else if (role == 1) g[k].B = x;
        else if (role == 2) g[k].alpha = x;
        else if (role == 3) g[k].diff = x;
        else g[k].diff_b = x;
    }
    *out = g, *n_out = n;
    return SD_OK;
}

/* A full difference ("<module>.diff" of the weight, ".diff_b" of the bias) added at `scale`. */
static int apply_diff(pipeline_t *p, const char *path, int te, const char *module, const st_tensor_t *x, int is_bias,
                      float scale) {
    char name[600];
    snprintf(name, sizeof name, "%s.%s", module, is_bias ? "bias" : "weight");
    target_t t;
    if (!resolve_param(p, te, name, &t) || (!t.w && !t.vec))
        return sd_error(SD_ERR_ARG, "%s: '%s' has no %s in this model's %s to add to", path, x->name,
                        is_bias ? "bias" : "weight", te_what(te));
    const size_t n = t.w ? (size_t)t.w->rows * t.w->cols : (size_t)t.n;
    if ((size_t)x->numel != n || (t.vec && x->ndim != 1)) {
        char a[96];
        shape_str(a, sizeof a, x->ndim, x->shape);
        return sd_error(SD_ERR_SHAPE, "%s: '%s' is %s but %s has %zu values (a LoRA of another model?)", path, x->name,
                        a, name, n);
    }
    float *d = sd_xmalloc(sizeof(float) * (n ? n : 1));
    int rc = st_read_f32(d, x);
    if (!rc) rc = check_finite(d, n, path, x->name);
    if (!rc) {
        float *dst = t.w ? effective(t.w) : t.vec;
        for (size_t k = 0; k < n; k++) dst[k] += scale * d[k];
    }
    free(d);
    return rc;
}

static int apply_lora_group(pipeline_t *p, const st_file_t *f, const char *path, const lora_group_t *g, float scale) {
    char module[512];
    const st_tensor_t *any = g->A ? g->A : g->B ? g->B : g->diff ? g->diff : g->diff_b ? g->diff_b : g->alpha;
    const int kohya = strchr(g->key, '.') == NULL && !strncmp(any->name, "lora_", 5);
    if (kohya) {
        if (!kohya_module(p, g->te, g->key, module, sizeof module))
            return sd_error(SD_ERR_ARG, "%s: LoRA module '%s' is not a layer of this model's %s (a LoRA of another "
                            "model?)", path, g->key, te_what(g->te));
    } else {
        snprintf(module, sizeof module, "%s", g->key);
    }
    if (g->diff || g->diff_b) {
        if (g->A || g->B)
            return sd_error(SD_ERR_FORMAT, "%s: LoRA module '%s' has both low-rank factors and a full difference", path,
                            g->key);
        int rc = g->diff ? apply_diff(p, path, g->te, module, g->diff, 0, scale) : SD_OK;
        if (!rc && g->diff_b) rc = apply_diff(p, path, g->te, module, g->diff_b, 1, scale);
        return rc;
    }
    weight_t *w = pipeline_find_weight(p, g->te, module);
    if (!w) return sd_error(SD_ERR_ARG, "%s: LoRA module '%s' is not a layer of this model's %s (a LoRA of another "
                            "model?)", path, module, te_what(g->te));
    if (!g->A || !g->B)
        return sd_error(SD_ERR_FORMAT, "%s: LoRA module '%s' has no %s", path, g->key, g->A ? "up (B) matrix" : "down (A) matrix");
    const st_tensor_t *A = g->A, *B = g->B;
    const int64_t R = A->ndim >= 2 ? A->shape[0] : 0;
    const int ok = R > 0 && (A->ndim == 2 || A->ndim == 4) && A->numel == R * w->cols && (B->ndim == 2 || B->ndim == 4) &&
                   B->shape[0] == w->rows && B->shape[1] == R && B->numel == (int64_t)w->rows * R;
    if (!ok) {
        char a[96], b[96];
        shape_str(a, sizeof a, A->ndim, A->shape), shape_str(b, sizeof b, B->ndim, B->shape);
        return sd_error(SD_ERR_SHAPE, "%s: LoRA of '%s' has A %s and B %s, which do not fit its %d x %d weight "
                        "(a LoRA of another model?)", path, module, a, b, w->rows, w->cols);
    }
    float alpha = (float)R;   /* diffusers: no alpha means a scale of 1 */
    if (g->alpha) {
        float a1[1];
        if (g->alpha->numel != 1 || st_read_f32(a1, g->alpha))
            return sd_error(SD_ERR_FORMAT, "%s: '%s' must be one number", path, g->alpha->name);
        if (!(fabsf(a1[0]) <= LORA_MAX_ALPHA))
            return sd_error(SD_ERR_FORMAT, "%s: '%s' = %g is not a finite number in [-%g, %g]", path, g->alpha->name,
                            (double)a1[0], LORA_MAX_ALPHA, LORA_MAX_ALPHA);
        alpha = a1[0];
    } else {
        const char *m = st_meta(f, "lora_alpha");
        if (m) {
            char *end;
            const float v = strtof(m, &end);   /* "1e39" overflows to Inf, "nan" is NaN: both refused */
            if (end == m || *end || !(fabsf(v) <= LORA_MAX_ALPHA))
                return sd_error(SD_ERR_FORMAT, "%s: metadata 'lora_alpha' = '%s' is not a finite number in [-%g, %g]",
                                path, m, LORA_MAX_ALPHA, LORA_MAX_ALPHA);
            alpha = v;
        }
    }
    lora_t l = {.rows = w->rows, .cols = w->cols, .rank = (int)R, .scale = alpha / (float)R};
    l.AB = sd_xmalloc(sizeof(float) * lora_numel(&l));
    l.A = l.AB, l.B = l.AB + (size_t)R * w->cols;
    int rc = st_read_f32(l.A, A);
    if (!rc) rc = st_read_f32(l.B, B);
    if (!rc) rc = check_finite(l.A, (size_t)A->numel, path, A->name);
    if (!rc) rc = check_finite(l.B, (size_t)B->numel, path, B->name);
    if (!rc) lora_merge(effective(w), &l, scale);
    free(l.AB);
    return rc;
}

int pipeline_apply_loras(pipeline_t *p, const pipeline_shift_t *loras, int n, int force) {
    char hash[17];
    int rc = n ? model_weights_hash(&p->model, hash) : SD_OK;
    for (int i = 0; i < n && !rc; i++) {
        char file[4200];
        if (is_dir(loras[i].path)) snprintf(file, sizeof file, "%s/pytorch_lora_weights.safetensors", loras[i].path);
        else snprintf(file, sizeof file, "%s", loras[i].path);
        st_file_t f;
        if ((rc = st_open(&f, file))) break;
        rc = check_base(&f, file, hash, force, "LoRA");
        lora_group_t *g = NULL;
        int ng = 0;
        if (!rc) rc = group_lora_tensors(&f, file, &g, &ng);
        if (!rc && ng == 0) rc = sd_error(SD_ERR_FORMAT, "%s: holds no LoRA tensors", file);
        for (int k = 0; k < ng && !rc; k++) rc = apply_lora_group(p, &f, file, &g[k], loras[i].scale);
        free(g);
        st_close(&f);
    }
    return rc;
}
