/* `svdiff shifts <verb>`: the shift toolbox on files (info, combine, scale, limit-rank, mix,
 * convert, to-lora). A training output folder (spectral_shifts.safetensors + spectral_shifts_te.safetensors)
 * is handled as a pair: every verb applies to both files and -o names a folder. The set
 * arithmetic lives in src/shifts/toolbox.c; this file does files, flags and printing. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "svdiff.h"   /* combine, scale, limit-rank, mix: shift sets, the toolbox, the per-part view */

/* Not in the public API yet, so still the library's own calls: info's statistics (norms, blocks,
 * singular values from the SVD cache), convert and to-lora. */

#include "base/error.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "io/model.h"
#include "io/safetensors.h"
#include "pipeline/lora_export.h"
#include "shifts/shifts.h"
#include "shifts/toolbox.h"

#define PATHMAX 4096
enum { UNET = 0, TE = 1 };
static const char *const PART_FILE[2] = {"spectral_shifts.safetensors", "spectral_shifts_te.safetensors"};

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff shifts <verb> [options]\n\n"
            "Works on shift files after training (docs/method.md section 6). IN is a shift file or a training\n"
            "output folder; with a folder its UNet and text-encoder files are processed together and -o\n"
            "names a folder. Outputs are written atomically, keep the metadata of their (first) input and\n"
            "add a 'history' entry; a folder's two files share a new pair_id. A folder whose two files were\n"
            "not written together (their pair_id differs: an interrupted save, or two runs' files) is refused\n"
            "unless --force.\n\n"
            "verbs:\n"
            "  info IN [--json] [--svd-cache FILE|DIR] [--model M] [--top K]\n"
            "      base-model hash, shift and value counts, size on disk, L2 norm of the shifts per block\n"
            "      (down_blocks.i / mid_block / up_blocks.i / text-encoder layers / other), the K largest\n"
            "      shifts (default 10): relative |delta_i|/sigma_i when singular values are known (an SVD cache\n"
            "      file, or --model M whose hash names the file in the cache folder), else |delta_i|; metadata\n"
            "  combine A B ... [--weights a,b,...] [--force] -o OUT\n"
            "      task arithmetic: sum_k w_k delta_k (weights default to 1: the sum); the inputs must share\n"
            "      the base model (--force ignores base_model_hash) and the layer set. Weight 0 skips a file,\n"
            "      weight 1 copies exactly, so --weights 1,0 gives A bit for bit\n"
            "  scale IN S -o OUT\n"
            "      delta * S for every shift (S = 1 copies bit for bit)\n"
            "  limit-rank IN R -o OUT\n"
            "      keeps the shifts of the R largest singular values of every matrix and zeroes the rest\n"
            "      (norm shifts untouched, lengths kept so the file loads as before); prints the size a\n"
            "      truncated layout would have. R >= rank copies\n"
            "  mix --from A --layers SEL [SEL...] --rest B [--levels N] [--latent N] [--force] -o OUT\n"
            "      shifts selected by any SEL come from A, all others from B. SEL is\n"
            "        geometry  the SD 1.x preset 'down_blocks.2.attentions.1 .. mid_block.attentions.0' taken in\n"
            "                  forward order: down_blocks.2.attentions.1, down_blocks.2.downsamplers.0,\n"
            "                  down_blocks.3 (its resnets), mid_block.resnets.0, mid_block.attentions.0\n"
            "                  (mid_block.resnets.1 comes after the attention and is not included); the\n"
            "                  text encoder is never selected by it\n"
            "        res:HxW   modules at that latent resolution: for N levels (default 4) and a latent side\n"
            "                  L (default 64, a 512 px SD 1.x model) down_blocks.i at L>>i, up_blocks.i at\n"
            "                  L>>(N-1-i), mid_block at L>>(N-1), conv_in/conv_norm_out/conv_out at L (a\n"
            "                  block's down/upsampler counts with its block); e.g. res:16x16 = down_blocks.2 +\n"
            "                  up_blocks.1\n"
            "        GLOB      fnmatch pattern on the module path; it also selects submodules, so\n"
            "                  'up_blocks.1' = 'up_blocks.1' and 'up_blocks.1.*'; '*attn2*' all cross-attention\n"
            "      --layers may repeat, and further words after it are selectors too. A selector that\n"
            "      selects nothing is an error\n"
            "  convert IN --dtype fp16|fp32 [--format native|svdiff-pytorch] [--model M] [--force] -o OUT\n"
            "      stores the values as F16 or F32, norm shifts in the form they have. --format svdiff-pytorch\n"
            "      writes a file svdiff-pytorch's loader accepts: norm shifts in its scalar form [1] (gain =\n"
            "      gamma*ReLU(|gamma|+delta)/|gamma|), every other shift checked against the base model's\n"
            "      modules (delta [min(out, in*kh*kw)]). One number cannot hold a per-element [C] shift, so that\n"
            "      is a least-squares fit: the share of each norm shift lost is printed per norm and overall, and\n"
            "      above 1e-4 overall nothing is written unless --force (train with --norm-shift scalar for an\n"
            "      exact file). --format native turns scalar norm shifts into the exact per-element form. Both\n"
            "      need --model M (the norm gains gamma and the module shapes)\n"
            "  to-lora IN --model M [--rank R] [--energy E] [--format kohya|diffusers] [--dtype fp32|fp16|bf16]\n"
            "          [--no-norms] [--no-embeddings] [--svd-cache DIR|none] [--check] [--force] -o OUT.safetensors\n"
            "      exports the shifts as one LoRA file (UNet and text encoder together) for ComfyUI, A1111/Forge\n"
            "      or diffusers. A shifted matrix differs from the base by dW = U diag(ds) V^T, ds = ReLU(S+delta)-S;\n"
            "      the LoRA keeps the entries of largest |ds|: up = U_r diag(ds_r), down = V_r^T, alpha = r, so a\n"
            "      strength of 1 adds the kept part of dW exactly (convs: down [r, in, kh, kw], up [out, r, 1, 1]).\n"
            "      U, S, V are the base model's SVD (--model M, the model the shifts were trained on; factors from\n"
            "      the SVD cache, default $SVDIFF_CACHE_DIR or ~/.cache/svdiff, none: always recomputed).\n"
            "      --energy E   per layer, the smallest rank keeping the fraction E of ||dW||^2 = sum ds^2\n"
            "                   (0 < E <= 1; default 0.99, or 1 when --rank is given alone)\n"
            "      --rank R     at most R per layer (with --energy: the smaller of the two ranks)\n"
            "      --format     kohya (default): lora_unet_<module with _>.lora_down.weight / .lora_up.weight /\n"
            "                   .alpha and lora_te_... (what ComfyUI and A1111 load); diffusers: unet.<module>.\n"
            "                   lora_A.weight / lora_B.weight, text_encoder.<module>... (diffusers' load_lora_weights;\n"
            "                   one alpha per component there, so layers are padded with zeros to the largest rank)\n"
            "      --dtype      of the factors (default fp16; alpha is always fp32)\n"
            "      norm-gain shifts are not matrices: kohya writes their full gain difference as lora_unet_<norm>.diff\n"
            "      (read by ComfyUI and by A1111's LyCORIS-aware Lora extension); --no-norms leaves them out with a\n"
            "      warning (needed for --format diffusers). --no-embeddings leaves out text-encoder embedding shifts\n"
            "      (ComfyUI and A1111 do not apply LoRA to embeddings). Shifts of another base model are refused\n"
            "      unless --force. Prints per component the kept energy, the rank range, the layer count and size;\n"
            "      --check also measures the written values (in their dtype) against the exact shifted weights:\n"
            "      ||W_lora - W_shifted||_F / ||W_shifted - W_base||_F over the component's shifted modules (one\n"
            "      dense product per layer: seconds on SD 1.5 scale models)\n"
            "Spellings shared with the other verbs: -o, --output OUT (also --output-dir), --model M (also\n"
            "--pretrained-model-name-or-path), --force; -h, --help: this help.\n");
}

