/* Random initialisation of model folders (see init.h): the tensor list from the models' own
 * layer registries (component_registry), per-kind initial values from per-tensor Philox streams,
 * the size/FLOP statistics of a config, and the writing of the diffusers folder. */
#include "models/init.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "base/json.h"
#include "base/str.h"
#include "base/rng.h"
#include "io/model.h"
#include "io/outputs.h"
#include "io/safetensors.h"
#include "models/tokenizer.h"


/* ---------------------------------------------------------------- the tensor list */

typedef struct {
    char *name;
    int ndim;
    int64_t shape[4];
    int64_t numel;
    layer_spec_t spec;   /* the layer the tensor belongs to */
    int part;            /* 0 weight / gain, 1 bias / offset */
} tspec_t;

typedef struct {
    tspec_t *t;
    int n, cap;
} tlist_t;

static int collect(void *ctx, const layer_spec_t *spec, int part, const char *name, int ndim, const int64_t *shape) {
    tlist_t *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        tspec_t *nt = realloc(l->t, (size_t)l->cap * sizeof *nt);
        SD_CHECK(nt, "out of memory");
        l->t = nt;
    }
    tspec_t *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    size_t n = strlen(name);
    t->name = sd_xmalloc(n + 1);
    memcpy(t->name, name, n + 1);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i], t->numel *= shape[i];
    t->spec = *spec;
    t->part = part;
    return 0;
}

static void tlist_free(tlist_t *l) {
    for (int i = 0; i < l->n; i++) free(l->t[i].name);
    free(l->t);
    memset(l, 0, sizeof *l);
}

/* The tensors of the component's layers, as its model's builder describes them. */
static int list_tensors(const char *comp, cJSON *cfg, tlist_t *l) {
    model_component_t c = {.name = (char *)comp, .config = cfg};
    layer_registry_t r = {0};
    int rc = component_registry(&c, &r);
    if (!rc) rc = layer_registry_tensors(&r, collect, l);
    layer_registry_free(&r);
    if (rc) tlist_free(l);
    return rc;
}

