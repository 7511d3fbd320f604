/* `svdiff compare`: pixel difference of image pairs (MSE on [0, 1] values and PSNR), the measure of
 * how much shifts change samples of the same seed (drift) and how well an edit reconstructs. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "cli/commands.h"
#include "io/image.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff compare A.png B.png [A2.png B2.png ...]\n\n"
            "Prints, for each pair of equal-size images, the mean squared difference of their RGB values\n"
            "scaled to [0, 1] and the PSNR in dB (inf for identical images), then the mean MSE over pairs.\n\n"
            "  --json       one JSON object {\"pairs\": [{\"mse\": .., \"psnr\": ..}, ...], \"mean_mse\": ..}\n"
            "  -h, --help   this text\n");
}

static int pair_mse(const char *a, const char *b, double *mse) {
    image_t x = {0}, y = {0};
    int rc = image_load(&x, a);
    if (!rc) rc = image_load(&y, b);
    if (!rc && (x.w != y.w || x.h != y.h))
        rc = sd_error(SD_ERR_ARG, "%s is %dx%d but %s is %dx%d", a, x.w, x.h, b, y.w, y.h);
    if (!rc) {
        double s = 0;
        const size_t n = (size_t)x.w * x.h * 3;
        for (size_t i = 0; i < n; i++) {
            const double d = (x.rgb[i] - (double)y.rgb[i]) / 255.0;
            s += d * d;
        }
        *mse = s / n;
    }
    image_free(&x), image_free(&y);
    return rc;
}

int cmd_compare(int argc, char **argv) {
    int json = 0;
    static const struct option opts[] = {{"json", no_argument, 0, 'J'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'J') json = 1;
        else if (o == 'h') return usage(stdout), 0;
        else return usage(stderr), 2;
    }
    const int n = argc - optind;
    if (n < 2 || n % 2) {
        fprintf(stderr, "svdiff compare: needs pairs of images (got %d files; see --help)\n", n);
        return 2;
    }
    double total = 0;
    if (json) printf("{\"pairs\": [");
    for (int i = 0; i < n; i += 2) {
        double mse;
        if (pair_mse(argv[optind + i], argv[optind + i + 1], &mse)) {
            if (json) printf("]}\n");
            fprintf(stderr, "svdiff compare: %s\n", sd_last_error());
            return 1;
        }
        const double psnr = mse > 0 ? 10 * log10(1 / mse) : INFINITY;
        total += mse;
        if (json && isinf(psnr)) printf("%s{\"mse\": 0, \"psnr\": null}", i ? ", " : "");   /* JSON has no inf */
        else if (json) printf("%s{\"mse\": %.8g, \"psnr\": %.4f}", i ? ", " : "", mse, psnr);
        else printf("%s  %s  mse %.6f  psnr %.2f dB\n", argv[optind + i], argv[optind + i + 1], mse, psnr);
    }
    if (json) printf("], \"mean_mse\": %.8g}\n", total / (n / 2));
    else if (n > 2) printf("mean mse %.6f over %d pairs\n", total / (n / 2), n / 2);
    return 0;
}
