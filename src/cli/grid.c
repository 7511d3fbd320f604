/* `svdiff grid`: lays images of one size out in a grid PNG (rows of --cols), optionally scaled up
 * by whole pixels, so that 32 px samples of the default model can be looked at side by side
 * (the quick start's base-vs-personalised sheet). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "io/image.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff grid [options] -o OUT.png IMAGE...\n\n"
            "Writes the images (all of one size; PNG or JPEG) as one grid PNG, row by row.\n\n"
            "  -o, --output FILE   the grid (written atomically; also --output-dir)\n"
            "  --cols N            images per row (default: about square)\n"
            "  --pad P             white pixels between and around the images, before scaling (default 2)\n"
            "  --scale K           enlarge every pixel to K x K (nearest neighbour; default 1)\n"
            "  -h, --help          this text\n");
}

/* out = in with every pixel repeated k x k times. */
static int image_scale_nearest(image_t *out, const image_t *in, int k) {
    if (image_alloc(out, in->w * k, in->h * k)) return SD_ERR_NOMEM;
    for (int y = 0; y < out->h; y++)
        for (int x = 0; x < out->w; x++)
            memcpy(out->rgb + 3 * ((size_t)y * out->w + x), in->rgb + 3 * ((size_t)(y / k) * in->w + x / k), 3);
    return SD_OK;
}

int cmd_grid(int argc, char **argv) {
    const char *out = NULL;
    int cols = 0, pad = 2, scale = 1;
    static const struct option opts[] = {{"cols", required_argument, 0, 'c'},
                                         {"pad", required_argument, 0, 'p'},    {"scale", required_argument, 0, 's'},
                                         {0, 0, 0, 0}};
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "grid", opts, CLI_OUTPUT, &cm);
    ps.operands = 1;
    int o;
    while ((o = cli_getopt(&ps, argc, argv)) != -1) {
        int bad = 0;
        switch (o) {
        case 'c': bad = cli_parse_int("grid", "--cols", optarg, 1, 10000, &cols); break;
        case 'p': bad = cli_parse_int("grid", "--pad", optarg, 0, 1000, &pad); break;
        case 's': bad = cli_parse_int("grid", "--scale", optarg, 1, 64, &scale); break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    out = cm.output;
    const int n = argc - optind;
    if (!out || n < 1) {
        fprintf(stderr, "svdiff grid: -o OUT.png and at least one image are needed (see --help)\n");
        return 2;
    }
    image_t *imgs = calloc((size_t)n, sizeof *imgs);
    int rc = imgs ? 0 : sd_error(SD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !rc; i++) {
        rc = image_load(&imgs[i], argv[optind + i]);
        if (!rc && (imgs[i].w != imgs[0].w || imgs[i].h != imgs[0].h))
            rc = sd_error(SD_ERR_ARG, "%s is %dx%d, %s is %dx%d: a grid needs images of one size", argv[optind + i],
                          imgs[i].w, imgs[i].h, argv[optind], imgs[0].w, imgs[0].h);
    }
    image_t grid = {0}, big = {0};
    if (!rc) rc = image_grid(&grid, imgs, n, cols, pad);
    if (!rc && scale > 1) rc = image_scale_nearest(&big, &grid, scale);
    if (!rc) rc = image_save_png(scale > 1 ? &big : &grid, out, NULL, NULL, 0);
    if (rc) fprintf(stderr, "svdiff grid: %s\n", sd_last_error());
    for (int i = 0; i < n && imgs; i++) image_free(&imgs[i]);
    free(imgs);
    image_free(&grid), image_free(&big);
    return rc ? 1 : 0;
}