/* ---------------------------------------------------------------------------------------
 * inputs and outputs: a file, or a folder with the two parts */

typedef struct {
    int is_dir;
    char file[2][PATHMAX];   /* "" when the part is absent */
    shift_set_t set[2];
    st_dtype_t dtype[2];     /* F16 when every tensor of the file is F16, else F32 */
} target_t;

static int file_dtype(const char *file, st_dtype_t *dt) {
    st_file_t f;
    int rc = st_open(&f, file);
    if (rc) return rc;
    int all16 = f.n_tensors > 0;
    for (int i = 0; i < f.n_tensors; i++) all16 &= f.tensors[i].dtype == ST_F16;
    *dt = all16 ? ST_F16 : ST_F32;
    st_close(&f);
    return SD_OK;
}

static void target_free(target_t *t) {
    for (int p = 0; p < 2; p++) shiftset_free(&t->set[p]);
}

/* force: use a folder's two files even when they were not written together (st_pair_check) */
static int target_load(target_t *t, const char *arg, int force) {
    memset(t, 0, sizeof *t);
    struct stat st;
    t->is_dir = stat(arg, &st) == 0 && S_ISDIR(st.st_mode);
    int rc = shift_files_resolve(arg, t->file[UNET], t->file[TE], PATHMAX);
    if (!rc) rc = st_pair_check(t->file[UNET], t->file[TE], force);
    for (int p = 0; p < 2 && !rc; p++) {
        shiftset_init(&t->set[p]);
        if (!t->file[p][0]) continue;
        rc = shiftset_load(&t->set[p], t->file[p]);
        if (!rc) rc = file_dtype(t->file[p], &t->dtype[p]);
    }
    if (rc) target_free(t);
    return rc;
}

static int nparts(const target_t *t) { return t->is_dir ? 2 : 1; }

static int write_outputs(const char *out, int is_dir, shift_set_t *sets, const int *present,
                         const st_dtype_t *dtype) {
    char file[2][PATHMAX];
    struct stat st;
    if (is_dir && !stat(out, &st) && !S_ISDIR(st.st_mode))
        return sd_error(SD_ERR_IO, "%s: exists and is not a folder (the inputs are folders)", out);
    if (is_dir && mkdir(out, 0777) != 0 && errno != EEXIST)
        return sd_error(SD_ERR_IO, "%s: cannot create the output folder: %s", out, strerror(errno));
    for (int p = 0; p < 2; p++)
        if (is_dir) snprintf(file[p], sizeof file[p], "%.*s/%s", PATHMAX - 40, out, PART_FILE[p]);
        else snprintf(file[p], sizeof file[p], "%s", out);
    int rc = SD_OK;
    if (is_dir && present[UNET] && present[TE])   /* both parts of a folder: one pair id */
        rc = shiftset_save_pair(&sets[UNET], file[UNET], dtype[UNET], &sets[TE], file[TE], dtype[TE]);
    else
        for (int p = 0; p < (is_dir ? 2 : 1) && !rc; p++)
            if (present[p]) rc = shiftset_save(&sets[p], file[p], dtype[p]);
    if (rc) return rc;
    for (int p = 0; p < (is_dir ? 2 : 1); p++)
        if (present[p]) printf("wrote %s (%d shifts, %s)\n", file[p], sets[p].n, st_dtype_name(dtype[p]));
    return SD_OK;
}

