/* `svdiff info`: describes a model (diffusers folder or SD 1.x/2.x single file) through the public
 * API (svdiff_model_describe: the model opened the way every other command opens it, from its
 * headers alone) and prints it: layout, each component's key config values, tensor and parameter
 * counts, dtypes and bytes, the scheduler and tokenizer, the time the description took and the
 * process's peak RSS (which stays small: only the safetensors headers are read). */
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
            "usage: svdiff info --model DIR|FILE [--tokenizer DIR] [--prediction-type T] [--scheduler-config FILE] [--json]\n\n"
            "Opens a Stable Diffusion 1.x/2.x model and describes it, without reading the weights\n"
            "(the files are memory-mapped; only their headers are parsed; a .ckpt's storages are read).\n\n"
            "options:\n"
            "  --model PATH      a diffusers folder (model_index.json, unet/, vae/, text_encoder/,\n"
            "                    scheduler/, tokenizer/) or a single-file CompVis/LDM checkpoint\n"
            "                    (.safetensors, or a PyTorch .ckpt whose pickle is read without running\n"
            "                    anything; SD 1.x with CLIP-L or SD 2.x with OpenCLIP text)\n"
            "  --tokenizer DIR   folder with vocab.json and merges.txt (single files carry none;\n"
            "                    for folders it replaces the model's tokenizer/)\n"
            "                    (also --pretrained-model-name-or-path for --model)\n");
    cli_common_help(f, CLI_MODEL_OPTS, NULL);
    fprintf(f,
            "  --json            print one JSON object instead of text\n"
            "  -h, --help        show this help\n\n"
            "Single files carry no configs: they are derived from tensor shapes. Values the weights\n"
            "cannot tell take Stable Diffusion's: attention heads (SD1 8, SD2 width/64),\n"
            "GroupNorm 32 groups, a PNDM scheduler. The prediction type (epsilon or v) comes from\n"
            "NAME.yaml beside the file (the LDM config: model.params.parameterization), else the\n"
            "file's metadata (modelspec.prediction_type, ss_v_parameterization), else a guess (SD 1.x\n"
            "epsilon; SD 2.x by ComfyUI's weight test, with a warning); the 'prediction:' line says\n"
            "which decided.\n");
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
    "norm_num_groups", "sample_size"};
static const char *const VAE_KEYS[] = {"in_channels", "out_channels", "latent_channels", "block_out_channels",
    "layers_per_block", "norm_num_groups", "scaling_factor"};
static const char *const TEXT_KEYS[] = {"hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "vocab_size", "max_position_embeddings", "hidden_act"};
static const char *const SCHED_KEYS[] = {"_class_name", "prediction_type", "beta_schedule", "beta_start",
    "beta_end", "num_train_timesteps", "steps_offset"};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const cJSON *get(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

/* the description (svdiff_model_describe's JSON) as text */
static void print_text(const cJSON *d, double open_ms, long rss_kb) {
    const char *const *keys[3] = {UNET_KEYS, VAE_KEYS, TEXT_KEYS};
    const int nkeys[3] = {N_OF(UNET_KEYS), N_OF(VAE_KEYS), N_OF(TEXT_KEYS)};
    char a[64], b[64];
    printf("model:        %s\n", get(d, "path")->valuestring);
    printf("layout:       %s\n", layout_text(get(d, "layout")->valuestring));
    const cJSON *c;
    int k = 0;
    cJSON_ArrayForEach(c, get(d, "components")) {   /* unet, vae, text_encoder */
        char label[32];
        snprintf(label, sizeof label, "%s:", c->string);
        printf("%-13s", label);
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
    const int nfiles = get(d, "files")->valueint;
    grouped(a, sizeof a, (int64_t)get(d, "total_parameters")->valuedouble);
    human_bytes(b, sizeof b, get(d, "total_bytes")->valuedouble);
    printf("total:        %s parameters, %s of tensors", a, b);
    human_bytes(b, sizeof b, get(d, "mapped_bytes")->valuedouble);
    printf(" in %d file%s (%s mapped)\n", nfiles, nfiles == 1 ? "" : "s", b);
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
    static const struct option opts[] = {{"json", no_argument, 0, 'j'}, {0, 0, 0, 0}};
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "info", opts, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS, &cm);
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        switch (c) {
        case 'j': json = 1; break;
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
    int rc = svdiff_model_describe(model, &mp, &txt);
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
