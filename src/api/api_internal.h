/* What the API's source files share: the handles' real structs over the library's types. */
#ifndef SVDIFF_API_INTERNAL_H
#define SVDIFF_API_INTERNAL_H

#include "svdiff.h"

#include "base/error.h"

#endif