/* ---------------------------------------------------------------- initial values */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static uint64_t mix64(uint64_t z) {   /* splitmix64's finaliser */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int model_init_tensor(float *dst, const char *component, const layer_spec_t *spec, int part, const char *name,
                      int ndim, const int64_t *shape, uint64_t seed) {
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    char key[512];
    snprintf(key, sizeof key, "%s/%s", component, name);
    rng_t r;
    rng_init(&r, mix64(seed ^ mix64(fnv1a(key))));
    if (spec->kind == LAYER_NORM || (part == 1 && spec->init_std > 0)) {
        /* GroupNorm / LayerNorm gain 1 and offset 0; transformers zeroes its linears' biases */
        for (int64_t i = 0; i < numel; i++) dst[i] = part ? 0.0f : 1.0f;
        return 0;
    }
    if (spec->init_std > 0) {   /* transformers' CLIP init, the std from the model's registry */
        const double std = spec->init_std;
        rng_fill_normal(&r, dst, (size_t)numel);
        for (int64_t i = 0; i < numel; i++) dst[i] = (float)(dst[i] * std);
        return 0;
    }
    if (spec->kind == LAYER_EMBEDDING)   /* PyTorch's N(0, 1): no model here starts that way */
        return sd_error(SD_ERR_ARG, "%s: no initialisation rule for the embedding '%s'", component, spec->name);
    /* diffusers models: PyTorch's defaults, weight and bias U(-1/sqrt(fan_in), +1/sqrt(fan_in)) */
    const int64_t fan_in = layer_spec_fan_in(spec);
    double bound = 1.0 / sqrt((double)fan_in);
    for (int64_t i = 0; i < numel; i++) dst[i] = (float)((2.0 * rng_uniform(&r) - 1.0) * bound);
    return 0;
}

/* ---------------------------------------------------------------- statistics */

typedef struct {
    int levels, size;
    int tokens;   /* text context: the text encoder's max_position_embeddings, at most 77 */
    double flops;
    int64_t params;
    int n;
} flops_ctx_t;

/* Resolution (side) at which a UNet tensor's module runs; 1 for the time-embedding path. */
static int unet_side(const flops_ctx_t *f, const char *name) {
    int i;
    if (strstr(name, "time_emb") || !strncmp(name, "add_embedding.", 14)) return 1;   /* per sample */
    if (sscanf(name, "down_blocks.%d.", &i) == 1)
        return f->size >> (i + (strstr(name, ".downsamplers.") != NULL));   /* stride 2: output side */
    if (sscanf(name, "up_blocks.%d.", &i) == 1)
        return f->size >> (f->levels - 1 - i - (strstr(name, ".upsamplers.") != NULL));
    if (!strncmp(name, "mid_block.", 10)) return f->size >> (f->levels - 1);
    return f->size;   /* conv_in, conv_out, conv_norm_out */
}

static int unet_flops(void *ctx, const char *name, int ndim, const int64_t *shape) {
    flops_ctx_t *f = ctx;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    f->params += numel;
    f->n++;
    if (ndim < 2) return 0;
    double side = unet_side(f, name), hw = side * side;
    double tokens = hw;
    if (strstr(name, ".attn2.to_k.") || strstr(name, ".attn2.to_v.")) tokens = f->tokens;
    f->flops += 2.0 * (double)numel * tokens;
    if (str_ends_with(name, ".attn1.to_q.weight")) f->flops += 4.0 * hw * hw * (double)shape[0];
    if (str_ends_with(name, ".attn2.to_q.weight")) f->flops += 4.0 * hw * f->tokens * (double)shape[0];
    return 0;
}

static int text_flops(void *ctx, const char *name, int ndim, const int64_t *shape) {
    flops_ctx_t *f = ctx;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    f->params += numel;
    f->n++;
    if (ndim == 2 && !strstr(name, "embeddings.")) f->flops += 2.0 * (double)numel * f->tokens;
    if (str_ends_with(name, ".q_proj.weight")) f->flops += 4.0 * f->tokens * f->tokens * (double)shape[0];
    return 0;
}

static int count_only(void *ctx, const char *name, int ndim, const int64_t *shape) {
    flops_ctx_t *f = ctx;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    f->params += numel;
    f->n++;
    return 0;
}

static cJSON *component_config(const cJSON *config, const char *comp) {
    cJSON *c = cJSON_GetObjectItemCaseSensitive(config, comp);
    return cJSON_IsObject(c) ? c : NULL;
}

/* A text encoder config ("text_encoder" or "text_encoder_2") with vocab_size filled in when
 * absent (a copy; caller frees). */
static int text_config(const cJSON *config, const char *comp, int vocab_size, cJSON **out) {
    cJSON *t = component_config(config, comp);
    if (!t) return sd_error(SD_ERR_FORMAT, "model config: no \"%s\" object", comp);
    cJSON *c = cJSON_Duplicate(t, 1);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "vocab_size");
    if (!v || cJSON_IsNull(v)) {
        if (vocab_size < 1) {
            cJSON_Delete(c);
            return sd_error(SD_ERR_FORMAT, "%s config: no vocab_size (set it, or pass a tokenizer to take "
                            "it from)", comp);
        }
        cJSON_DeleteItemFromObjectCaseSensitive(c, "vocab_size");
        cJSON_AddNumberToObject(c, "vocab_size", vocab_size);
    }
    *out = c;
    return 0;
}

