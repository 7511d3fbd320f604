/* One image from a prompt with the svdiff C API, written as `svdiff generate` writes it:
 *   hello MODEL PROMPT OUT.png [STEPS]   (== svdiff generate --model MODEL --prompt PROMPT
 *   -o OUT.png [--steps STEPS]) */
#include <stdio.h>
#include <stdlib.h>
#include <svdiff.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s MODEL PROMPT OUT.png [STEPS]\n", argv[0]); return 2; }
    svdiff_model_t *model = NULL;
    svdiff_image_t *img = NULL;
    svdiff_generate_params_t gp = svdiff_generate_default_params();
    gp.prompt = argv[2];
    if (argc > 4) gp.steps = atoi(argv[4]);
    int rc = svdiff_model_open(argv[1], NULL, &model);
    if (rc == SVDIFF_OK) rc = svdiff_generate(model, &gp, &img);
    if (rc == SVDIFF_OK) {
        char *text = svdiff_png_parameters(model, &gp, img->seed, argv[1]);   /* the PNG's text */
        rc = text ? svdiff_png_write(argv[3], img->rgb, img->width, img->height, text) : SVDIFF_ERR_NOMEM;
        svdiff_free(text);
    }
    if (rc != SVDIFF_OK) fprintf(stderr, "hello: %s (%s)\n", svdiff_last_error(), svdiff_error_name(rc));
    svdiff_images_free(img, 1);
    svdiff_model_close(model);
    return rc == SVDIFF_OK ? 0 : 1;
}
