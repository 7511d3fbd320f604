/* `svdiff info`: describes a model (diffusers folder or SD 1.x/2.x/XL single file) through the
 * public API (svdiff_model_describe_at: the model opened the way every other command opens it, from
 * its headers alone) and prints it: layout and family, each component's key config values, tensor
 * and parameter counts, dtypes and bytes, the scheduler and tokenizers, the memory generate and
 * train need at --resolution, the time the description took and the process's peak RSS (which
 * stays small: only the safetensors headers are read). */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svdiff.h"

#include "cli/args.h"
#include "cli/commands.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff info --model DIR|FILE [--resolution N] [--tokenizer DIR] [--prediction-type T]\n"
            "                   [--scheduler-config FILE] [--json]\n\n"
            "Opens a Stable Diffusion 1.x/2.x/XL model and describes it, without reading the weights\n"
            "(the files are memory-mapped; only their headers are parsed; a .ckpt's storages are read).\n\n"
            "options:\n"
            "  --model PATH      a diffusers folder (model_index.json, unet/, vae/, text_encoder/,\n"
            "                    scheduler/, tokenizer/) or a single-file CompVis/LDM checkpoint\n"
            "                    (.safetensors, or a PyTorch .ckpt whose pickle is read without running\n"
            "                    anything; SD 1.x with CLIP-L, SD 2.x with OpenCLIP text, or SDXL in\n"
            "                    Stability's sgm layout with both)\n"
            "  --tokenizer DIR   folder with vocab.json and merges.txt (single files carry none;\n"
            "                    for folders it replaces the model's tokenizer/)\n"
            "                    (also --pretrained-model-name-or-path for --model)\n");
    cli_common_help(f, CLI_MODEL_OPTS, NULL);
    fprintf(f,
            "  --resolution N    the image size (N x N pixels) of the memory estimate (default:\n"
            "                    the model's native size, 512 for SD 1.x, 1024 for SDXL)\n"
            "  --json            print one JSON object instead of text\n"
            "  -h, --help        show this help\n\n"
            "Single files carry no configs: they are derived from tensor shapes. Values the weights\n"
            "cannot tell take Stable Diffusion's: attention heads (SD1 8, SD2 width/64),\n"
            "GroupNorm 32 groups, a PNDM scheduler. The prediction type (epsilon or v) comes from\n"
            "NAME.yaml beside the file (the LDM config: model.params.parameterization), else the\n"
            "file's metadata (modelspec.prediction_type, ss_v_parameterization), else a guess (SD 1.x\n"
            "epsilon; SD 2.x by ComfyUI's weight test, with a warning); the 'prediction:' line says\n"
            "which decided.\n\n"
            "The parameter counts are diffusers' / transformers' num_parameters() of each\n"
            "component. The memory lines add up the weights as stored, the activations of the\n"
            "UNet (generate: batch 2 for guidance; train: batch 1, without and with\n"
            "--gradient-checkpointing), the text encoders and the VAE at full resolution, and for\n"
            "train the SVD factors of every UNet conv and linear (fp32, or bf16 with\n"
            "--compute-dtype bf16) and the optimizer's state; operator scratch is not counted.\n");
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* VmHWM (peak resident set) in kB, or -1. */
static long peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

static const char *layout_text(const char *layout) {
    if (!strcmp(layout, "diffusers")) return "diffusers folder";
    if (!strcmp(layout, "LDM SD1")) return "LDM single file, SD 1.x (CLIP-L text encoder)";
    if (!strcmp(layout, "LDM SD2")) return "LDM single file, SD 2.x (OpenCLIP text encoder)";
    if (!strcmp(layout, "LDM SDXL")) return "sgm single file, SDXL (CLIP-L and OpenCLIP-bigG text encoders)";
    return "?";
}

static void human_bytes(char *buf, size_t cap, double b) {
    const char *unit[] = {"B", "KB", "MB", "GB", "TB"};
    int u = 0;
    while (b >= 1000 && u < 4) b /= 1000, u++;
    snprintf(buf, cap, u ? "%.2f %s" : "%.0f %s", b, unit[u]);
}

/* 1234567 -> "1,234,567" */
static void grouped(char *buf, size_t cap, int64_t v) {
    char raw[32];
    int n = snprintf(raw, sizeof raw, "%" PRId64, v), k = 0;
    for (int i = 0; i < n && k + 2 < (int)cap; i++) {
        if (i > 0 && raw[i - 1] != '-' && (n - i) % 3 == 0) buf[k++] = ',';
        buf[k++] = raw[i];
    }
    buf[k] = '\0';
}