int model_init_stats(const cJSON *config, int vocab_size, int fp16, model_init_stats_t *st) {
    memset(st, 0, sizeof *st);
    cJSON *unet = component_config(config, "unet");
    if (!unet) return sd_error(SD_ERR_FORMAT, "model config: no \"unet\" object");
    model_component_t uc = {.name = "unet", .config = unet};
    int ch[16], n = 0, rc;
    if ((rc = config_int_array(&uc, "block_out_channels", ch, 16, &n)) ||
        (rc = config_int_or(&uc, "sample_size", 32, &st->sample_size)))
        return rc;
    cJSON *tc;
    if ((rc = text_config(config, "text_encoder", vocab_size, &tc))) return rc;
    model_component_t t = {.name = "text_encoder", .config = tc};
    int tokens = 77;
    if ((rc = config_int_or(&t, "max_position_embeddings", 77, &tokens))) {
        cJSON_Delete(tc);
        return rc;
    }
    if (tokens > 77) tokens = 77;
    st->tokens = tokens;
    flops_ctx_t f = {.levels = n, .size = st->sample_size, .tokens = tokens};
    if ((rc = component_expected_tensors(&uc, unet_flops, &f))) {
        cJSON_Delete(tc);
        return rc;
    }
    st->n_tensors[0] = f.n, st->params[0] = f.params, st->flops[0] = f.flops;
    f = (flops_ctx_t){.tokens = tokens};
    rc = component_expected_tensors(&t, text_flops, &f);
    cJSON_Delete(tc);
    if (rc) return rc;
    st->n_tensors[1] = f.n, st->params[1] = f.params, st->flops[1] = f.flops;
    if (component_config(config, "text_encoder_2")) {   /* SDXL: the second encoder on the same tokens */
        if ((rc = text_config(config, "text_encoder_2", vocab_size, &tc))) return rc;
        model_component_t t2 = {.name = "text_encoder_2", .config = tc};
        f = (flops_ctx_t){.tokens = tokens};
        rc = component_expected_tensors(&t2, text_flops, &f);
        cJSON_Delete(tc);
        if (rc) return rc;
        st->n_tensors[3] = f.n, st->params[3] = f.params, st->flops[3] = f.flops;
    }
    cJSON *vae = component_config(config, "vae");
    if (vae) {
        model_component_t vc = {.name = "vae", .config = vae};
        f = (flops_ctx_t){0};
        if ((rc = component_expected_tensors(&vc, count_only, &f))) return rc;
        st->n_tensors[2] = f.n, st->params[2] = f.params;
    }
    st->bytes = (st->params[0] + st->params[1] + st->params[2] + st->params[3]) * (fp16 ? 2 : 4);
    return 0;
}

/* ---------------------------------------------------------------- files */

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = sd_xmalloc(n);
    snprintf(s, n, "%s/%s", a, b);
    return s;
}

static int make_dir(const char *path) {
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return sd_error(SD_ERR_IO, "%s: cannot create the folder: %s", path, strerror(errno));
    return 0;
}

static int write_bytes(const char *path, const void *data, size_t n) {
    int rc = outputs_check(path);   /* not a device, folder or input */
    if (rc) return rc;
    FILE *f = fopen(path, "wb");
    if (!f) return sd_error(SD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    int bad = fwrite(data, 1, n, f) != n;
    bad |= fclose(f) != 0;
    return bad ? sd_error(SD_ERR_IO, "%s: write error", path) : 0;
}

static int write_json_file(const char *dir, const char *name, const cJSON *j) {
    char *s = cJSON_Print(j);
    SD_CHECK(s, "out of memory");
    size_t n = strlen(s);
    char *t = sd_xmalloc(n + 2);
    memcpy(t, s, n);
    t[n] = '\n';
    char *path = join(dir, name);
    int rc = write_bytes(path, t, n + 1);
    free(path);
    free(t);
    free(s);
    return rc;
}

static int copy_file(const char *src, const char *dst, int optional) {
    FILE *f = fopen(src, "rb");
    if (!f) {
        if (optional && errno == ENOENT) return 0;
        return sd_error(SD_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    }
    size_t cap = 1 << 16, n = 0, got;
    char *buf = sd_xmalloc(cap);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            SD_CHECK(nb, "out of memory");
            buf = nb;
        }
    }
    int err = ferror(f);
    fclose(f);
    int rc = err ? sd_error(SD_ERR_IO, "%s: read error", src) : write_bytes(dst, buf, n);
    free(buf);
    return rc;
}

/* Sets model_max_length in DIR/tokenizer_config.json (written fresh when the tokenizer had none). */
static int set_model_max_length(const char *dir, int n) {
    char *path = join(dir, "tokenizer_config.json");
    cJSON *c = NULL;
    int rc = access(path, F_OK) == 0 ? model_init_read_config(path, &c) : 0;
    free(path);
    if (rc) return rc;
    if (!c) c = cJSON_CreateObject();
    cJSON_DeleteItemFromObjectCaseSensitive(c, "model_max_length");
    cJSON_AddNumberToObject(c, "model_max_length", n);
    rc = write_json_file(dir, "tokenizer_config.json", c);
    cJSON_Delete(c);
    return rc;
}