static int fail(int rc) {
    fprintf(stderr, "svdiff shifts: %s\n", sd_last_error());
    return rc == SD_ERR_ARG ? 2 : 1;
}

/* common option parsing: -o plus verb flags; returns the getopt code or -1 at the end */
enum { O_JSON = 256, O_WEIGHTS, O_FROM, O_LAYERS, O_REST, O_LEVELS, O_LATENT, O_DTYPE, O_FORMAT,
       O_CACHE, O_TOP, O_RANK, O_ENERGY, O_NO_NORMS, O_NO_EMB, O_CHECK };
static const struct option OPTS[] = {   /* and the shared -o, --force, --model (cli/args.h) */
    {"json", no_argument, 0, O_JSON},      {"weights", required_argument, 0, O_WEIGHTS},
    {"from", required_argument, 0, O_FROM},
    {"layers", required_argument, 0, O_LAYERS}, {"rest", required_argument, 0, O_REST},
    {"levels", required_argument, 0, O_LEVELS}, {"latent", required_argument, 0, O_LATENT},
    {"dtype", required_argument, 0, O_DTYPE}, {"format", required_argument, 0, O_FORMAT},
    {"svd-cache", required_argument, 0, O_CACHE},
    {"top", required_argument, 0, O_TOP},  {"rank", required_argument, 0, O_RANK},
    {"energy", required_argument, 0, O_ENERGY}, {"no-norms", no_argument, 0, O_NO_NORMS},
    {"no-embeddings", no_argument, 0, O_NO_EMB}, {"check", no_argument, 0, O_CHECK}, {0, 0, 0, 0}};

/* ---------------------------------------------------------------------------------------
 * info */

typedef struct {
    const char *path;
    int idx, part;
    double value, delta, sigma;
} top_t;

static int top_cmp(const void *a, const void *b) {
    const double x = ((const top_t *)a)->value, y = ((const top_t *)b)->value;
    return x < y ? 1 : x > y ? -1 : 0;
}

static long file_size(const char *f) {
    struct stat st;
    return stat(f, &st) == 0 ? (long)st.st_size : -1;
}

/* singular values: an SVD cache file given directly, or the one --model's hash names */
static int open_sigma(st_file_t *f, const char *cache, const char *model) {
    char file[PATHMAX + 64];
    struct stat st;
    if (cache && stat(cache, &st) == 0 && !S_ISDIR(st.st_mode)) return st_open(f, cache);
    if (!model)
        return sd_error(SD_ERR_ARG, "--svd-cache %s is %s: give an SVD cache file, or --model M too (its hash names the file)",
                        cache, stat(cache, &st) == 0 ? "a folder" : "not there");
    model_t m;
    int rc = model_open(&m, model, NULL);
    if (rc) return rc;
    char hash[17];
    rc = model_weights_hash(&m, hash);
    model_close(&m);
    if (rc) return rc;
    char dir[PATHMAX];
    if (cache) snprintf(dir, sizeof dir, "%s", cache);
    else svd_cache_default_dir(dir, sizeof dir);
    snprintf(file, sizeof file, "%s/%s.svd.safetensors", dir, hash);
    if (stat(file, &st) != 0)
        return sd_error(SD_ERR_IO, "%s: no SVD cache for model %s (hash %s); run generate or train with it once", file,
                        model, hash);
    return st_open(f, file);
}

