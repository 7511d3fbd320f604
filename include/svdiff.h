/* libsvdiff: the public entry point. For now the library's API is its engine layers, each in
 * its own header (included below): safetensors I/O, operators with forward and backward,
 * weight kinds with spectral shifts, the optimizer. Functions return 0 or a negative
 * SD_ERR_* code and leave a message for sd_last_error(). Link with -lsvdiff plus OpenBLAS,
 * LAPACKE, cJSON and OpenMP (see CMakeLists.txt). */
#ifndef SVDIFF_H
#define SVDIFF_H

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "io/safetensors.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "train/optim.h"
#include "weights/spectral.h"
#include "weights/weight.h"

#endif