/* Sets pad_token in DIR/special_tokens_map.json (which the tokenizer reads over tokenizer_config.json;
 * written fresh when the tokenizer had none). */
static int set_pad_token(const char *dir, const char *pad) {
    char *path = join(dir, "special_tokens_map.json");
    cJSON *c = NULL;
    int rc = access(path, F_OK) == 0 ? model_init_read_config(path, &c) : 0;
    free(path);
    if (rc) return rc;
    if (!c) c = cJSON_CreateObject();
    cJSON_DeleteItemFromObjectCaseSensitive(c, "pad_token");
    cJSON_AddStringToObject(c, "pad_token", pad);
    rc = write_json_file(dir, "special_tokens_map.json", c);
    cJSON_Delete(c);
    return rc;
}

static void set_string(cJSON *o, const char *key, const char *value, int overwrite) {
    if (cJSON_GetObjectItemCaseSensitive(o, key)) {
        if (!overwrite) return;
        cJSON_DeleteItemFromObjectCaseSensitive(o, key);
    }
    cJSON_AddStringToObject(o, key, value);
}

/* Initialises every tensor of one component and writes its safetensors file. */
static int write_weights(const char *comp, cJSON *cfg, const char *path, const model_init_options_t *opt) {
    tlist_t l = {0};
    int rc = list_tensors(comp, cfg, &l);
    if (rc) return rc;
    st_writer_t *w = st_writer_new();
    void **bufs = sd_xcalloc((size_t)l.n + 1, sizeof *bufs);
    for (int i = 0; i < l.n && !rc; i++) {
        const tspec_t *t = &l.t[i];
        float *v = sd_xmalloc((size_t)t->numel * sizeof *v + 1);
        rc = model_init_tensor(v, comp, &t->spec, t->part, t->name, t->ndim, t->shape, opt->seed);
        if (!rc && opt->fp16) {
            uint16_t *h = sd_xmalloc((size_t)t->numel * sizeof *h + 1);
            for (int64_t k = 0; k < t->numel; k++) h[k] = st_f32_to_f16(v[k]);
            free(v);
            bufs[i] = h;
        } else {
            bufs[i] = v;
        }
        if (!rc) rc = st_writer_add(w, t->name, opt->fp16 ? ST_F16 : ST_F32, t->ndim, t->shape, bufs[i]);
    }
    if (!rc) rc = st_writer_meta(w, "format", "pt");
    if (!rc) rc = st_writer_save(w, path);
    st_writer_free(w);
    for (int i = 0; i < l.n; i++) free(bufs[i]);
    free(bufs);
    tlist_free(&l);
    return rc;
}

static int dir_nonempty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    int any = 0;
    struct dirent *e;
    while (!any && (e = readdir(d)))
        any = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return any;
}

static int write_component(const char *out_dir, const char *comp, cJSON *cfg, const char *cls, const char *cfg_name,
                           const char *weights, const model_init_options_t *opt) {
    char *dir = join(out_dir, comp);
    int rc = make_dir(dir);
    if (!rc && cls) {
        if (!strncmp(comp, "text_encoder", 12)) {
            if (!cJSON_GetObjectItemCaseSensitive(cfg, "architectures")) {
                const char *arch = cls;
                cJSON_AddItemToObject(cfg, "architectures", cJSON_CreateStringArray(&arch, 1));
            }
            set_string(cfg, "model_type", "clip_text_model", 0);
            set_string(cfg, "torch_dtype", opt->fp16 ? "float16" : "float32", 1);
        } else {
            set_string(cfg, "_class_name", cls, 0);
        }
    }
    if (!rc) rc = write_json_file(dir, cfg_name, cfg);
    if (!rc && weights) {
        char *p = join(dir, weights);
        rc = write_weights(comp, cfg, p, opt);
        free(p);
    }
    free(dir);
    return rc;
}

