/* model_open: a diffusers folder (model_index.json, per-component config.json and safetensors,
 * sharded or not, fp16 variants accepted; SDXL's text_encoder_2 and tokenizer_2) or an LDM single
 * file (SD 1.x / 2.x, SDXL in the sgm layout; .safetensors, or a PyTorch .ckpt whose storages
 * io/ckpt.c copies into memory), into components of zero-copy views
 * named the diffusers way, every component validated against its config. Of safetensors only the
 * headers are read: the tensor data stays untouched in the mmap until a model uses it. */
#include "io/model.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "base/error.h"
#include "base/str.h"
#include "io/ckpt.h"
#include "io/outputs.h"
#include "io/model_config.h"
#include "io/names.h"
#include "ops/ops.h"

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */

static char *join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    int slash = na > 0 && a[na - 1] != '/';
    char *s = sd_xmalloc(na + nb + 2);
    memcpy(s, a, na);
    if (slash) s[na] = '/';
    memcpy(s + na + slash, b, nb + 1);
    return s;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *d = sd_xmalloc(n + 1);
    memcpy(d, s, n + 1);
    return d;
}

static int is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Reads and parses a JSON object file; errors name the file. */
static int read_json(const char *path, cJSON **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    outputs_note_input_fd(fileno(f), path);
    size_t cap = 4096, n = 0;
    char *buf = sd_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            SD_CHECK(nb, "out of memory reading %s", path);
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return sd_error(SD_ERR_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, n, &end, 0);
    if (!j) {
        int rc = sd_error(SD_ERR_FORMAT, "%s: not valid JSON (near byte %td)", path,
                          end ? end - buf : (ptrdiff_t)-1);
        free(buf);
        return rc;
    }
    free(buf);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return sd_error(SD_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = j;
    return 0;
}

/* Prefixes the current error message with `what: ` (keeps the code). */
static int wrap(int rc, const char *what) { return sd_error_wrap(rc, "%s", what); }

/* ---------------------------------------------------------------------------------------- */
/* Component building                                                                       */

typedef struct {
    st_tensor_t t;        /* view; t.name owned */
    const char *src;      /* the name in the file (for duplicate messages) */
} entry_t;

typedef struct {
    entry_t *e;
    int n, cap;
} builder_t;

static void builder_add(builder_t *b, const st_tensor_t *t, const char *name, const char *src) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        entry_t *ne = realloc(b->e, (size_t)b->cap * sizeof *ne);
        SD_CHECK(ne, "out of memory");
        b->e = ne;
    }
    entry_t *e = &b->e[b->n++];
    e->t = *t;
    e->t.name = dup_str(name);
    e->src = src;
}

static void builder_free(builder_t *b) {
    for (int i = 0; i < b->n; i++) free(b->e[i].t.name);
    free(b->e);
    memset(b, 0, sizeof *b);
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const entry_t *)a)->t.name, ((const entry_t *)b)->t.name);
}

/* Sorts, rejects two file tensors landing on one name, and moves the views into c. */
static int builder_finish(builder_t *b, model_component_t *c, const char *path) {
    if (b->n > 1) qsort(b->e, (size_t)b->n, sizeof *b->e, cmp_entry);
    for (int i = 1; i < b->n; i++)
        if (!strcmp(b->e[i - 1].t.name, b->e[i].t.name)) {
            int rc = sd_error(SD_ERR_FORMAT, "%s: duplicate mapping: tensors '%s' and '%s' both become %s "
                              "tensor '%s'", path, b->e[i - 1].src, b->e[i].src, c->name, b->e[i].t.name);
            builder_free(b);
            return rc;
        }
    c->n_tensors = b->n;
    c->tensors = sd_xmalloc((size_t)b->n * sizeof(st_tensor_t) + 1);
    for (int i = 0; i < b->n; i++) c->tensors[i] = b->e[i].t;   /* names move over */
    free(b->e);
    memset(b, 0, sizeof *b);
    return 0;
}

