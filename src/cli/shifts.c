/* `svdiff shifts <verb>`: the shift toolbox on files (info, combine, scale, limit-rank, mix,
 * convert, to-lora). A training output folder (spectral_shifts.safetensors + spectral_shifts_te.safetensors)
 * is handled as a pair: every verb applies to both files and -o names a folder. A client of the
 * public API: the sets, the toolbox, info's description, convert and to-lora are svdiff_shifts_*
 * calls; this file does flags and printing. */
#include <cjson/cJSON.h>
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "svdiff.h"

#include "cli/args.h"
#include "cli/commands.h"

static const char *const PART_FILE[SVDIFF_SHIFTS_PARTS] = {"spectral_shifts.safetensors", "spectral_shifts_te.safetensors",
                                                           "spectral_shifts_te2.safetensors"};

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

/* ---------------------------------------------------------------------------------------
 * the writing verbs over the public API */

#define SHIFTS_USAGE 1   /* a message of the CLI's own was printed; exit 2 */

static int api_fail(int rc) {
    fprintf(stderr, "svdiff shifts: %s\n", svdiff_last_error());
    return rc == SVDIFF_ERR_ARG ? 2 : 1;
}

/* the inputs must be all files or all folders holding the same parts (named by the arguments) */
static int sets_alike(const svdiff_shifts_t *a, const char *na, const svdiff_shifts_t *b, const char *nb) {
    svdiff_shifts_part_t pa[SVDIFF_SHIFTS_PARTS], pb[SVDIFF_SHIFTS_PARTS];
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) svdiff_shifts_part(a, p, &pa[p]), svdiff_shifts_part(b, p, &pb[p]);
    if (pa[0].folder != pb[0].folder) {
        fprintf(stderr, "svdiff shifts: %s is a %s but %s a %s: give files or training folders, not both\n", na,
                pa[0].folder ? "folder" : "file", nb, pb[0].folder ? "folder" : "file");
        return SHIFTS_USAGE;
    }
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++)
        if (pa[p].present != pb[p].present) {
            fprintf(stderr, "svdiff shifts: %s has %s but %s does not\n", pa[p].present ? na : nb, PART_FILE[p],
                    pa[p].present ? nb : na);
            return SHIFTS_USAGE;
        }
    return SVDIFF_OK;
}

/* shifts of an SDXL model: its UNet's added conditioning or its second text encoder */
static int is_sdxl_set(const svdiff_shifts_t *s) {
    for (int i = 0, n = svdiff_shifts_count(s); i < n; i++) {
        const char *name = NULL;
        svdiff_shifts_entry(s, i, &name, NULL, NULL);
        if (name && (!strncmp(name, "add_embedding.", 14) || !strncmp(name, "text_encoder_2.", 15))) return 1;
    }
    return 0;
}

/* saves a result in its form (file or folder) and names each file written */
static int save_result(const svdiff_shifts_t *r, const char *out, int fp16) {
    int rc = svdiff_shifts_save(r, out, fp16);
    if (rc) return rc;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) {
        svdiff_shifts_part_t b;
        svdiff_shifts_part(r, p, &b);
        if (!b.present) continue;
        if (b.folder) printf("wrote %s/%s (%d shifts, %s)\n", out, PART_FILE[p], b.entries, b.dtype);
        else printf("wrote %s (%d shifts, %s)\n", out, b.entries, b.dtype);
    }
    return SVDIFF_OK;
}

/* ---------------------------------------------------------------------------------------
 * info: the API's description (JSON), printed as it is (--json) or as text */

