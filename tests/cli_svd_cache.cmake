# ctest script (CMakeLists.txt, cli.svd_cache_*): the SVD cache is only a speed-up, so a cache
# that cannot be used never stops `svdiff train` (3 steps of the tiny model, about a second a run).
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -DCASE=<case> -P this
# Cases:
#   unwritable  a run with a good cache gives the reference shift file; then a cache folder whose
#               parent is a regular file (cannot be created), and a cache whose file name is taken
#               by a folder (opens, cannot be saved: the run used to fail after the SVD): each run
#               exits 0 with a warning naming the path and writes the same shift file bytes
cmake_minimum_required(VERSION 3.18)
foreach(v SVDIFF SRC WORK CASE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(train train --model ${SRC}/tests/fixtures/tiny-sd/diffusers --instance-dir ${SRC}/tests/fixtures/train/images
    --instance-prompt "a photo of sks dog" --resolution 16 --steps 3 --threads 1 --quiet)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

# expect(<regex> <text>): the text (stderr of a run) matches
function(expect re text)
  if(NOT text MATCHES "${re}")
    message(FATAL_ERROR "expected '${re}' in:\n${text}")
  endif()
endfunction()

if(CASE STREQUAL "unwritable")
  run(0 ${train} --svd-cache ${WORK}/cache -o ${WORK}/ref)
  file(GLOB cache_file RELATIVE ${WORK}/cache ${WORK}/cache/*.svd.safetensors)
  list(LENGTH cache_file n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "expected one cache file in ${WORK}/cache, found '${cache_file}'")
  endif()
  set(ref ${WORK}/ref/spectral_shifts.safetensors)
  # the folder cannot be created: its parent is a regular file
  file(WRITE ${WORK}/plain-file "not a folder\n")
  run(0 ${train} --svd-cache ${WORK}/plain-file/cache -o ${WORK}/under-file)
  expect("warning: [^\n]*plain-file/cache[^\n]*" "${run_err}")
  same(${ref} ${WORK}/under-file/spectral_shifts.safetensors)
  # the folder is there, but a folder stands where the cache file must go: reading it and saving
  # it both fail
  file(MAKE_DIRECTORY ${WORK}/blocked/${cache_file})
  run(0 ${train} --svd-cache ${WORK}/blocked -o ${WORK}/blocked-out)
  expect("warning: [^\n]*blocked/${cache_file}[^\n]*going on without saving the SVD cache" "${run_err}")
  string(REGEX MATCHALL "going on without saving" said "${run_err}")
  list(LENGTH said n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "the failed save was reported ${n} times, not once:\n${run_err}")
  endif()
  same(${ref} ${WORK}/blocked-out/spectral_shifts.safetensors)
  if(NOT IS_DIRECTORY ${WORK}/blocked/${cache_file})
    message(FATAL_ERROR "the folder in the cache file's place was replaced")
  endif()
  message(STATUS "unwritable SVD caches: warnings, exit 0, same shift bytes")
else()
  message(FATAL_ERROR "unknown CASE ${CASE}")
endif()