static void component_free(model_component_t *c) {
    for (int i = 0; i < c->n_tensors; i++) free(c->tensors[i].name);
    free(c->tensors);
    free(c->name);
    cJSON_Delete(c->config);
    memset(c, 0, sizeof *c);
}

void model_close(model_t *m) {
    if (!m) return;
    component_free(&m->unet);
    component_free(&m->vae);
    component_free(&m->text_encoder);
    component_free(&m->text_encoder_2);
    for (int i = 0; i < m->n_sets; i++) st_set_close(&m->sets[i]);
    free(m->sets);
    for (int i = 0; i < m->n_owned; i++) munmap(m->owned[i].p, m->owned[i].n);
    free(m->owned);
    cJSON_Delete(m->scheduler_config);
    free(m->tokenizer_dir);
    free(m->tokenizer_2_dir);
    free(m->path);
    memset(m, 0, sizeof *m);
}

/* A buffer of n bytes the model owns. Shared anonymous memory, not the heap: readers release a
 * tensor's pages after use (st_release_pages, MADV_DONTNEED), which keeps the contents of a shared
 * mapping (they come back on the next read) but would zero a private one. */
static void *model_own(model_t *m, size_t n) {
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    struct model_owned *no = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *no);
    SD_CHECK(no, "out of memory");
    m->owned = no;
    m->owned[m->n_owned++] = (struct model_owned){p, n ? n : 1};
    return p;
}

model_family_t model_family(const model_t *m) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(m->unet.config, "addition_embed_type");
    if (m->text_encoder_2.n_tensors && cJSON_IsString(t) && !strcmp(t->valuestring, "text_time"))
        return MODEL_FAMILY_SDXL;
    if (m->layout == MODEL_LAYOUT_LDM_SD2) return MODEL_FAMILY_SD2;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(m->text_encoder.config, "hidden_act");
    if (m->layout == MODEL_LAYOUT_DIFFUSERS && cJSON_IsString(act) && !strcmp(act->valuestring, "gelu"))
        return MODEL_FAMILY_SD2;   /* OpenCLIP-H uses the exact GELU, CLIP-L quick_gelu */
    return MODEL_FAMILY_SD1;
}

const char *model_family_name(model_family_t f) {
    switch (f) {
    case MODEL_FAMILY_SD1: return "sd1";
    case MODEL_FAMILY_SD2: return "sd2";
    case MODEL_FAMILY_SDXL: return "sdxl";
    }
    return "?";
}

static st_set_t *new_set(model_t *m) {
    st_set_t *ns = realloc(m->sets, (size_t)(m->n_sets + 1) * sizeof *ns);
    SD_CHECK(ns, "out of memory");
    m->sets = ns;
    memset(&m->sets[m->n_sets], 0, sizeof *ns);
    return &m->sets[m->n_sets];
}

/* ---------------------------------------------------------------------------------------- */
/* Lookup                                                                                   */

