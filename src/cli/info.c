/* `svdiff info`: opens a model (diffusers folder or SD 1.x/2.x single file) the way every other
 * command does and prints what it found: layout, each component's key config values, tensor
 * and parameter counts, dtypes and bytes, the scheduler and tokenizer, the time model_open took
 * and the process's peak RSS (which stays small: only the safetensors headers are read). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "io/model.h"   /* not in the public API yet: describing a model from its headers alone (layout,
                           component configs, tensor counts, dtypes and bytes, prediction source) */

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

typedef struct {
    int64_t params, bytes;
    int by_dtype[ST_DTYPE_COUNT];
} stats_t;

static stats_t component_stats(const model_component_t *c) {
    stats_t s;
    memset(&s, 0, sizeof s);
    for (int i = 0; i < c->n_tensors; i++) {
        s.params += c->tensors[i].numel;
        s.bytes += (int64_t)c->tensors[i].nbytes;
        s.by_dtype[c->tensors[i].dtype]++;
    }
    return s;
}

static const char *layout_name(model_layout_t l) {
    switch (l) {
    case MODEL_LAYOUT_DIFFUSERS: return "diffusers";
    case MODEL_LAYOUT_LDM_SD1: return "LDM SD1";
    case MODEL_LAYOUT_LDM_SD2: return "LDM SD2";
    }
    return "?";
}

static const char *layout_text(model_layout_t l) {
    switch (l) {
    case MODEL_LAYOUT_DIFFUSERS: return "diffusers folder";
    case MODEL_LAYOUT_LDM_SD1: return "LDM single file, SD 1.x (CLIP-L text encoder)";
    case MODEL_LAYOUT_LDM_SD2: return "LDM single file, SD 2.x (OpenCLIP text encoder)";
    }
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

static void print_text(const model_t *m, double open_ms, long rss_kb) {
    const model_component_t *comps[3] = {&m->unet, &m->vae, &m->text_encoder};
    const char *const *keys[3] = {UNET_KEYS, VAE_KEYS, TEXT_KEYS};
    const int nkeys[3] = {N_OF(UNET_KEYS), N_OF(VAE_KEYS), N_OF(TEXT_KEYS)};
    char a[64], b[64];
    int64_t params = 0, bytes = 0;
    printf("model:        %s\n", m->path);
    printf("layout:       %s\n", layout_text(m->layout));
    for (int k = 0; k < 3; k++) {
        const model_component_t *c = comps[k];
        char label[32];
        snprintf(label, sizeof label, "%s:", c->name);
        printf("%-13s", label);
        if (c->n_tensors == 0) {
            printf(" absent\n");
            continue;
        }
        print_keys(c->config, keys[k], nkeys[k]);
        stats_t s = component_stats(c);
        params += s.params;
        bytes += s.bytes;
        grouped(a, sizeof a, s.params);
        human_bytes(b, sizeof b, (double)s.bytes);
        printf("              %d tensors, %s parameters, %s,", c->n_tensors, a, b);
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (s.by_dtype[d]) printf(" %s x%d", st_dtype_name((st_dtype_t)d), s.by_dtype[d]);
        printf("\n");
    }
    printf("%-13s", "scheduler:");
    print_keys(m->scheduler_config, SCHED_KEYS, N_OF(SCHED_KEYS));
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "prediction_type");
    printf("prediction:   %s (%s)\n", cJSON_IsString(pt) ? pt->valuestring : "epsilon", m->prediction_why);
    printf("tokenizer:    %s\n", m->tokenizer_dir ? m->tokenizer_dir : "none (pass --tokenizer DIR)");
    size_t mapped = 0;
    for (int i = 0; i < m->n_sets; i++)
        for (int f = 0; f < m->sets[i].n_files; f++) mapped += m->sets[i].files[f].map_size;
    int nfiles = 0;
    for (int i = 0; i < m->n_sets; i++) nfiles += m->sets[i].n_files;
    grouped(a, sizeof a, params);
    human_bytes(b, sizeof b, (double)bytes);
    printf("total:        %s parameters, %s of tensors", a, b);
    human_bytes(b, sizeof b, (double)mapped);
    printf(" in %d file%s (%s mapped)\n", nfiles, nfiles == 1 ? "" : "s", b);
    printf("open time:    %.1f ms\n", open_ms);
    if (rss_kb >= 0) {
        human_bytes(b, sizeof b, 1024.0 * (double)rss_kb);
        printf("peak RSS:     %s (VmHWM)\n", b);
    }
}

