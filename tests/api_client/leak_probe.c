/* A shared library whose ABI is wrong in the three ways tests/pkg_symbols.cmake must catch (the
 * ctest entry pkg.symbols_leak expects it to fail on this library): an internal function exported,
 * an svdiff_* function exported that svdiff.h does not declare, and (this library has none of
 * the API) every function svdiff.h declares missing. */
#include "svdiff.h"

__attribute__((visibility("default"))) int sd_probe_internal(void) { return 1; }
SVDIFF_API int svdiff_probe_undeclared(void) { return 2; }