const st_tensor_t *component_find(const model_component_t *c, const char *name) {
    int lo = 0, hi = c->n_tensors;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int r = strcmp(c->tensors[mid].name, name);
        if (r == 0) return &c->tensors[mid];
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* "[320, 4, 3, 3]"; a negative size (any) prints as '*'. */
int component_require(const model_component_t *c, const char *name, int ndim, const int64_t *shape,
                      const st_tensor_t **out) {
    const st_tensor_t *t = component_find(c, name);
    if (out) *out = t;
    if (!t) return sd_error(SD_ERR_FORMAT, "%s: missing tensor '%s'", c->name ? c->name : "?", name);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || shape[i] == t->shape[i];
    if (!ok) {
        char want[160], got[160];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        return sd_error(SD_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s", c->name, name, got, want);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* diffusers folders                                                                        */

typedef struct {
    const char *name, *cls, *library, *weights;   /* weights: base name, e.g. "model" */
} folder_part_t;

#define N_PARTS 4
static const folder_part_t PARTS[N_PARTS] = {
    {"unet", "UNet2DConditionModel", "diffusers", "diffusion_pytorch_model"},
    {"vae", "AutoencoderKL", "diffusers", "diffusion_pytorch_model"},
    {"text_encoder", "CLIPTextModel", "transformers", "model"},
    {"text_encoder_2", "CLIPTextModelWithProjection", "transformers", "model"},   /* SDXL */
};

/* The components in PARTS order. */
static void components(model_t *m, model_component_t *out[N_PARTS]) {
    out[0] = &m->unet, out[1] = &m->vae, out[2] = &m->text_encoder, out[3] = &m->text_encoder_2;
}

/* First existing weights file: plain names before the fp16 variant, one file before an index
 * (*out NULL when there is none). A candidate that exists but cannot be used (a symlink loop, no
 * permission, a folder) is an error naming it with the OS's reason, not "no weights". */
static int find_weights(const char *dir, const char *base, char **out) {
    static const char *const pattern[4] = {"%s.safetensors", "%s.safetensors.index.json",
                                           "%s.fp16.safetensors", "%s.safetensors.index.fp16.json"};
    char name[256];
    *out = NULL;
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, pattern[i], base);
        char *p = join(dir, name);
        struct stat sb;
        int rc = SD_OK;
        if (stat(p, &sb) == 0) {
            if (S_ISREG(sb.st_mode)) {
                *out = p;
                return SD_OK;
            }
            rc = sd_error(SD_ERR_IO, "%s: not a regular file", p);
        } else if (errno != ENOENT) {
            rc = sd_error(SD_ERR_IO, "%s: cannot open: %s", p, strerror(errno));
        } else if (lstat(p, &sb) == 0) {
            rc = sd_error(SD_ERR_IO, "%s: cannot open: a dangling symbolic link", p);
        }
        free(p);
        if (rc) return rc;
    }
    return SD_OK;
}

/* model_index.json entry of a component: 1 if listed (["library", "Class"]), 0 if absent or
 * [null, null]; errors for anything else or an unsupported class. */
static int index_entry(const cJSON *index, const char *ipath, const char *name, const char *want_cls) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(index, name);
    if (!e || cJSON_IsNull(e)) return 0;
    const cJSON *lib = cJSON_GetArrayItem(e, 0), *cls = cJSON_GetArrayItem(e, 1);
    if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2 || !(cJSON_IsString(cls) || cJSON_IsNull(cls)))
        return sd_error(SD_ERR_FORMAT, "%s: entry '%s' is not a [library, class] pair", ipath, name);
    if (cJSON_IsNull(lib) && cJSON_IsNull(cls)) return 0;
    if (want_cls && cJSON_IsString(cls) && strcmp(cls->valuestring, want_cls) != 0)
        return sd_error(SD_ERR_FORMAT, "%s: %s is a %s; only %s is supported", ipath, name, cls->valuestring,
                        want_cls);
    return 1;
}

static int open_folder_part(model_t *m, model_component_t *c, const folder_part_t *part) {
    char *dir = join(m->path, part->name);
    char *cfg_path = join(dir, "config.json");
    char *weights = NULL;
    int rc = 0;
    c->name = dup_str(part->name);
    struct stat sb;
    if (stat(dir, &sb) != 0 && errno != ENOENT) {
        rc = sd_error(SD_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));   /* a symlink loop, ... */
        goto done;
    }
    if (!is_dir(dir)) {
        rc = sd_error(SD_ERR_IO, "%s: missing folder (model_index.json lists %s)", dir, part->name);
        goto done;
    }
    if ((rc = read_json(cfg_path, &c->config))) goto done;
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(c->config, "_class_name");
    if (cJSON_IsString(cls) && strcmp(cls->valuestring, part->cls) != 0) {
        rc = sd_error(SD_ERR_FORMAT, "%s: _class_name is %s; only %s is supported", cfg_path,
                      cls->valuestring, part->cls);
        goto done;
    }
    if ((rc = find_weights(dir, part->weights, &weights))) goto done;
    if (!weights) {
        rc = sd_error(SD_ERR_IO, "%s: no weights: expected %s.safetensors, %s.safetensors.index.json or "
                      "their .fp16 variants", dir, part->weights, part->weights);
        goto done;
    }
    st_set_t *s = new_set(m);
    if ((rc = st_set_open(s, weights))) goto done;
    m->n_sets++;
    builder_t b = {0};
    for (int i = 0; i < s->n_tensors; i++) {
        const char *name = s->tensors[i]->name;
        size_t n = strlen(name);
        if (n >= 12 && !strcmp(name + n - 12, "position_ids")) continue;   /* transformers' buffer */
        builder_add(&b, s->tensors[i], name, name);
    }
    rc = builder_finish(&b, c, weights);