static int shifts_info(const char *arg, int json, const char *cache, const char *model, int top_k, int force) {
    char *txt = NULL;
    const int rc = svdiff_shifts_describe(arg, force, cache, model, top_k, &txt);
    if (rc) return api_fail(rc);
    if (json) {
        printf("%s\n", txt);
        svdiff_free(txt);
        return 0;
    }
    cJSON *root = cJSON_Parse(txt), *o;
    svdiff_free(txt);
    if (!root) return fprintf(stderr, "svdiff shifts: out of memory\n"), 1;
    cJSON_ArrayForEach(o, cJSON_GetObjectItem(root, "files")) {
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
    cJSON_Delete(root);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * convert */

/* the scalar fit of each norm as the API makes it; path NULL: a part's fit begins */
static void print_fit(int part, const char *path, double lost, double max_gain_err, void *user_data) {
    if (!path) {
        svdiff_shifts_part_t pi;
        svdiff_shifts_part(user_data, part, &pi);
        printf("%s: scalar fit of the per-element norm shifts (share of each shift lost):\n", pi.file);
    } else {
        printf("  %-64s lost %.3g (largest gain error %.3g)\n", path, lost, max_gain_err);
    }
}

static int shifts_convert(const char *arg, int fp16, const char *dtype_s, const char *format, const char *model,
                          int force, const char *out) {
    svdiff_shifts_t *in = NULL, *res = NULL;
    int rc = svdiff_shifts_load_ex(arg, force, &in);
    if (!rc) {
        char hist[512];
        snprintf(hist, sizeof hist, "convert to %s%s%s", dtype_s, format ? ", format " : "", format ? format : "");
        svdiff_convert_params_t cp = svdiff_convert_default_params();
        cp.fp16 = fp16, cp.format = format, cp.model = model, cp.force = force;
        cp.fit = print_fit, cp.user_data = in;
        svdiff_convert_stats_t st = {0};
        rc = svdiff_shifts_convert(in, &cp, &res, &st);
        if (st.lossy)
            printf("overall: %.3g of the norm shifts lost over %d norms (L2); worst %s: %.3g\n", st.lost, st.n_fitted,
                   st.worst_path[0] ? st.worst_path : "none", st.worst_lost);
        if (!rc) rc = svdiff_shifts_add_history(res, hist);
        if (!rc) rc = save_result(res, out, -1);   /* the result's parts are stored as asked */
    }
    svdiff_shifts_free(in), svdiff_shifts_free(res);
    return rc ? api_fail(rc) : 0;
}

/* ---------------------------------------------------------------------------------------
 * to-lora */

typedef struct {
    const char *model, *cache, *format, *dtype, *out;
    int rank, have_rank, have_energy, no_norms, no_emb, force, check;
    float energy;
} to_lora_args_t;

static int shifts_to_lora(const char *arg, const to_lora_args_t *a) {
    static const char *const DTYPE_NAME[3] = {"F32", "F16", "BF16"};
    svdiff_lora_params_t o = svdiff_lora_default_params();
    o.no_norms = a->no_norms, o.no_embeddings = a->no_emb, o.force = a->force, o.check = a->check;
    if (!a->model) return fprintf(stderr, "svdiff shifts to-lora: --model M is required (the base model of the shifts)\n"), 2;
    if (!a->out) return fprintf(stderr, "svdiff shifts to-lora: -o OUT.safetensors is required\n"), 2;
    if (a->format && !strcmp(a->format, "diffusers")) o.format = SVDIFF_LORA_DIFFUSERS;
    else if (a->format && strcmp(a->format, "kohya"))
        return fprintf(stderr, "svdiff shifts to-lora: --format must be kohya or diffusers, got '%s'\n", a->format), 2;
    if (a->dtype) {
        if (!strcmp(a->dtype, "fp32") || !strcmp(a->dtype, "F32")) o.dtype = SVDIFF_DTYPE_F32;
        else if (!strcmp(a->dtype, "fp16") || !strcmp(a->dtype, "F16")) o.dtype = SVDIFF_DTYPE_F16;
        else if (!strcmp(a->dtype, "bf16") || !strcmp(a->dtype, "BF16")) o.dtype = SVDIFF_DTYPE_BF16;
        else return fprintf(stderr, "svdiff shifts to-lora: --dtype must be fp32, fp16 or bf16, got '%s'\n", a->dtype), 2;
    }
    o.max_rank = a->have_rank ? a->rank : 0;
    o.energy = a->have_energy ? a->energy : a->have_rank ? 1.0 : 0.99;
    o.svd_cache_dir = !a->cache ? NULL : strcmp(a->cache, "none") ? a->cache : "";   /* NULL: the default folder */

    svdiff_shifts_t *t = NULL;
    svdiff_lora_stats_t st[2];
    int rc = svdiff_shifts_load_ex(arg, a->force, &t);
    if (!rc) rc = svdiff_shifts_to_lora(t, a->model, &o, a->out, st);
    svdiff_shifts_free(t);
    if (rc) return api_fail(rc);
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
    struct stat fs;
    printf("wrote %s (%s, %s, %ld bytes)\n", a->out, o.format == SVDIFF_LORA_KOHYA ? "kohya" : "diffusers",
           DTYPE_NAME[o.dtype], stat(a->out, &fs) == 0 ? (long)fs.st_size : -1L);
    return 0;
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
    int n_layers = 0, json = 0, levels = 0, latent = 0, top_k = 10;   /* levels, latent 0: from the files */
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
        int fp16;
        if (!strcmp(dtype_s, "fp16") || !strcmp(dtype_s, "F16")) fp16 = 1;
        else if (!strcmp(dtype_s, "fp32") || !strcmp(dtype_s, "F32")) fp16 = 0;
        else return fprintf(stderr, "svdiff shifts convert: --dtype must be fp16 or fp32, got '%s'\n", dtype_s), 2;
        const int to_scalar = format && !strcmp(format, "svdiff-pytorch");
        if (format && !to_scalar && strcmp(format, "native"))
            return fprintf(stderr, "svdiff shifts convert: --format must be native or svdiff-pytorch, got '%s'\n", format), 2;
        return shifts_convert(pos[0], fp16, dtype_s, format, model, force, out);
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
            for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) {
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
        const int xl = is_sdxl_set(in[0]) || is_sdxl_set(in[1]);   /* the model's UNet, unless given */
        if (!levels) levels = xl ? 3 : 4;
        if (!latent) latent = xl ? 128 : 64;
        if ((rc = svdiff_shifts_mix(in[0], in[1], layers, n_layers, levels, latent, force, &res, NULL))) goto done;
        for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) {
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
