/* libFuzzer harness: shift, LoRA and weight-delta files with their metadata, applied (at scale
 * 0, so the model stays as it was) to the tiny fixture model opened once: the readers
 * (shiftset_load, the LoRA tensor grouping, kohya names, lora_alpha, base_model_hash) and the
 * name and shape checks against the model.
 * Input: one selector byte, then the .safetensors file. Selector % 3: 0 --shifts, 1 --lora,
 * 2 --delta; (selector / 3) & 1: --force. */
#include "fuzz_util.h"

#include "base/error.h"
#include "pipeline/adapters.h"
#include "pipeline/pipeline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static pipeline_t p;
    static int ready;
    if (!ready) {
        char dir[512];
        if (pipeline_open(&p, fuzz_fixture(dir, sizeof dir, "tests/fixtures/tiny-sd/diffusers"), NULL)) {
            fprintf(stderr, "fuzz_adapters: %s\n", sd_last_error());
            abort();
        }
        ready = 1;
    }
    if (size < 1) return 0;
    const int mode = data[0] % 3, force = (data[0] / 3) & 1;
    static const char *const names[3] = {"in_shifts.safetensors", "in_lora.safetensors", "in_delta.safetensors"};
    char path[512];
    fuzz_write(fuzz_path(path, sizeof path, names[mode]), data + 1, size - 1);
    const pipeline_shift_t file = {path, 0.0f};
    if (mode == 0) fuzz_rc(pipeline_apply_shifts(&p, &file, 1, force, NULL), "apply shifts");
    else if (mode == 1) fuzz_rc(pipeline_apply_loras(&p, &file, 1, force), "apply LoRA");
    else fuzz_rc(pipeline_apply_deltas(&p, &file, 1, force), "apply delta");
    return 0;
}