static int shifts_info(const char *arg, int json, const char *cache, const char *model, int top_k, int force) {
    target_t t;
    int rc = target_load(&t, arg, force);
    if (rc) return fail(rc);
    st_file_t sig;
    int have_sig = 0;
    if (cache || model) {
        rc = open_sigma(&sig, cache, model);
        if (rc) {
            target_free(&t);
            return fail(rc);
        }
        have_sig = 1;
    }
    cJSON *root = cJSON_CreateObject(), *files = cJSON_AddArrayToObject(root, "files");
    for (int p = 0; p < 2; p++) {
        if (!t.file[p][0]) continue;
        const shift_set_t *s = &t.set[p];
        long values = 0;
        int matrices = 0, norms = 0;
        for (int i = 0; i < s->n; i++) {
            values += s->entries[i].n;
            toolbox_is_norm_path(s->entries[i].path) ? norms++ : matrices++;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(files, o);
        cJSON_AddStringToObject(o, "file", t.file[p]);
        const char *h = shiftset_meta(s, "base_model_hash");
        cJSON_AddStringToObject(o, "base_model_hash", h ? h : "");
        cJSON_AddNumberToObject(o, "size_bytes", (double)file_size(t.file[p]));
        cJSON_AddStringToObject(o, "dtype", st_dtype_name(t.dtype[p]));
        cJSON_AddNumberToObject(o, "layers", s->n);
        cJSON_AddNumberToObject(o, "matrices", matrices);
        cJSON_AddNumberToObject(o, "norms", norms);
        cJSON_AddNumberToObject(o, "shifts", (double)values);
        /* per-block L2 norms, blocks in order of first appearance in the sorted paths */
        cJSON *blocks = cJSON_AddObjectToObject(o, "block_l2");
        double *sq = sd_xcalloc((size_t)s->n + 1, sizeof(double));
        char **names = sd_xcalloc((size_t)s->n + 1, sizeof(char *));
        int nb = 0;
        for (int i = 0; i < s->n; i++) {
            char b[128];
            toolbox_block_of(s->entries[i].path, b, sizeof b);
            int k = 0;
            while (k < nb && strcmp(names[k], b)) k++;
            if (k == nb) names[nb++] = strdup(b);
            const double l = toolbox_l2(&s->entries[i]);
            sq[k] += l * l;
        }
        for (int k = 0; k < nb; k++) cJSON_AddNumberToObject(blocks, names[k], sqrt(sq[k])), free(names[k]);
        free(sq), free(names);
        /* the largest shifts */
        top_t *all = sd_xmalloc(sizeof(top_t) * (size_t)(values + 1));
        long na = 0;
        for (int i = 0; i < s->n; i++) {
            const shift_entry_t *e = &s->entries[i];
            float *S = NULL;
            if (have_sig && !toolbox_is_norm_path(e->path)) {
                char key[1024];
                const shift_name_t nm = {shift_component_of_path(e->path), SHIFT_SPECTRAL, e->path};
                const st_tensor_t *ts = shift_key(key, sizeof key, &nm, SHIFT_KEY_CACHE_S) ? NULL : st_find(&sig, key);
                if (ts && ts->numel == e->n) {
                    S = sd_xmalloc(sizeof(float) * e->n);
                    if (st_read_f32(S, ts)) free(S), S = NULL;
                }
            }
            for (int j = 0; j < e->n; j++) {
                if (e->values[j] == 0) continue;   /* an untouched value is not a shift worth listing */
                top_t *x = &all[na++];
                x->path = e->path, x->idx = j, x->part = p, x->delta = e->values[j];
                x->sigma = S ? S[j] : NAN;
                x->value = S ? (S[j] > 0 ? fabs(e->values[j]) / S[j] : INFINITY * (e->values[j] != 0)) : fabs(e->values[j]);
                if (have_sig && !S) x->value = -1;   /* no sigma: ranked after every relative shift */
            }
            free(S);
        }
        qsort(all, (size_t)na, sizeof *all, top_cmp);
        cJSON *top = cJSON_AddArrayToObject(o, have_sig ? "largest_relative_shifts" : "largest_shifts");
        for (long k = 0; k < na && k < top_k; k++) {
            if (all[k].value < 0) break;
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "path", all[k].path);
            cJSON_AddNumberToObject(x, "index", all[k].idx);
            cJSON_AddNumberToObject(x, "delta", all[k].delta);
            if (have_sig) cJSON_AddNumberToObject(x, "sigma", all[k].sigma), cJSON_AddNumberToObject(x, "relative", all[k].value);
            cJSON_AddItemToArray(top, x);
        }
        free(all);
        cJSON *meta = cJSON_AddObjectToObject(o, "metadata");
        for (int i = 0; i < s->n_meta; i++) cJSON_AddStringToObject(meta, s->meta_keys[i], s->meta_values[i]);
    }
    if (json) {
        char *txt = cJSON_Print(root);
        printf("%s\n", txt);
        free(txt);
    } else {
        cJSON *o;
        cJSON_ArrayForEach(o, files) {
            printf("%s\n", cJSON_GetObjectItem(o, "file")->valuestring);
            const char *h = cJSON_GetObjectItem(o, "base_model_hash")->valuestring;
            printf("  base model hash  %s\n", *h ? h : "(none)");
            printf("  size on disk     %.0f bytes (%s)\n", cJSON_GetObjectItem(o, "size_bytes")->valuedouble,
                   cJSON_GetObjectItem(o, "dtype")->valuestring);
            printf("  layers           %d (%d matrices, %d norms), %.0f shifts\n", cJSON_GetObjectItem(o, "layers")->valueint,
                   cJSON_GetObjectItem(o, "matrices")->valueint, cJSON_GetObjectItem(o, "norms")->valueint,
                   cJSON_GetObjectItem(o, "shifts")->valuedouble);
            printf("  L2 norm of the shifts per block:\n");
            cJSON *b;
            cJSON_ArrayForEach(b, cJSON_GetObjectItem(o, "block_l2")) printf("    %-32s %.6g\n", b->string, b->valuedouble);
            cJSON *top = cJSON_GetObjectItem(o, "largest_relative_shifts");
            printf("  largest %s:\n", top ? "relative shifts |delta_i|/sigma_i" : "shifts |delta_i| (no singular values given)");
            if (!top) top = cJSON_GetObjectItem(o, "largest_shifts");
            cJSON_ArrayForEach(b, top) {
                printf("    %s[%d]  delta %.6g", cJSON_GetObjectItem(b, "path")->valuestring, cJSON_GetObjectItem(b, "index")->valueint,
                       cJSON_GetObjectItem(b, "delta")->valuedouble);
                if (cJSON_GetObjectItem(b, "sigma"))
                    printf("  sigma %.6g  ratio %.6g", cJSON_GetObjectItem(b, "sigma")->valuedouble,
                           cJSON_GetObjectItem(b, "relative")->valuedouble);
                printf("\n");
            }
            printf("  metadata:\n");
            cJSON_ArrayForEach(b, cJSON_GetObjectItem(o, "metadata")) printf("    %s = %s\n", b->string, b->valuestring);
        }
    }
    cJSON_Delete(root);
    if (have_sig) st_close(&sig);
    target_free(&t);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * the writing verbs */

static int parse_weights(const char *s, float *w, int max) {
    int n = 0;
    char *copy = strdup(s), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == max || cli_parse_float("shifts", "--weights", tok, -FLT_MAX, FLT_MAX, &w[n])) {
            free(copy);
            if (n == max) fprintf(stderr, "svdiff shifts: --weights has more than %d values\n", max);
            return -1;
        }
        n++;
    }
    free(copy);
    return n;
}

/* gamma of a norm from the base model, for convert */
typedef struct {
    model_t m;
    float *buf;
} gamma_ctx_t;

/* The base model's tensor that the shift of module `path` moves (SHIFT_KEY_WEIGHT), or NULL. */
static const st_tensor_t *shifted_tensor(const model_t *m, const char *path) {
    const shift_name_t n = {shift_component_of_path(path), SHIFT_KIND_UNKNOWN, path};
    char key[1024];
    if (shift_key(key, sizeof key, &n, SHIFT_KEY_WEIGHT)) return NULL;
    return component_find(n.component == SHIFT_TE ? &m->text_encoder : &m->unet, key);
}

