/* libFuzzer harness: the component configs as the model loader reads or derives them, through
 * pipeline_open (model_open: model_index.json, config validation against the weights; then the
 * tokenizer, text encoder, UNet, VAE and scheduler built from those configs), then the samplers
 * on the scheduler it accepted.
 * Input: one selector byte, then the file. Selector % 6:
 *   0 model_index.json   1 unet/config.json   2 vae/config.json   3 text_encoder/config.json
 *   4 scheduler/scheduler_config.json    (in a copy of tests/fixtures/tiny-sd/diffusers whose
 *                                         other files are links to the fixture)
 *   5 the JSON header of a single-file (LDM) checkpoint: the harness appends zero data up to the
 *     largest data_offsets end (at most 4 MiB), so the fuzzer works on names and shapes, from
 *     which model_config.c derives the configs. */
#include "fuzz_util.h"

#include <cJSON.h>

#include "base/error.h"
#include "diffusion/diffusion.h"
#include "pipeline/pipeline.h"

#define FIX "tests/fixtures/tiny-sd/diffusers/"

static const char *const TARGETS[5] = {"model_index.json", "unet/config.json", "vae/config.json",
                                       "text_encoder/config.json", "scheduler/scheduler_config.json"};

static void setup(void) {
    static const char *const dirs[] = {"m", "m/unet", "m/vae", "m/text_encoder", "m/scheduler"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) fuzz_mkdir(dirs[i]);
    static const char *const files[] = {
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.json", "scheduler/scheduler_config.json", "tokenizer"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char rel[256], name[256];
        snprintf(rel, sizeof rel, FIX "%s", files[i]);
        snprintf(name, sizeof name, "m/%s", files[i]);
        fuzz_link_fixture(rel, name);
    }
}

/* Largest data_offsets end in a safetensors header (0 when it is not an object of tensors). */
static size_t data_end(const uint8_t *json, size_t n) {
    cJSON *h = cJSON_ParseWithLength((const char *)json, n);
    double end = 0;
    for (cJSON *e = h ? h->child : NULL; e; e = e->next) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        const cJSON *b = cJSON_GetArrayItem(o, 1);
        if (cJSON_IsNumber(b) && b->valuedouble > end) end = b->valuedouble;
    }
    cJSON_Delete(h);
    return end <= (double)(4u << 20) ? (size_t)end : 0;
}

static void run(const char *model, const char *tokenizer) {
    pipeline_t p;
    if (fuzz_rc(pipeline_open(&p, model, tokenizer), "pipeline_open") != 0) return;
    for (int k = 0; k < SAMPLER_KIND_COUNT; k++) {
        sampler_t s;
        if (sampler_init(&s, (sampler_kind_t)k, &p.sched, 3, 4, 0.5f) == 0) sampler_free(&s);
    }
    pipeline_close(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) setup(), ready = 1;
    if (size < 1) return 0;
    const int which = data[0] % 6;
    data++, size--;
    char path[512], model[512], tok[512];
    if (which == 5) {
        const size_t end = data_end(data, size);
        uint8_t *file = calloc(8 + size + end, 1);
        for (int i = 0; i < 8; i++) file[i] = (uint8_t)((uint64_t)size >> (8 * i));
        memcpy(file + 8, data, size);
        fuzz_write(fuzz_path(path, sizeof path, "ldm.safetensors"), file, 8 + size + end);
        free(file);
        run(path, fuzz_fixture(tok, sizeof tok, "tests/fixtures/tokenizer/tiny"));
        return 0;
    }
    char name[256];
    snprintf(name, sizeof name, "m/%s", TARGETS[which]);
    fuzz_path(path, sizeof path, name);
    unlink(path);   /* the link to the fixture, replaced by the input for this run */
    fuzz_write(path, data, size);
    run(fuzz_path(model, sizeof model, "m"), NULL);
    char rel[256];
    snprintf(rel, sizeof rel, FIX "%s", TARGETS[which]);
    unlink(path);
    fuzz_link_fixture(rel, name);
    return 0;
}
