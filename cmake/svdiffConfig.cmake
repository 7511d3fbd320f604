# find_package(svdiff) for an installed svdiff: the imported target svdiff::svdiff is libsvdiff.so
# with the folder of svdiff.h; its dependencies are private to it, so there is nothing else to find.
include("${CMAKE_CURRENT_LIST_DIR}/svdiffTargets.cmake")