static const float *get_gamma(void *vctx, const char *path, int *C) {
    gamma_ctx_t *g = vctx;
    const st_tensor_t *t = shifted_tensor(&g->m, path);
    if (!t || t->ndim != 1) return NULL;
    free(g->buf);
    g->buf = sd_xmalloc(sizeof(float) * t->numel);
    if (st_read_f32(g->buf, t)) return NULL;
    *C = (int)t->numel;
    return g->buf;
}

/* Largest overall share of the norm shifts a scalar fit may lose before convert wants --force:
 * above float rounding, below any real loss (a trained subject's per-element shifts lose 0.5 and more). */
#define FIT_TOLERANCE 1e-4

static void print_fit(void *ctx, const char *path, double lost, double max_gain_err) {
    (void)ctx;
    printf("  %-64s lost %.3g (largest gain error %.3g)\n", path, lost, max_gain_err);
}

/* svdiff-pytorch loads a file by setting each key as a parameter of its modules (SVDConv2d,
 * SVDLinear, SVDEmbedding: delta [min(out, in*kh*kw)] over the weight flattened to 2-D;
 * SVDLayerNorm, SVDGroupNorm: delta [1]), and a key or shape its model lacks stops the load. Every
 * entry must therefore name a module of the base model with exactly that length. */