done:
    free(dir);
    free(cfg_path);
    free(weights);
    return rc;
}

static int open_folder(model_t *m) {
    char *ipath = join(m->path, "model_index.json");
    cJSON *index = NULL;
    int rc = read_json(ipath, &index);
    if (rc) {
        if (rc == SD_ERR_IO && !is_file(ipath))
            rc = sd_error(SD_ERR_IO, "%s: not a diffusers model folder: missing model_index.json", m->path);
        free(ipath);
        return rc;
    }
    model_component_t *comps[N_PARTS];
    components(m, comps);
    for (int i = 0; i < N_PARTS && rc == 0; i++) {
        int listed = index_entry(index, ipath, PARTS[i].name, PARTS[i].cls);
        if (listed < 0) rc = listed;
        else if (listed) rc = open_folder_part(m, comps[i], &PARTS[i]);
        else if (i == 0) rc = sd_error(SD_ERR_FORMAT, "%s: lists no unet", ipath);
    }
    if (rc == 0) {
        int listed = index_entry(index, ipath, "scheduler", NULL);
        if (listed < 0) {
            rc = listed;
        } else if (listed) {
            char *sp = join(m->path, "scheduler/scheduler_config.json");
            rc = read_json(sp, &m->scheduler_config);
            free(sp);
        } else {
            m->scheduler_config = model_default_scheduler_config(MODEL_LAYOUT_DIFFUSERS);
        }
    }
    static const char *const toks[2] = {"tokenizer", "tokenizer_2"};
    for (int k = 0; k < 2 && rc == 0; k++) {
        int listed = index_entry(index, ipath, toks[k], NULL);
        char *tdir = join(m->path, toks[k]);
        if (listed > 0 || is_dir(tdir)) *(k ? &m->tokenizer_2_dir : &m->tokenizer_dir) = tdir;
        else free(tdir);
        if (listed < 0) rc = listed;
    }
    if (rc == 0) {   /* SDXL base says true; a pipeline without the key (SD 1.x/2.x) has no such rule */
        const cJSON *fz = cJSON_GetObjectItemCaseSensitive(index, "force_zeros_for_empty_prompt");
        if (fz && !cJSON_IsBool(fz))
            rc = sd_error(SD_ERR_FORMAT, "%s: force_zeros_for_empty_prompt is not true or false", ipath);
        /* Absent from an SDXL index (one written by an older diffusers): the SDXL pipeline's own
         * default, true, is what diffusers applies when it loads that folder. */
        m->force_zeros_for_empty_prompt = fz ? cJSON_IsTrue(fz) : m->text_encoder_2.n_tensors > 0;
    }
    cJSON_Delete(index);
    free(ipath);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* LDM single files                                                                         */

/* The tensors of a .ckpt worth reading: all but those the name table ignores (EMA copies,
 * buffers; none of those rules needs the geometry, which is read from the kept names later). */
static int ldm_keep(const char *name) {
    names_geom_t g;
    memset(&g, 0, sizeof g);
    names_map_t map;
    names_ldm_to_diffusers(&map, name, &g);
    return map.target != NAMES_IGNORE;
}

static int open_ldm(model_t *m) {
    st_set_t *s = new_set(m);
    int rc;
    if (ckpt_is_path(m->path)) {   /* a PyTorch zip checkpoint: its state dict, same names */
        st_file_t f;
        if ((rc = ckpt_open(&f, m->path, ldm_keep))) return rc;
        st_set_adopt(s, &f);
    } else if ((rc = st_set_open(s, m->path))) {
        return rc;
    }
    m->n_sets++;

    int has_unet = 0, clip = 0, openclip = 0, emb0 = 0, emb1 = 0;
    for (int i = 0; i < s->n_tensors; i++) {
        const char *name = s->tensors[i]->name;
        has_unet |= !strncmp(name, "model.diffusion_model.", 22);
        clip |= !strncmp(name, "cond_stage_model.transformer.", 29);
        openclip |= !strncmp(name, "cond_stage_model.model.", 23);
        emb0 |= !strncmp(name, "conditioner.embedders.0.", 24);
        emb1 |= !strncmp(name, "conditioner.embedders.1.", 24);
    }
    if (clip + openclip + (emb0 || emb1) > 1)
        return sd_error(SD_ERR_FORMAT, "%s: unknown checkpoint layout: text encoder tensors of more than one "
                        "layout (%s%s%s)", m->path, clip ? "cond_stage_model.transformer.* " : "",
                        openclip ? "cond_stage_model.model.* " : "", emb0 || emb1 ? "conditioner.embedders.*" : "");
    if ((emb0 || emb1) && !(emb0 && emb1))
        return sd_error(SD_ERR_FORMAT, "%s: SDXL checkpoint without its %s text encoder (no %s tensors)", m->path,
                        emb0 ? "second" : "first", emb0 ? "conditioner.embedders.1.model.*"
                                                        : "conditioner.embedders.0.transformer.*");
    m->layout = emb0 ? MODEL_LAYOUT_LDM_SDXL : openclip ? MODEL_LAYOUT_LDM_SD2 : MODEL_LAYOUT_LDM_SD1;

    names_geom_t g;
    names_ldm_geometry(&g, s);
    builder_t b[N_PARTS] = {{0}, {0}, {0}, {0}};
    int n_unknown = 0;
    char unknown[512] = "";
    size_t ul = 0;
    for (int i = 0; i < s->n_tensors; i++) {
        const st_tensor_t *t = s->tensors[i];
        names_map_t map;
        names_ldm_to_diffusers(&map, t->name, &g);
        if (map.target == NAMES_IGNORE) continue;
        if (map.target == NAMES_UNKNOWN) {
            if (n_unknown++ < 4 && ul < sizeof unknown)
                ul += (size_t)snprintf(unknown + ul, sizeof unknown - ul, "%s'%s'", n_unknown > 1 ? ", " : "",
                                       t->name);
            continue;
        }
        builder_t *bb = &b[map.target == NAMES_UNET ? 0 : map.target == NAMES_VAE ? 1 : map.target == NAMES_TEXT ? 2 : 3];
        st_tensor_t v = *t;
        if (map.xform == NAMES_SQUEEZE) {
            /* 1x1 conv kernel [O, I, 1, 1] read as the linear [O, I] it is (same bytes) */
            if (!(t->ndim == 2 || (t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1))) {
                rc = sd_error(SD_ERR_SHAPE, "%s: tensor '%s' should be a 1x1 convolution kernel, has %d dims",
                              m->path, t->name, t->ndim);
                goto fail;
            }
            v.ndim = 2;
            v.shape[2] = v.shape[3] = 0;
            builder_add(bb, &v, map.name[0], t->name);
        } else if (map.xform == NAMES_SPLIT_QKV) {
            /* fused [3C, ...]: rows [0, C) are q, [C, 2C) k, [2C, 3C) v; views at row offsets */
            if (t->ndim < 1 || t->shape[0] % 3) {
                rc = sd_error(SD_ERR_SHAPE, "%s: tensor '%s': first dimension is not a multiple of 3",
                              m->path, t->name);
                goto fail;
            }
            v.shape[0] = t->shape[0] / 3;
            v.numel = t->numel / 3;
            v.nbytes = t->nbytes / 3;
            for (int q = 0; q < 3; q++) {
                v.data = (const unsigned char *)t->data + (size_t)q * v.nbytes;
                builder_add(bb, &v, map.name[q], t->name);
            }
        } else if (map.xform == NAMES_TRANSPOSE) {
            /* [in, out] stored for x @ P; the model's linear wants [out, in]: a transposed copy */
            if (t->ndim != 2) {
                rc = sd_error(SD_ERR_SHAPE, "%s: tensor '%s' should be a matrix, has %d dims", m->path, t->name,
                              t->ndim);
                goto fail;
            }
            const size_t es = st_dtype_size(t->dtype), rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
            unsigned char *dst = model_own(m, t->nbytes);
            if (!dst) {
                rc = sd_error(SD_ERR_NOMEM, "%s: out of memory transposing tensor '%s'", m->path, t->name);
                goto fail;
            }
            const unsigned char *src = t->data;
            for (size_t r = 0; r < rows; r++)
                for (size_t c = 0; c < cols; c++) memcpy(dst + (c * rows + r) * es, src + (r * cols + c) * es, es);
            v.shape[0] = t->shape[1], v.shape[1] = t->shape[0];
            v.data = dst;
            builder_add(bb, &v, map.name[0], t->name);
        } else {
            builder_add(bb, &v, map.name[0], t->name);
        }
    }
    if (n_unknown) {
        rc = sd_error(SD_ERR_FORMAT, "%s: unknown checkpoint layout (not Stable Diffusion 1.x/2.x/XL in "
                      "CompVis/LDM/sgm names): %d unexpected tensor%s, e.g. %s", m->path, n_unknown,
                      n_unknown == 1 ? "" : "s", unknown);
        goto fail;
    }
    if (!has_unet || !(clip || openclip || emb0)) {
        rc = sd_error(SD_ERR_FORMAT, "%s: unknown checkpoint layout: no %s tensors", m->path,
                      !has_unet ? "UNet (model.diffusion_model.*)"
                                : "text encoder (cond_stage_model.transformer.*, cond_stage_model.model.* or "
                                  "conditioner.embedders.*)");
        goto fail;
    }
    model_component_t *comps[N_PARTS];
    components(m, comps);
    for (int k = 0; k < N_PARTS; k++) {
        comps[k]->name = dup_str(PARTS[k].name);
        if ((rc = builder_finish(&b[k], comps[k], m->path))) goto fail;
    }
    const st_tensor_t *proj = component_find(&m->text_encoder_2, "text_projection.weight");
    if ((m->layout == MODEL_LAYOUT_LDM_SDXL && (rc = model_derive_text_config(&m->text_encoder_2, m->layout))) ||
        (rc = model_derive_unet_config(&m->unet, m->layout, proj && proj->ndim == 2 ? (int)proj->shape[0] : 0)) ||
        (m->vae.n_tensors && (rc = model_derive_vae_config(&m->vae, m->layout))) ||
        (rc = model_derive_text_config(&m->text_encoder, m->layout))) {
        rc = wrap(rc, m->path);
        goto fail;
    }
    m->scheduler_config = model_default_scheduler_config(m->layout);
    m->force_zeros_for_empty_prompt = m->layout == MODEL_LAYOUT_LDM_SDXL;   /* SDXL base's model_index.json */
    return 0;
fail:
    for (int k = 0; k < N_PARTS; k++) builder_free(&b[k]);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */

static int check_tokenizer(const char *dir) {
    static const char *const files[2] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        char *p = join(dir, files[i]);
        int ok = is_file(p);
        free(p);
        if (!ok) return sd_error(SD_ERR_IO, "%s: tokenizer folder has no %s", dir, files[i]);
    }
    return 0;
}

/* Every float tensor of a component must be finite: a NaN or Inf weight would turn every image
 * black, so it is named here. The stored bits are scanned unconverted (ops/finite.c). On the
 * default model (17 MB, in the page cache) model_open takes 2.9 ms with the scan, 0.5 ms without;
 * its pages are released after it, so they count in RSS only once the model uses them. */
static int component_check_finite(const model_component_t *c) {
    for (int i = 0; i < c->n_tensors; i++) {
        const st_tensor_t *t = &c->tensors[i];
        uint32_t mask = 0;
        if (t->dtype == ST_F32) mask = 0x7F800000u;
        else if (t->dtype == ST_F16) mask = 0x7C00u;
        else if (t->dtype == ST_BF16) mask = 0x7F80u;
        if (!mask || !t->numel) continue;
        const size_t n = (size_t)t->numel, k = first_nonfinite_raw(t->data, st_dtype_size(t->dtype), mask, n);
        if (k < n) return sd_error(SD_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value (NaN or Inf) at flat index %zu",
                                   c->name, t->name, k);
        st_release_pages(t, 0, t->nbytes);   /* training pages each base matrix out after its SVD */
    }
    return SD_OK;
}

int model_open(model_t *m, const char *path, const model_open_options_t *opt) {
    memset(m, 0, sizeof *m);
    struct stat sb;
    if (stat(path, &sb) != 0) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    m->path = dup_str(path);
    int rc;
    if (S_ISDIR(sb.st_mode)) {
        m->layout = MODEL_LAYOUT_DIFFUSERS;
        rc = open_folder(m);
    } else {
        size_t n = strlen(path);
        if ((n < 12 || strcmp(path + n - 12, ".safetensors") != 0) && !ckpt_is_path(path))
            rc = sd_error(SD_ERR_FORMAT, "%s: not a .safetensors file, a PyTorch .ckpt / .pt / .pth checkpoint or a "
                          "diffusers folder", path);
        else
            rc = open_ldm(m);
    }
    model_component_t *comps[N_PARTS];
    components(m, comps);
    for (int k = 0; k < N_PARTS && rc == 0; k++)
        if (comps[k]->name && (comps[k]->n_tensors || m->layout == MODEL_LAYOUT_DIFFUSERS)) {
            rc = component_validate(comps[k]);
            if (!rc) rc = component_check_finite(comps[k]);
            if (rc) rc = wrap(rc, path);
        }
    if (rc == 0 && opt && opt->scheduler_config) {
        cJSON *sc = NULL;
        rc = read_json(opt->scheduler_config, &sc);
        if (rc) rc = wrap(rc, "--scheduler-config");
        else cJSON_Delete(m->scheduler_config), m->scheduler_config = sc;
    }
    if (rc == 0 && (rc = model_decide_prediction(m, opt))) rc = wrap(rc, path);
    if (rc == 0 && opt && opt->tokenizer_dir) {
        free(m->tokenizer_dir);
        m->tokenizer_dir = dup_str(opt->tokenizer_dir);
        /* a single SDXL file carries no tokenizer_2: it is the same vocabulary (the pipeline pads
         * it with "!"); a folder keeps its own tokenizer_2/ */
        if (m->layout == MODEL_LAYOUT_LDM_SDXL) {
            free(m->tokenizer_2_dir);
            m->tokenizer_2_dir = dup_str(opt->tokenizer_dir);
        }
    }
    if (rc == 0 && m->tokenizer_dir) rc = check_tokenizer(m->tokenizer_dir);
    if (rc == 0 && m->tokenizer_2_dir) rc = check_tokenizer(m->tokenizer_2_dir);
    if (rc) {
        model_close(m);
        return rc;
    }
    for (int k = 0; k < N_PARTS; k++)   /* absent components keep their name (n_tensors 0, no config) */
        if (!comps[k]->name) comps[k]->name = dup_str(PARTS[k].name);
    return 0;
}