static void print_json(const model_t *m, double open_ms, long rss_kb) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", m->path);
    cJSON_AddStringToObject(o, "layout", layout_name(m->layout));
    cJSON *cs = cJSON_AddObjectToObject(o, "components");
    const model_component_t *comps[3] = {&m->unet, &m->vae, &m->text_encoder};
    int64_t params = 0, bytes = 0;
    for (int k = 0; k < 3; k++) {
        const model_component_t *c = comps[k];
        cJSON *j = cJSON_AddObjectToObject(cs, c->name);
        cJSON_AddBoolToObject(j, "present", c->n_tensors > 0);
        if (!c->n_tensors) continue;
        stats_t s = component_stats(c);
        params += s.params;
        bytes += s.bytes;
        cJSON_AddNumberToObject(j, "tensors", c->n_tensors);
        cJSON_AddNumberToObject(j, "parameters", (double)s.params);
        cJSON_AddNumberToObject(j, "bytes", (double)s.bytes);
        cJSON *d = cJSON_AddObjectToObject(j, "dtypes");
        for (int t = 0; t < ST_DTYPE_COUNT; t++)
            if (s.by_dtype[t]) cJSON_AddNumberToObject(d, st_dtype_name((st_dtype_t)t), s.by_dtype[t]);
        cJSON_AddItemToObject(j, "config", cJSON_Duplicate(c->config, 1));
    }
    cJSON_AddItemToObject(o, "scheduler", cJSON_Duplicate(m->scheduler_config, 1));
    cJSON *pj = cJSON_AddObjectToObject(o, "prediction_type");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "prediction_type");
    cJSON_AddStringToObject(pj, "value", cJSON_IsString(pt) ? pt->valuestring : "epsilon");
    cJSON_AddStringToObject(pj, "source", m->prediction_why);
    cJSON_AddBoolToObject(pj, "guessed", m->prediction_guessed);
    if (m->tokenizer_dir) cJSON_AddStringToObject(o, "tokenizer", m->tokenizer_dir);
    else cJSON_AddNullToObject(o, "tokenizer");
    int nfiles = 0;
    double mapped = 0;
    for (int i = 0; i < m->n_sets; i++)
        for (int f = 0; f < m->sets[i].n_files; f++, nfiles++) mapped += (double)m->sets[i].files[f].map_size;
    cJSON_AddNumberToObject(o, "files", nfiles);
    cJSON_AddNumberToObject(o, "mapped_bytes", mapped);
    cJSON_AddNumberToObject(o, "total_parameters", (double)params);
    cJSON_AddNumberToObject(o, "total_bytes", (double)bytes);
    cJSON_AddNumberToObject(o, "open_ms", open_ms);
    if (rss_kb >= 0) cJSON_AddNumberToObject(o, "peak_rss_kb", (double)rss_kb);
    char *s = cJSON_Print(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
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
    model_open_options_t opt = cm.mo;
    if (!model) {
        fprintf(stderr, "svdiff info: --model DIR|FILE is required (see svdiff info --help)\n");
        return 2;
    }
    model_t m;
    double t0 = now();
    int rc = model_open(&m, model, &opt);
    double open_ms = 1e3 * (now() - t0);
    if (rc) {
        fprintf(stderr, "svdiff info: %s\n", sd_last_error());
        return 1;
    }
    long rss = peak_rss_kb();
    if (json) print_json(&m, open_ms, rss);
    else print_text(&m, open_ms, rss);
    model_close(&m);
    return 0;
}
