# Helpers shared by the tests' cmake -P scripts (include()d after SVDIFF is defined).
# run(<expected exit code> <args...>): runs ${SVDIFF}, fails unless it exits with that code;
# its stdout in run_out, its stderr in run_err.
function(run want)
  execute_process(COMMAND ${SVDIFF} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc STREQUAL want)
    message(FATAL_ERROR "svdiff ${ARGN}\nexited with ${rc}, expected ${want}\n${out}${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
  set(run_err "${err}" PARENT_SCOPE)
endfunction()

# same(<a> <b>): the two files hold the same bytes
function(same a b)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${a} ${b} RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "${a} and ${b} differ")
  endif()
endfunction()
