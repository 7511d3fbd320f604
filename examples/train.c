/* Spectral shifts of a subject with the svdiff C API, written as `svdiff train` writes them:
 *   train MODEL IMAGES_DIR PROMPT OUT_DIR STEPS [CANCEL_AT [CHECKPOINT_EVERY]] [--resume]
 * (== svdiff train --model MODEL --instance-dir IMAGES_DIR --instance-prompt PROMPT --steps STEPS
 *  -o OUT_DIR). CANCEL_AT > 0 stops the run from the cancel callback once that many steps are
 * done (exit 3), CHECKPOINT_EVERY writes a checkpoint every that many steps, --resume continues. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <svdiff.h>

typedef struct { int done, cancel_at; } run_t;

static void on_progress(svdiff_stage_t stage, int step, int total, double sec, void *user) {
    run_t *run = user;
    if (stage == SVDIFF_STAGE_TRAIN) run->done = step;
    printf("step %d/%d (%.3f s/step)\n", step, total, sec);
}

/* polled before each step: asks to stop once cancel_at steps are done */
static int on_cancel(void *user) {
    run_t *run = user;
    return run->cancel_at > 0 && run->done >= run->cancel_at;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODEL IMAGES_DIR PROMPT OUT_DIR STEPS [CANCEL_AT [CHECKPOINT_EVERY]] [--resume]\n", argv[0]);
        return 2;
    }
    run_t run = {0, 0};
    svdiff_train_params_t tp = svdiff_train_default_params();
    tp.model = argv[1];
    tp.instance_dir = argv[2];
    tp.instance_prompt = argv[3];
    tp.out_dir = argv[4];
    tp.steps = atoi(argv[5]);
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "--resume")) tp.resume = 1;
        else if (i == 6) run.cancel_at = atoi(argv[i]);
        else tp.checkpoint_every = atoi(argv[i]);
    }
    tp.callbacks.progress = on_progress;
    tp.callbacks.cancel = on_cancel;
    tp.callbacks.user_data = &run;
    int rc = svdiff_train(&tp);
    if (rc == SVDIFF_ERR_CANCELLED) { printf("cancelled after step %d\n", run.done); return 3; }
    if (rc != SVDIFF_OK) { fprintf(stderr, "train: %s (%s)\n", svdiff_last_error(), svdiff_error_name(rc)); return 1; }
    printf("wrote %s\n", tp.out_dir);
    return 0;
}