static int check_svdiff_pytorch(const shift_set_t *s, const model_t *m, const char *file) {
    for (int i = 0; i < s->n; i++) {
        const shift_entry_t *e = &s->entries[i];
        const st_tensor_t *t = shifted_tensor(m, e->path);
        if (!t) return sd_error(SD_ERR_ARG, "%s: shift '%s': the base model has no module of that name", file, e->path);
        int64_t want = 1;
        if (t->ndim >= 2) {
            int64_t cols = 1;
            for (int d = 1; d < t->ndim; d++) cols *= t->shape[d];
            want = t->shape[0] < cols ? t->shape[0] : cols;
        }
        if (e->n != want)
            return sd_error(SD_ERR_ARG, "%s: shift '%s' holds %d values; svdiff-pytorch's %s there has delta [%lld]", file,
                            e->path, e->n, t->ndim >= 2 ? "SVD layer" : "SVD norm", (long long)want);
    }
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------
 * to-lora */

typedef struct {
    const char *model, *cache, *format, *dtype, *out;
    int rank, have_rank, have_energy, no_norms, no_emb, force, check;
    float energy;
} to_lora_args_t;

static int shifts_to_lora(const char *arg, const to_lora_args_t *a) {
    lora_export_opts_t o = {.format = LORA_FORMAT_KOHYA, .dtype = ST_F16, .no_norms = a->no_norms,
                            .no_embeddings = a->no_emb, .force = a->force, .source = arg, .check = a->check};
    if (!a->model) return fprintf(stderr, "svdiff shifts to-lora: --model M is required (the base model of the shifts)\n"), 2;
    if (!a->out) return fprintf(stderr, "svdiff shifts to-lora: -o OUT.safetensors is required\n"), 2;
    if (a->format && !strcmp(a->format, "diffusers")) o.format = LORA_FORMAT_DIFFUSERS;
    else if (a->format && strcmp(a->format, "kohya"))
        return fprintf(stderr, "svdiff shifts to-lora: --format must be kohya or diffusers, got '%s'\n", a->format), 2;
    if (a->dtype) {
        if (!strcmp(a->dtype, "fp32") || !strcmp(a->dtype, "F32")) o.dtype = ST_F32;
        else if (!strcmp(a->dtype, "fp16") || !strcmp(a->dtype, "F16")) o.dtype = ST_F16;
        else if (!strcmp(a->dtype, "bf16") || !strcmp(a->dtype, "BF16")) o.dtype = ST_BF16;
        else return fprintf(stderr, "svdiff shifts to-lora: --dtype must be fp32, fp16 or bf16, got '%s'\n", a->dtype), 2;
    }
    o.max_rank = a->have_rank ? a->rank : 0;
    o.energy = a->have_energy ? a->energy : a->have_rank ? 1.0 : 0.99;
    char cache_dir[PATHMAX];
    if (!a->cache) svd_cache_default_dir(cache_dir, sizeof cache_dir);
    else snprintf(cache_dir, sizeof cache_dir, "%s", strcmp(a->cache, "none") ? a->cache : "");
    o.svd_cache_dir = cache_dir;

    target_t t;
    int rc = target_load(&t, arg, a->force);
    if (rc) return fail(rc);
    const shift_set_t *sets[2];
    int n = 0;
    for (int p = 0; p < 2; p++)
        if (t.file[p][0]) sets[n++] = &t.set[p];
    pipeline_t pl;
    rc = pipeline_open(&pl, a->model, NULL);
    lora_export_stats_t st[2];
    if (!rc) {
        rc = lora_export(&pl, sets, n, &o, a->out, st);
        pipeline_close(&pl);
    }
    target_free(&t);
    if (rc) return fail(rc);
    static const char *const NAME[2] = {"unet", "text encoder"};
    for (int p = 0; p < 2; p++) {
        if (!st[p].layers && !st[p].norms && !st[p].zero_layers && !st[p].dropped) continue;
        printf("%-12s  %d layers, rank %d-%d, kept energy %.6f of ||dW||^2, %d norm diffs, %.1f KiB",
               NAME[p], st[p].layers, st[p].rank_min, st[p].rank_max,
               st[p].energy_total > 0 ? st[p].energy_kept / st[p].energy_total : 1.0, st[p].norms, st[p].bytes / 1024.0);
        if (st[p].zero_layers) printf(", %d unchanged modules skipped", st[p].zero_layers);
        if (st[p].dropped) printf(", %d shifts left out", st[p].dropped);
        printf("\n");
        if (a->check)
            printf("%-12s  merged-weight error ||W_lora - W_shifted||_F / ||W_shifted - W_base||_F = %.3g\n", "",
                   st[p].ref2 > 0 ? sqrt(st[p].err2 / st[p].ref2) : 0.0);
    }
    printf("wrote %s (%s, %s, %ld bytes)\n", a->out, o.format == LORA_FORMAT_KOHYA ? "kohya" : "diffusers",
           st_dtype_name(o.dtype), file_size(a->out));
    return 0;
}

/* convert: still the library's own calls (the norm-form fit needs the base model's gains) */
static int shifts_convert(const char *arg, st_dtype_t dt, const char *dtype_s, const char *format, const char *model,
                          int force, const char *out) {
    const int to_scalar = format && !strcmp(format, "svdiff-pytorch");
    const char *pos[1] = {arg};
    target_t in[1];
    int n_in = 0, rc = SD_OK, ret = 0;
    shift_set_t res[2];
    int present[2] = {0, 0};
    st_dtype_t dtype[2] = {ST_F32, ST_F32};
    char hist[512];
    for (int p = 0; p < 2; p++) shiftset_init(&res[p]);
#define LOAD(a)                                                         \
    do {                                                                \
        if ((rc = target_load(&in[n_in], (a), force)) != 0) goto done;  \
        n_in++;                                                         \
    } while (0)
    LOAD(pos[0]);
    snprintf(hist, sizeof hist, "convert to %s%s%s", dtype_s, format ? ", format " : "", format ? format : "");
    /* does any norm change form? */
    int need = 0, lossy = 0;
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < in[0].set[p].n; i++) {
            const shift_entry_t *e = &in[0].set[p].entries[i];
            if (format && toolbox_is_norm_path(e->path) && (e->n == 1) != to_scalar) {
                need = 1;
                if (to_scalar) lossy = 1;
            }
        }
    if (need && !model) {
        rc = sd_error(SD_ERR_ARG, "%s: changing the form of norm shifts needs the base model's norm gains: add --model M",
                      pos[0]);
        goto done;
    }
    if (to_scalar && !model) {
        rc = sd_error(SD_ERR_ARG, "%s: --format svdiff-pytorch checks every shift against the base model's modules: add --model M",
                      pos[0]);
        goto done;
    }
    gamma_ctx_t g = {.buf = NULL};
    if ((need || to_scalar) && (rc = model_open(&g.m, model, NULL))) goto done;
    toolbox_fit_t fit[2] = {{0}, {0}};
    for (int p = 0; p < nparts(&in[0]) && !rc; p++) {
        if (!in[0].file[p][0]) continue;
        double err = 0;
        shiftset_free(&res[p]);
        fit[p].report = print_fit, fit[p].ctx = NULL;
        if (to_scalar && need) printf("%s: scalar fit of the per-element norm shifts (share of each shift lost):\n", in[0].file[p]);
        if (format) rc = toolbox_convert_norms(&res[p], &in[0].set[p], to_scalar, get_gamma, &g, &err, &fit[p]);
        else toolbox_scale(&res[p], &in[0].set[p], 1.0f);   /* an exact copy */
        if (!rc && to_scalar) rc = check_svdiff_pytorch(&res[p], &g.m, in[0].file[p]);
        present[p] = !rc, dtype[p] = dt;
    }
    if (!rc && lossy) {
        toolbox_fit_t all = fit[0];
        all.err2 += fit[1].err2, all.shift2 += fit[1].shift2, all.n_fitted += fit[1].n_fitted;
        if (fit[1].worst_lost > all.worst_lost) {
            all.worst_lost = fit[1].worst_lost;
            memcpy(all.worst_path, fit[1].worst_path, sizeof all.worst_path);
        }
        const double lost = toolbox_fit_lost(&all);
        printf("overall: %.3g of the norm shifts lost over %d norms (L2); worst %s: %.3g\n", lost, all.n_fitted,
               all.worst_path[0] ? all.worst_path : "none", all.worst_lost);
        /* a fit within float rounding (shifts parallel to the gains, zero shifts) is no loss */
        if (lost > FIT_TOLERANCE && !force)
            rc = sd_error(SD_ERR_ARG,
                          "%s holds per-element [C] norm shifts; svdiff-pytorch stores one scalar per norm "
                          "(gain = gamma*ReLU(|gamma|+delta)/|gamma|), which can only scale the whole gain: the fit loses "
                          "%.3g of the norm shifts (more than %g); nothing written. Add --force to write it anyway, or "
                          "train with --norm-shift scalar for an exact file",
                          pos[0], lost, FIT_TOLERANCE);
    }
    if (need || to_scalar) model_close(&g.m);
    free(g.buf);
    if (rc) goto done;
    for (int p = 0; p < 2; p++)
        if (present[p]) toolbox_add_history(&res[p], hist);
    rc = write_outputs(out, in[0].is_dir, res, present, dtype);
done:
    if (rc) ret = fail(rc);
    for (int k = 0; k < n_in; k++) target_free(&in[k]);
    for (int p = 0; p < 2; p++) shiftset_free(&res[p]);
    return ret;
}
#undef LOAD

/* ---------------------------------------------------------------------------------------
 * the writing verbs over the public API */

#define SHIFTS_USAGE 1   /* a message of the CLI's own was printed; exit 2 */