/* Prints "key value" for the listed config keys that exist. */
static void print_keys(const cJSON *cfg, const char *const *keys, int n) {
    int col = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(cfg, keys[i]);
        if (!it) continue;
        char *v = cJSON_PrintUnformatted(it);
        int len = (int)(strlen(keys[i]) + strlen(v) + 2);
        if (col > 0 && col + len > 80) {
            printf("\n             ");
            col = 0;
        }
        printf(" %s %s", keys[i], v);
        col += len;
        free(v);
    }
    printf("\n");
}

static const char *const UNET_KEYS[] = {"in_channels", "out_channels", "block_out_channels", "layers_per_block",
    "down_block_types", "up_block_types", "cross_attention_dim", "attention_head_dim", "use_linear_projection",
    "norm_num_groups", "sample_size", "transformer_layers_per_block", "addition_embed_type",
    "addition_time_embed_dim", "projection_class_embeddings_input_dim"};
static const char *const VAE_KEYS[] = {"in_channels", "out_channels", "latent_channels", "block_out_channels",
    "layers_per_block", "norm_num_groups", "scaling_factor"};
static const char *const TEXT_KEYS[] = {"hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "vocab_size", "max_position_embeddings", "hidden_act"};
static const char *const TEXT2_KEYS[] = {"hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "vocab_size", "max_position_embeddings", "hidden_act", "projection_dim"};
static const char *const SCHED_KEYS[] = {"_class_name", "prediction_type", "beta_schedule", "beta_start",
    "beta_end", "num_train_timesteps", "steps_offset"};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const cJSON *get(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static double num(const cJSON *o, const char *key) {
    const cJSON *v = get(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* "memory" of the description: one line each for generate and train, the parts after it */
static void print_memory(const cJSON *mem) {
    if (!mem) return;
    const int res = (int)num(mem, "resolution");
    const cJSON *err = get(mem, "error");
    if (cJSON_IsString(err)) {
        printf("memory:       at %d px: %s\n", res, err->valuestring);
        return;
    }
    const cJSON *g = get(mem, "generate"), *t = get(mem, "train");
    char a[32], b[32], c[32], e[32], f[32];
    human_bytes(a, sizeof a, num(g, "total"));
    human_bytes(b, sizeof b, num(g, "weights"));
    human_bytes(c, sizeof c, num(g, "unet_activations"));
    human_bytes(e, sizeof e, num(g, "text_activations") + num(g, "vae_activations"));
    printf("generate:     %s at %dx%d px (weights %s, UNet activations %s for batch 2, text + VAE %s)\n", a, res,
           res, b, c, e);
    human_bytes(a, sizeof a, num(t, "total"));
    human_bytes(b, sizeof b, num(t, "total_bf16_checkpointed"));
    printf("train:        %s at %dx%d px, batch 1 (fp32 factors); %s with --compute-dtype bf16 "
           "--gradient-checkpointing\n", a, res, res, b);
    human_bytes(a, sizeof a, num(t, "weights"));
    human_bytes(b, sizeof b, num(t, "factors_fp32"));
    human_bytes(c, sizeof c, num(t, "factors_bf16"));
    human_bytes(e, sizeof e, num(t, "unet_activations"));
    human_bytes(f, sizeof f, num(t, "unet_activations_checkpointed"));
    printf("              (weights but the UNet's matrices %s, SVD factors %s / %s bf16, UNet activations %s /"
           " %s checkpointed,", a, b, c, e, f);
    human_bytes(a, sizeof a, num(t, "optimizer"));
    human_bytes(b, sizeof b, num(t, "text_activations") + num(t, "vae_activations"));
    printf(" optimizer %s, text + VAE %s)\n", a, b);
}

/* the description (svdiff_model_describe's JSON) as text */
static void print_text(const cJSON *d, double open_ms, long rss_kb) {
    const char *const *keys[4] = {UNET_KEYS, VAE_KEYS, TEXT_KEYS, TEXT2_KEYS};
    const int nkeys[4] = {N_OF(UNET_KEYS), N_OF(VAE_KEYS), N_OF(TEXT_KEYS), N_OF(TEXT2_KEYS)};
    char a[64], b[64];
    printf("model:        %s\n", get(d, "path")->valuestring);
    printf("layout:       %s\n", layout_text(get(d, "layout")->valuestring));
    printf("family:       %s\n", get(d, "family")->valuestring);
    const cJSON *c;
    int k = 0;
    cJSON_ArrayForEach(c, get(d, "components")) {   /* unet, vae, text_encoder, text_encoder_2 (SDXL) */
        char label[32];
        snprintf(label, sizeof label, "%s:", c->string);
        printf("%-13s", label);
        if (k > 3) k = 3;
        if (!cJSON_IsTrue(get(c, "present"))) {
            printf(" absent\n");
            k++;
            continue;
        }
        print_keys(get(c, "config"), keys[k], nkeys[k]);
        grouped(a, sizeof a, (int64_t)get(c, "parameters")->valuedouble);
        human_bytes(b, sizeof b, get(c, "bytes")->valuedouble);
        printf("              %d tensors, %s parameters, %s,", get(c, "tensors")->valueint, a, b);
        const cJSON *t;
        cJSON_ArrayForEach(t, get(c, "dtypes")) printf(" %s x%d", t->string, t->valueint);
        printf("\n");
        k++;
    }
    printf("%-13s", "scheduler:");
    print_keys(get(d, "scheduler"), SCHED_KEYS, N_OF(SCHED_KEYS));
    const cJSON *pt = get(d, "prediction_type"), *tok = get(d, "tokenizer");
    printf("prediction:   %s (%s)\n", get(pt, "value")->valuestring, get(pt, "source")->valuestring);
    printf("tokenizer:    %s\n", cJSON_IsString(tok) ? tok->valuestring : "none (pass --tokenizer DIR)");
    const cJSON *tok2 = get(d, "tokenizer_2");
    if (tok2) printf("tokenizer_2:  %s\n", cJSON_IsString(tok2) ? tok2->valuestring : "none (pass --tokenizer DIR)");
    const cJSON *fz = get(d, "force_zeros_for_empty_prompt");
    if (fz) printf("empty prompt: %s\n", cJSON_IsTrue(fz) ? "zeros (force_zeros_for_empty_prompt)" : "encoded");
    const int nfiles = get(d, "files")->valueint;
    grouped(a, sizeof a, (int64_t)get(d, "total_parameters")->valuedouble);
    human_bytes(b, sizeof b, get(d, "total_bytes")->valuedouble);
    printf("total:        %s parameters, %s of tensors", a, b);
    human_bytes(b, sizeof b, get(d, "mapped_bytes")->valuedouble);
    printf(" in %d file%s (%s mapped)\n", nfiles, nfiles == 1 ? "" : "s", b);
    print_memory(get(d, "memory"));
    printf("open time:    %.1f ms\n", open_ms);
    if (rss_kb >= 0) {
        human_bytes(b, sizeof b, 1024.0 * (double)rss_kb);
        printf("peak RSS:     %s (VmHWM)\n", b);
    }
}

/* the description with the CLI's timing and memory figures */
static void print_json(cJSON *d, double open_ms, long rss_kb) {
    cJSON_AddNumberToObject(d, "open_ms", open_ms);
    if (rss_kb >= 0) cJSON_AddNumberToObject(d, "peak_rss_kb", (double)rss_kb);
    char *s = cJSON_Print(d);
    printf("%s\n", s);
    free(s);
}

int cmd_info(int argc, char **argv) {
    int json = 0;
    int resolution = 0;
    static const struct option opts[] = {{"json", no_argument, 0, 'j'}, {"resolution", required_argument, 0, 'r'},
                                         {0, 0, 0, 0}};
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "info", opts, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS, &cm);
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        switch (c) {
        case 'j': json = 1; break;
        case 'r': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 8 || v > 65536) {
                fprintf(stderr, "svdiff info: --resolution '%s' is not a size in pixels from 8 to 65536\n", optarg);
                return 2;
            }
            resolution = (int)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
    }
    const char *model = cm.model;
    if (!model) {
        fprintf(stderr, "svdiff info: --model DIR|FILE is required (see svdiff info --help)\n");
        return 2;
    }
    svdiff_model_params_t mp = svdiff_model_default_params();
    mp.tokenizer_dir = cm.mo.tokenizer_dir, mp.prediction_type = cm.mo.prediction_type;
    mp.scheduler_config = cm.mo.scheduler_config;
    char *txt = NULL;
    double t0 = now();
    int rc = svdiff_model_describe_at(model, &mp, resolution, &txt);
    double open_ms = 1e3 * (now() - t0);
    if (rc) {
        fprintf(stderr, "svdiff info: %s\n", svdiff_last_error());
        return 1;
    }
    long rss = peak_rss_kb();
    cJSON *d = cJSON_Parse(txt);
    svdiff_free(txt);
    if (!d) return fprintf(stderr, "svdiff info: out of memory\n"), 1;
    if (json) print_json(d, open_ms, rss);
    else print_text(d, open_ms, rss);
    cJSON_Delete(d);
    return 0;
}