int model_init(const cJSON *config, const char *out_dir, const model_init_options_t *opt,
               model_init_stats_t *stats) {
    model_init_options_t o = opt ? *opt : (model_init_options_t){0};
    if (!cJSON_IsObject(config)) return sd_error(SD_ERR_FORMAT, "model config: not a JSON object");
    for (const cJSON *e = config->child; e; e = e->next)
        if (strcmp(e->string, "unet") && strcmp(e->string, "text_encoder") && strcmp(e->string, "scheduler") &&
            strcmp(e->string, "vae") && strcmp(e->string, "text_encoder_2") && e->string[0] != '_')
            return sd_error(SD_ERR_FORMAT, "model config: unknown component \"%s\" (unet, text_encoder, "
                            "text_encoder_2, scheduler, vae)", e->string);
    const cJSON *sched = component_config(config, "scheduler");
    if (!sched) return sd_error(SD_ERR_FORMAT, "model config: no \"scheduler\" object");
    int vocab = 0, rc = 0, special[3] = {0, 0, 0};
    clip_tokenizer_t *tok = NULL;
    if (o.tokenizer_dir) {
        if ((rc = tokenizer_load(&tok, o.tokenizer_dir))) return rc;
        vocab = tokenizer_vocab_size(tok);
        special[0] = tokenizer_bos_id(tok), special[1] = tokenizer_eos_id(tok), special[2] = tokenizer_pad_id(tok);
        tokenizer_free(tok);
    }
    model_init_stats_t st;
    if ((rc = model_init_stats(config, vocab, o.fp16, &st))) return rc;
    cJSON *tc = NULL, *uc = cJSON_Duplicate(component_config(config, "unet"), 1), *sc = cJSON_Duplicate(sched, 1);
    cJSON *vae = component_config(config, "vae"), *vc = vae ? cJSON_Duplicate(vae, 1) : NULL, *tc2 = NULL;
    const int xl = component_config(config, "text_encoder_2") != NULL;
    if ((rc = text_config(config, "text_encoder", vocab, &tc))) goto done;
    if (xl && (rc = text_config(config, "text_encoder_2", vocab, &tc2))) goto done;
    for (int k = 0; k < 1 + xl; k++) {
        cJSON *t = k ? tc2 : tc;
        const cJSON *tv = cJSON_GetObjectItemCaseSensitive(t, "vocab_size");
        if (vocab > 0 && cJSON_IsNumber(tv) && tv->valuedouble < vocab) {
            rc = sd_error(SD_ERR_FORMAT, "%s config: vocab_size %d is smaller than the tokenizer's %d ids (%s)",
                          k ? "text_encoder_2" : "text_encoder",
                          (int)floor(tv->valuedouble > -1e9 ? tv->valuedouble : -1e9), vocab, o.tokenizer_dir);
            goto done;
        }
        if (vocab > 0) {   /* transformers pools at eos_token_id (2 means CLIP's argmax): make them the tokenizer's */
            static const char *const keys[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
            for (int i = 0; i < 3; i++) {
                cJSON_DeleteItemFromObjectCaseSensitive(t, keys[i]);
                cJSON_AddNumberToObject(t, keys[i], special[i]);
            }
        }
    }
    if (!o.force && dir_nonempty(out_dir)) {
        rc = sd_error(SD_ERR_ARG, "%s: the folder exists and is not empty (--force writes into it)", out_dir);
        goto done;
    }
    if ((rc = make_dir(out_dir))) goto done;
    if ((rc = write_component(out_dir, "unet", uc, "UNet2DConditionModel", "config.json",
                              "diffusion_pytorch_model.safetensors", &o)) ||
        (rc = write_component(out_dir, "text_encoder", tc, "CLIPTextModel", "config.json", "model.safetensors", &o)) ||
        (tc2 && (rc = write_component(out_dir, "text_encoder_2", tc2, "CLIPTextModelWithProjection", "config.json",
                                      "model.safetensors", &o))) ||
        (vc && (rc = write_component(out_dir, "vae", vc, "AutoencoderKL", "config.json",
                                     "diffusion_pytorch_model.safetensors", &o))))
        goto done;
    set_string(sc, "_class_name", "DDIMScheduler", 0);
    if ((rc = write_component(out_dir, "scheduler", sc, NULL, "scheduler_config.json", NULL, &o))) goto done;
    for (int k = 0; o.tokenizer_dir && k < 1 + xl; k++) {
        char *dir = join(out_dir, k ? "tokenizer_2" : "tokenizer");
        static const char *const files[4] = {"vocab.json", "merges.txt", "special_tokens_map.json",
                                             "tokenizer_config.json"};
        rc = make_dir(dir);
        for (int i = 0; i < 4 && !rc; i++) {
            char *s = join(o.tokenizer_dir, files[i]), *d = join(dir, files[i]);
            rc = copy_file(s, d, i >= 2);
            free(s);
            free(d);
        }
        /* a context shorter than CLIP's 77: the tokenizer must pad to it too (transformers reads
         * model_max_length), so the copied config says the model's length */
        const cJSON *mp = cJSON_GetObjectItemCaseSensitive(tc, "max_position_embeddings");
        if (!rc && cJSON_IsNumber(mp) && mp->valueint < TOKENIZER_MAX_LENGTH) rc = set_model_max_length(dir, mp->valueint);
        if (!rc && k) rc = set_pad_token(dir, "!");   /* SDXL's tokenizer_2 pads with "!" (id 0) */
        free(dir);
        if (rc) goto done;
    }
    cJSON *index = cJSON_CreateObject();
    cJSON_AddStringToObject(index, "_class_name", xl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline");
    cJSON_AddStringToObject(index, "_diffusers_version", "0.21.0");
    if (xl) cJSON_AddBoolToObject(index, "force_zeros_for_empty_prompt", 1);
    const char *pair[2];
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(sc, "_class_name");
    pair[0] = "diffusers", pair[1] = cJSON_IsString(cls) ? cls->valuestring : "DDIMScheduler";
    cJSON_AddItemToObject(index, "scheduler", cJSON_CreateStringArray(pair, 2));
    pair[0] = "transformers", pair[1] = "CLIPTextModel";
    cJSON_AddItemToObject(index, "text_encoder", cJSON_CreateStringArray(pair, 2));
    if (tc2) {
        pair[1] = "CLIPTextModelWithProjection";
        cJSON_AddItemToObject(index, "text_encoder_2", cJSON_CreateStringArray(pair, 2));
    }
    if (o.tokenizer_dir) {
        pair[1] = "CLIPTokenizer";
        cJSON_AddItemToObject(index, "tokenizer", cJSON_CreateStringArray(pair, 2));
        if (tc2) cJSON_AddItemToObject(index, "tokenizer_2", cJSON_CreateStringArray(pair, 2));
    }
    pair[0] = "diffusers", pair[1] = "UNet2DConditionModel";
    cJSON_AddItemToObject(index, "unet", cJSON_CreateStringArray(pair, 2));
    if (vc) {
        pair[1] = "AutoencoderKL";
        cJSON_AddItemToObject(index, "vae", cJSON_CreateStringArray(pair, 2));
    } else {   /* pixel space: the UNet works on RGB images directly */
        cJSON *nul = cJSON_CreateArray();
        cJSON_AddItemToArray(nul, cJSON_CreateNull());
        cJSON_AddItemToArray(nul, cJSON_CreateNull());
        cJSON_AddItemToObject(index, "vae", nul);
    }
    rc = write_json_file(out_dir, "model_index.json", index);
    cJSON_Delete(index);
    if (!rc) {   /* what was written must load: the loader validates every tensor and shape */
        model_t m;
        rc = model_open(&m, out_dir, NULL);
        if (!rc) model_close(&m);
    }
    if (!rc && stats) *stats = st;
done:
    cJSON_Delete(tc);
    cJSON_Delete(tc2);
    cJSON_Delete(uc);
    cJSON_Delete(sc);
    cJSON_Delete(vc);
    return rc;
}

int model_init_read_config(const char *path, cJSON **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 14, n = 0, got;
    char *buf = sd_xmalloc(cap + 1);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            SD_CHECK(nb, "out of memory");
            buf = nb;
        }
    }
    fclose(f);
    buf[n] = '\0';
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return sd_error(SD_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = j;
    return 0;
}
