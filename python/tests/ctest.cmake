# The Python bindings' tests (python/tests, unittest), included from CMakeLists.txt: each entry runs
# python/tests/run.py with Debian's /usr/bin/python3 against this tree's libsvdiff.so (svdiff_shared)
# and compares with this tree's svdiff binary. run.py exits 77 (skipped, with a message) when the
# library cannot be loaded. Sanitizer builds preload the sanitizer runtimes into python3 (the library
# is instrumented; leak checking is off: the interpreter's own allocations are not ours).
set(SVDIFF_PYTHON3 /usr/bin/python3 CACHE FILEPATH "the python3 the binding tests run with")
if(NOT EXISTS ${SVDIFF_PYTHON3})
  message(STATUS "python bindings: no ${SVDIFF_PYTHON3}, tests not registered")
  return()
endif()
if(SVDIFF_FUZZ)   # clang's fuzzer runtime cannot be preloaded into python3; the fuzz build runs harnesses only
  return()
endif()
set(SVDIFF_PY_ENV "SVDIFF_LIB=$<TARGET_FILE:svdiff_shared>" "SVDIFF_CLI=$<TARGET_FILE:svdiff>"
    "SVDIFF_SOURCE_DIR=${CMAKE_SOURCE_DIR}" "PYTHONDONTWRITEBYTECODE=1" "OMP_NUM_THREADS=2")
if(SVDIFF_SANITIZE)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libasan.so OUTPUT_VARIABLE asan OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libubsan.so OUTPUT_VARIABLE ubsan OUTPUT_STRIP_TRAILING_WHITESPACE)
  list(APPEND SVDIFF_PY_ENV "LD_PRELOAD=${asan}:${ubsan}" "ASAN_OPTIONS=detect_leaks=0")
endif()
foreach(case generate adapters train shifts shifts_tools tools errors package)
  add_test(NAME python.${case} COMMAND ${SVDIFF_PYTHON3} ${CMAKE_SOURCE_DIR}/python/tests/run.py test_${case})
  set_tests_properties(python.${case} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
    ENVIRONMENT "${SVDIFF_PY_ENV};SVDIFF_TEST_WORK=${CMAKE_BINARY_DIR}/python-tests/${case}")
endforeach()
# the same checks of images and shift values without numpy (svdiff.Image, lists)
add_test(NAME python.generate_no_numpy COMMAND ${SVDIFF_PYTHON3} ${CMAKE_SOURCE_DIR}/python/tests/run.py test_generate test_shifts test_tools)
set_tests_properties(python.generate_no_numpy PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
  ENVIRONMENT "${SVDIFF_PY_ENV};SVDIFF_NO_NUMPY=1;SVDIFF_TEST_WORK=${CMAKE_BINARY_DIR}/python-tests/no-numpy")
