# ctest script (CMakeLists.txt, cli.prediction): --prediction-type and --scheduler-config through
# the CLI (tests/test_prediction.c covers the decision in-process). Every verb that samples or
# trains documents both flags; `svdiff info` says what it decided and why for the tiny SD 2.x single
# file with an LDM config beside it, without one (a guess, warned once), and with the flag; the
# flags reach generate, eval and train (the outputs change, and a scheduler config naming
# v_prediction gives the same image as the flag); a bad value is a usage error.
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -P this
cmake_minimum_required(VERSION 3.18)
foreach(v SVDIFF SRC WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(tiny ${SRC}/tests/fixtures/tiny-sd/diffusers)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

function(must text regex what)
  if(NOT text MATCHES "${regex}")
    message(FATAL_ERROR "${what}: expected /${regex}/ in:\n${text}")
  endif()
endfunction()

# 1. spelled the same, explained, in every verb that samples or trains
foreach(verb generate train pretrain edit eval attention-leakage info)
  run(0 ${verb} --help)
  must("${run_out}" "--prediction-type T +epsilon or v_prediction.*--scheduler-config FILE +a diffusers scheduler_config.json"
       "${verb} --help")
endforeach()

# 2. svdiff info on single files: the config beside the file, the guess (warned once), the flag
file(CREATE_LINK ${SRC}/tests/fixtures/tiny-sd/sd2.safetensors ${WORK}/v2-768.safetensors SYMBOLIC)
file(WRITE ${WORK}/v2-768.yaml "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: \"v\"\n")
run(0 info --model ${WORK}/v2-768.safetensors)
must("${run_out}" "prediction: +v_prediction \\(parameterization \"v\" in v2-768.yaml beside the file\\)" "info with a yaml")
if(run_err MATCHES "warning")
  message(FATAL_ERROR "a decided prediction type warns:\n${run_err}")
endif()
file(CREATE_LINK ${SRC}/tests/fixtures/tiny-sd/sd2.safetensors ${WORK}/plain.safetensors SYMBOLIC)
run(0 info --model ${WORK}/plain.safetensors)
must("${run_out}" "prediction: +epsilon \\(guess: SD 2.x single file without plain.yaml or metadata; std of .* not above 0.09 .*pass --prediction-type to override\\)"
     "info guessing")
string(REGEX MATCHALL "says nothing of its prediction type" warnings "${run_err}")
list(LENGTH warnings n)
if(NOT n EQUAL 1)
  message(FATAL_ERROR "expected the warning once, got ${n}:\n${run_err}")
endif()
must("${run_err}" "Pass --prediction-type epsilon\\|v_prediction" "the warning names the flag")
run(0 info --model ${WORK}/plain.safetensors --prediction-type v_prediction --json)
must("${run_out}" "\"value\":[ \t]+\"v_prediction\",[ \n\t]*\"source\":[ \t]+\"--prediction-type\",[ \n\t]*\"guessed\":[ \t]+false" "info --json with the flag")
if(run_err MATCHES "warning")
  message(FATAL_ERROR "the flag still warns:\n${run_err}")
endif()
run(0 info --model ${tiny})
must("${run_out}" "prediction: +epsilon \\(the folder's scheduler/scheduler_config.json\\)" "info on a folder")

# 3. bad values: usage errors (2) with the reason; a missing scheduler config names the file
foreach(verb generate train eval info)
  run(2 ${verb} --model ${tiny} --prediction-type v)
  must("${run_err}" "svdiff ${verb}: --prediction-type must be epsilon or v_prediction, got 'v'" "${verb} bad value")
endforeach()
run(1 info --model ${tiny} --scheduler-config ${WORK}/missing.json)
must("${run_err}" "--scheduler-config: .*missing.json" "missing scheduler config")

# 4. the flags reach sampling: v_prediction changes the image; a scheduler config naming it gives
#    the same bytes as the flag
file(READ ${tiny}/scheduler/scheduler_config.json sc)
string(REPLACE "\"epsilon\"" "\"v_prediction\"" sc "${sc}")
file(WRITE ${WORK}/v_sched.json "${sc}")
set(gen generate --model ${tiny} --prompt cat --steps 3 --width 16 --height 16 --seed 3 --threads 1)
run(0 ${gen} -o ${WORK}/eps.png)
run(0 ${gen} --prediction-type v_prediction -o ${WORK}/v_flag.png)
run(0 ${gen} --scheduler-config ${WORK}/v_sched.json -o ${WORK}/v_sched.png)
file(SHA256 ${WORK}/eps.png h_eps)
file(SHA256 ${WORK}/v_flag.png h_flag)
file(SHA256 ${WORK}/v_sched.png h_sched)
if(h_eps STREQUAL h_flag OR NOT h_flag STREQUAL h_sched)
  message(FATAL_ERROR "generate: epsilon ${h_eps}, --prediction-type ${h_flag}, --scheduler-config ${h_sched}")
endif()

# 5. eval and train: the loss's target follows the prediction type
set(ev eval --model ${tiny} --images ${SRC}/tests/fixtures/train/images --prompt "a dog" --resolution 16
    --noise-draws 1 --num-timesteps 2 --json)
run(0 ${ev})
set(l_eps "${run_out}")
run(0 ${ev} --prediction-type v_prediction)
if(l_eps STREQUAL run_out)
  message(FATAL_ERROR "eval: the same loss with v_prediction:\n${run_out}")
endif()
set(tr train --model ${tiny} --instance-dir ${SRC}/tests/fixtures/train/images --instance-prompt "a photo of sks dog"
    --resolution 16 --steps 1 --threads 1 --quiet)
run(0 ${tr} -o ${WORK}/t_eps)
run(0 ${tr} --scheduler-config ${WORK}/v_sched.json -o ${WORK}/t_v)
file(READ ${WORK}/t_eps/loss.csv a)
file(READ ${WORK}/t_v/loss.csv b)
if(a STREQUAL b)
  message(FATAL_ERROR "train: the same loss.csv with a v_prediction scheduler config:\n${a}")
endif()