static int api_fail(int rc) {
    fprintf(stderr, "svdiff shifts: %s\n", svdiff_last_error());
    return rc == SVDIFF_ERR_ARG ? 2 : 1;
}

/* the inputs must be all files or all folders holding the same parts (named by the arguments) */
static int sets_alike(const svdiff_shifts_t *a, const char *na, const svdiff_shifts_t *b, const char *nb) {
    svdiff_shifts_part_t pa[2], pb[2];
    for (int p = 0; p < 2; p++) svdiff_shifts_part(a, p, &pa[p]), svdiff_shifts_part(b, p, &pb[p]);
    if (pa[0].folder != pb[0].folder) {
        fprintf(stderr, "svdiff shifts: %s is a %s but %s a %s: give files or training folders, not both\n", na,
                pa[0].folder ? "folder" : "file", nb, pb[0].folder ? "folder" : "file");
        return SHIFTS_USAGE;
    }
    for (int p = 0; p < 2; p++)
        if (pa[p].present != pb[p].present) {
            fprintf(stderr, "svdiff shifts: %s has %s but %s does not\n", pa[p].present ? na : nb, PART_FILE[p],
                    pa[p].present ? nb : na);
            return SHIFTS_USAGE;
        }
    return SVDIFF_OK;
}

/* saves a result in its form (file or folder) and names each file written */
static int save_result(const svdiff_shifts_t *r, const char *out, int fp16) {
    int rc = svdiff_shifts_save(r, out, fp16);
    if (rc) return rc;
    for (int p = 0; p < 2; p++) {
        svdiff_shifts_part_t b;
        svdiff_shifts_part(r, p, &b);
        if (!b.present) continue;
        if (b.folder) printf("wrote %s/%s (%d shifts, %s)\n", out, PART_FILE[p], b.entries, b.dtype);
        else printf("wrote %s (%d shifts, %s)\n", out, b.entries, b.dtype);
    }
    return SVDIFF_OK;
}

int cmd_shifts(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    const char *weights = NULL, *from = NULL, *rest = NULL, *dtype_s = NULL, *format = NULL;
    const char *cache = NULL;
    const char *layers[64];
    int n_layers = 0, json = 0, levels = 4, latent = 64, top_k = 10;
    to_lora_args_t tl = {0};
    argc--, argv++;   /* argv[0] = the verb, as getopt wants a program name there */
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "shifts", OPTS, CLI_MODEL | CLI_FORCE | CLI_OUTPUT, &cm);
    ps.operands = 1;
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        switch (c) {
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        case O_JSON: json = 1; break;
        case O_WEIGHTS: weights = optarg; break;
        case O_FROM: from = optarg; break;
        case O_REST: rest = optarg; break;
        case O_LAYERS:
            if (n_layers == 64) return fprintf(stderr, "svdiff shifts: too many --layers\n"), 2;
            layers[n_layers++] = optarg;
            break;
        case O_LEVELS:
        case O_LATENT:
        case O_TOP: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 100000) {
                fprintf(stderr, "svdiff shifts: %s needs a positive integer, got '%s'\n",
                        c == O_LEVELS ? "--levels" : c == O_LATENT ? "--latent" : "--top", optarg);
                return 2;
            }
            *(c == O_LEVELS ? &levels : c == O_LATENT ? &latent : &top_k) = (int)v;
            break;
        }
        case O_DTYPE: dtype_s = optarg; break;
        case O_FORMAT: format = optarg; break;
        case O_CACHE: cache = optarg; break;
        case O_RANK: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > (1 << 24)) {
                fprintf(stderr, "svdiff shifts: --rank needs a positive integer, got '%s'\n", optarg);
                return 2;
            }
            tl.rank = (int)v, tl.have_rank = 1;
            break;
        }
        case O_ENERGY: {
            char *end;
            const double v = strtod(optarg, &end);
            if (*end || end == optarg || !(v > 0 && v <= 1)) {
                fprintf(stderr, "svdiff shifts: --energy needs a fraction in (0, 1], got '%s'\n", optarg);
                return 2;
            }
            tl.energy = (float)v, tl.have_energy = 1;
            break;
        }
        case O_NO_NORMS: tl.no_norms = 1; break;
        case O_NO_EMB: tl.no_emb = 1; break;
        case O_CHECK: tl.check = 1; break;
        default: fprintf(stderr, "svdiff shifts: see svdiff shifts --help\n"); return 2;
        }
    }
    const char *out = cm.output, *model = cm.model;
    const int force = cm.force;
    char **pos = argv + optind;
    const int npos = argc - optind;

    if (!strcmp(verb, "info")) {
        if (npos != 1) return fprintf(stderr, "svdiff shifts info: give one shift file or folder\n"), 2;
        return shifts_info(pos[0], json, cache, model, top_k, force);
    }
    if (!strcmp(verb, "to-lora")) {
        if (npos != 1) return fprintf(stderr, "svdiff shifts to-lora: give one shift file or training folder\n"), 2;
        tl.model = model, tl.cache = cache, tl.format = format, tl.dtype = dtype_s, tl.out = out, tl.force = force;
        return shifts_to_lora(pos[0], &tl);
    }
    if (strcmp(verb, "combine") && strcmp(verb, "scale") && strcmp(verb, "limit-rank") && strcmp(verb, "mix") &&
        strcmp(verb, "convert")) {
        fprintf(stderr, "svdiff shifts: unknown verb '%s' (info, combine, scale, limit-rank, mix, convert, to-lora)\n", verb);
        return 2;
    }
    if (!out) return fprintf(stderr, "svdiff shifts %s: -o OUT is required\n", verb), 2;

    enum { MAXIN = 32 };
    if (!strcmp(verb, "convert")) {
        if (npos != 1) return fprintf(stderr, "svdiff shifts convert: give one IN\n"), 2;
        if (!dtype_s) return fprintf(stderr, "svdiff shifts convert: --dtype fp16|fp32 is required\n"), 2;
        st_dtype_t dt;
        if (!strcmp(dtype_s, "fp16") || !strcmp(dtype_s, "F16")) dt = ST_F16;
        else if (!strcmp(dtype_s, "fp32") || !strcmp(dtype_s, "F32")) dt = ST_F32;
        else return fprintf(stderr, "svdiff shifts convert: --dtype must be fp16 or fp32, got '%s'\n", dtype_s), 2;
        const int to_scalar = format && !strcmp(format, "svdiff-pytorch");
        if (format && !to_scalar && strcmp(format, "native"))
            return fprintf(stderr, "svdiff shifts convert: --format must be native or svdiff-pytorch, got '%s'\n", format), 2;
        return shifts_convert(pos[0], dt, dtype_s, format, model, force, out);
    }
    /* combine, scale, limit-rank, mix: the public API's shift sets and toolbox */
    svdiff_shifts_t *in[MAXIN] = {0}, *res = NULL;
    int n_in = 0, rc = SVDIFF_OK, ret = 0, fp16 = -1;   /* -1: each part keeps its input's dtype */
    char hist[512];
