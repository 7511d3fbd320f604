# The CLI verbs generate, train, edit, shifts and info are clients of the public API
# (include/svdiff.h): the library headers (src/, other than the CLI's own cli/) each of them still
# includes must be exactly the ones listed here, each for something the API lacks or for the CLI's
# own concerns (MPI ranks, progress bars, input formats). A new internal include fails this test, and
# so does a listed one that is gone (the list must shrink as the API grows).
#   cmake -DSRC=<source dir> -P tests/cli_api_includes.cmake
cmake_policy(SET CMP0057 NEW)   # if(IN_LIST)
set(allowed_generate
  base/dist.h           # MPI ranks: the CLI splits batches over processes
  base/error.h          # messages of the CLI's own checks (sd_error, sd_error_wrap)
  base/progress.h       # the progress bar drawn from the progress callback
  pipeline/prompts.h    # --prompts files: the CLI's input format
)
set(allowed_train
  base/error.h          # SD_CHECK
  train/cutmix.h        # CUTMIX_MAX_SUBJECTS, the most --subject
  train/settings.h      # the settings table: the flags, their help and parsing
  train/trainer.h       # train_config_t (the table's struct) and its defaults
)
set(allowed_edit
  base/error.h          # messages of the CLI's own checks (sd_error)
  base/progress.h       # the progress bar drawn from the progress callback
  train/settings.h      # the training settings table: the fine-tuning's flags
  train/trainer.h       # train_config_t, the struct the table's flags are parsed into
)
set(allowed_shifts)    # none: every verb of `svdiff shifts` is an API client
set(allowed_info)      # none: svdiff_model_describe

if(NOT SRC)
  message(FATAL_ERROR "usage: cmake -DSRC=<source dir> -P cli_api_includes.cmake")
endif()
set(failed 0)
foreach(verb generate train edit shifts info)
  set(file ${SRC}/src/cli/${verb}.c)
  if(NOT EXISTS ${file})
    message(SEND_ERROR "${file}: missing")
    set(failed 1)
    continue()
  endif()
  file(STRINGS ${file} lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
  set(found "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"]+)\".*" "\\1" inc "${line}")
    if(inc STREQUAL "svdiff.h" OR inc MATCHES "^cli/")
      continue()
    endif()
    list(APPEND found ${inc})
    if(NOT inc IN_LIST allowed_${verb})
      message(SEND_ERROR "src/cli/${verb}.c includes the internal header \"${inc}\", which is not in the "
                         "allowed list of tests/cli_api_includes.cmake: call the public API (svdiff.h) instead")
      set(failed 1)
    endif()
  endforeach()
  foreach(inc IN LISTS allowed_${verb})
    if(NOT inc IN_LIST found)
      message(SEND_ERROR "src/cli/${verb}.c no longer includes \"${inc}\": remove it from the allowed list "
                         "of tests/cli_api_includes.cmake")
      set(failed 1)
    endif()
  endforeach()
  list(LENGTH found n)
  message(STATUS "${verb}.c: ${n} internal includes: ${found}")
endforeach()
if(failed)
  message(FATAL_ERROR "internal includes of the CLI verbs differ from the allowed list")
endif()
message(STATUS "CLI verbs include only the allowed internal headers")
