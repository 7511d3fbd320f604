/* Composition of two images into the halves of one: the Cut-Mix samples of multi-subject training
 * (train/cutmix.h) and the known layouts of the leakage measure (train/eval_leakage.h). */
#ifndef SVDIFF_IO_IMAGE_COMPOSE_H
#define SVDIFF_IO_IMAGE_COMPOSE_H

#include "io/image.h"

/* out (res x res) = image a fitted into the left (vertical: top) half, b into the other half
 * (res / 2 and res - res / 2 pixels). fit 0: each image is scaled to cover its half and centre-cropped;
 * fit 1: scaled to fit inside its half, centred, the rest filled with the mean colour of the image's
 * border (emoji and product shots on a plain background). Bilinear sampling. Returns 0 or SD_ERR_NOMEM. */
int image_compose_halves(image_t *out, const image_t *a, const image_t *b, int res, int vertical, int fit);

#endif