#define LOAD(arg)                                                                    \
    do {                                                                             \
        if ((rc = svdiff_shifts_load_ex((arg), force, &in[n_in])) != 0) goto done;   \
        n_in++;                                                                      \
    } while (0)

    if (!strcmp(verb, "combine")) {
        if (npos < 1 || npos > MAXIN) return fprintf(stderr, "svdiff shifts combine: give 1 to %d inputs\n", MAXIN), 2;
        float w[MAXIN];
        if (weights) {
            const int nw = parse_weights(weights, w, MAXIN);
            if (nw < 0) return 2;
            if (nw != npos)
                return fprintf(stderr, "svdiff shifts combine: %d weights for %d inputs\n", nw, npos), 2;
        }
        for (int k = 0; k < npos; k++) LOAD(pos[k]);
        for (int k = 1; k < n_in; k++)
            if ((rc = sets_alike(in[0], pos[0], in[k], pos[k]))) goto done;
        snprintf(hist, sizeof hist, "combine of %d files, weights %s", npos, weights ? weights : "all 1");
        if ((rc = svdiff_shifts_combine((const svdiff_shifts_t *const *)in, weights ? w : NULL, n_in, force, &res)))
            goto done;
    } else if (!strcmp(verb, "scale") || !strcmp(verb, "limit-rank")) {
        if (npos != 2) return fprintf(stderr, "svdiff shifts %s: give IN and %s\n", verb, verb[0] == 's' ? "S" : "R"), 2;
        float s = 1;
        long R = 0;
        if (verb[0] == 's') {
            if (cli_parse_float("shifts", "the scale", pos[1], -FLT_MAX, FLT_MAX, &s)) return 2;
        } else {
            char *end;
            R = strtol(pos[1], &end, 10);
            if (*end || end == pos[1] || R < 0 || R > 1 << 24)
                return fprintf(stderr, "svdiff shifts limit-rank: R must be an integer >= 0, got '%s'\n", pos[1]), 2;
        }
        LOAD(pos[0]);
        if (verb[0] == 's') {
            snprintf(hist, sizeof hist, "scale %.9g", s);
            if ((rc = svdiff_shifts_scale(in[0], s, &res))) goto done;
        } else {
            snprintf(hist, sizeof hist, "limit-rank %ld", R);
            if ((rc = svdiff_shifts_limit_rank(in[0], (int)R, &res, NULL))) goto done;
            for (int p = 0; p < 2; p++) {
                svdiff_shifts_part_t a, b;
                svdiff_shifts_part(in[0], p, &a), svdiff_shifts_part(res, p, &b);
                if (!a.present) continue;
                printf("%s: %ld of %ld shift values kept; a truncated layout (R values per matrix) stores %ld bytes of "
                       "data instead of %ld\n",
                       a.file, b.kept, a.values, b.kept * a.dtype_bytes, a.values * a.dtype_bytes);
            }
        }
    } else {   /* mix */
        for (int k = 0; k < npos && n_layers < 64; k++) layers[n_layers++] = pos[k];
        if (!from || !rest || !n_layers)
            return fprintf(stderr, "svdiff shifts mix: --from A, --rest B and --layers SEL are required\n"), 2;
        LOAD(from);
        LOAD(rest);
        if ((rc = sets_alike(in[0], from, in[1], rest))) goto done;
        char sel[400] = "";
        for (int k = 0; k < n_layers; k++) {
            const size_t u = strlen(sel);
            snprintf(sel + u, sizeof sel - u, "%s%s", k ? " " : "", layers[k]);
        }
        snprintf(hist, sizeof hist, "mix: %s from %s, rest from %s", sel, from, rest);
        if ((rc = svdiff_shifts_mix(in[0], in[1], layers, n_layers, levels, latent, force, &res, NULL))) goto done;
        for (int p = 0; p < 2; p++) {
            svdiff_shifts_part_t b;
            svdiff_shifts_part(res, p, &b);
            if (b.present) printf("%s: %d of %d shifts from %s, the rest from %s\n", PART_FILE[p], b.taken, b.entries, from, rest);
        }
    }
#undef LOAD
    if (!(rc = svdiff_shifts_add_history(res, hist))) rc = save_result(res, out, fp16);
done:
    if (rc) ret = rc == SHIFTS_USAGE ? 2 : api_fail(rc);
    for (int k = 0; k < n_in; k++) svdiff_shifts_free(in[k]);
    svdiff_shifts_free(res);
    return ret;
}
