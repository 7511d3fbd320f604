# ctest script (CMakeLists.txt, cli.prompts_*): `svdiff generate --prompts FILE` on the tiny model
# (tests/fixtures/tiny-sd/diffusers, 16x16 and 24x16 images, 2-3 steps).
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -DCASE=<case> -P this
# Cases:
#   files    a file of comments, blank lines, plain prompts and JSON lines with overrides writes
#            exactly OUT-<line>-<k>.png (or DIR/<line>-<k>.png), each byte-identical to the single
#            `svdiff generate --prompt` run with that line's settings and seed (--seed + the image
#            index where the line gives none), the same bytes on a second run; --help explains it
#   errors   bad lines (bad JSON, unknown key, non-integer, too large, empty prompt), an empty and a
#            missing file exit before the model loads (a missing model is not reached) with
#            FILE:LINE: and the reason; a size the model cannot take and a refused target exit 1
#            before sampling; flags that do not go with --prompts exit 2; nothing is written
#   sigint   SIGINT during a prompts run keeps the images already written (valid PNGs), exits 130
#            with "N of M images written", leaves no temp file
cmake_minimum_required(VERSION 3.18)
foreach(v SVDIFF SRC WORK CASE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(tiny ${SRC}/tests/fixtures/tiny-sd/diffusers)
# the run's defaults; every single run below starts from the same flags
set(gen generate --model ${tiny} --steps 2 --cfg 5 --negative-prompt lowres --svd-cache none)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

# fails(<exit code> <regex> <args...>): exits with that code and says what matches the regex
function(fails want regex)
  run(${want} ${ARGN})
  if(NOT run_err MATCHES "${regex}")
    message(FATAL_ERROR "svdiff ${ARGN}\nsaid:\n${run_err}\nexpected a message matching: ${regex}")
  endif()
endfunction()

# only_files(<dir> <names...>): the folder holds exactly these files
function(only_files dir)
  file(GLOB got RELATIVE ${dir} ${dir}/*)
  list(SORT got)
  set(want ${ARGN})
  list(SORT want)
  if(NOT got STREQUAL want)
    message(FATAL_ERROR "${dir} holds '${got}', expected '${want}'")
  endif()
endfunction()

if(CASE STREQUAL "files")
  # lines 3, 5, 6, 8 and 9 are prompts; the images of the run are, in order:
  #   0: line 3 (seed 20 + 0)   1-3: line 5 (its seed 7, 8, 9)   4: line 6 (seed 20 + 4)
  #   5: line 8 (seed 20 + 5)   6: line 9 (seed 3)
  file(WRITE ${WORK}/p.txt "# subjects for the test\n\n  a photo of a cat  \n   # an indented comment\n"
    "{\"prompt\": \"a dog\", \"negative_prompt\": \"blurry\", \"seed\": 7, \"steps\": 3, \"cfg\": 3.5, \"num_images\": 3}\n"
    "{\"prompt\": \"#hashtag\", \"width\": 24, \"sampler\": \"euler_a\"}\r\n"
    "\t\n"
    "a house\n"
    "{\"prompt\": \"a tree\", \"seed\": \"3\", \"sampler\": \"dpmpp_2m\", \"eta\": 0.5, \"negative_prompt\": \"\"}")
  file(MAKE_DIRECTORY ${WORK}/run ${WORK}/again ${WORK}/single)
  run(0 ${gen} --seed 20 --batch-size 2 --prompts ${WORK}/p.txt -o ${WORK}/run/out.png)
  only_files(${WORK}/run out-0003-1.png out-0005-1.png out-0005-2.png out-0005-3.png out-0006-1.png
             out-0008-1.png out-0009-1.png)
  if(NOT run_err MATCHES "7 images of 5 prompts")
    message(FATAL_ERROR "no summary:\n${run_err}")
  endif()
  # the same file gives the same bytes (a folder output names the files <line>-<k>.png)
  run(0 ${gen} --seed 20 --batch-size 2 --prompts ${WORK}/p.txt -o ${WORK}/again/sub/)
  only_files(${WORK}/again/sub 0003-1.png 0005-1.png 0005-2.png 0005-3.png 0006-1.png 0008-1.png 0009-1.png)
  foreach(f 0003-1 0005-1 0005-2 0005-3 0006-1 0008-1 0009-1)
    same(${WORK}/run/out-${f}.png ${WORK}/again/sub/${f}.png)
  endforeach()
  # each image is the single run of its settings and seed (the PNG text included)
  set(s ${WORK}/single)
  run(0 ${gen} --seed 20 --prompt "a photo of a cat" -o ${s}/cat.png)
  same(${WORK}/run/out-0003-1.png ${s}/cat.png)
  run(0 ${gen} --seed 7 --batch-size 2 --prompt "a dog" --negative-prompt blurry --steps 3 --cfg 3.5
      --num-images 3 -o ${s}/dog.png)
  foreach(k 1 2 3)
    same(${WORK}/run/out-0005-${k}.png ${s}/dog-${k}.png)
  endforeach()
  run(0 ${gen} --seed 24 --prompt "#hashtag" --width 24 --sampler euler_a -o ${s}/hash.png)
  same(${WORK}/run/out-0006-1.png ${s}/hash.png)
  run(0 ${gen} --seed 25 --prompt "a house" -o ${s}/house.png)
  same(${WORK}/run/out-0008-1.png ${s}/house.png)
  run(0 ${gen} --seed 3 --prompt "a tree" --negative-prompt= --sampler dpmpp_2m --eta 0.5 -o ${s}/tree.png)
  same(${WORK}/run/out-0009-1.png ${s}/tree.png)
  # and the images differ from each other (the seeds and prompts are in use)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/run/out-0003-1.png ${WORK}/run/out-0008-1.png
                  RESULT_VARIABLE rc)
  if(NOT rc)
    message(FATAL_ERROR "lines 3 and 8 gave the same file")
  endif()
  execute_process(COMMAND ${SVDIFF} generate --help OUTPUT_VARIABLE help)
  if(NOT help MATCHES "--prompts FILE" OR NOT help MATCHES "OUT-<line>-<k>.png")
    message(FATAL_ERROR "generate --help does not explain --prompts")
  endif()
  file(READ ${WORK}/run/out-0005-2.png png HEX)
  string(HEX "a dog\nNegative prompt: blurry\nSteps: 3, Sampler: ddim, CFG scale: 3.5, Eta: 0, Seed: 8, Size: 16x16" text)
  string(FIND "${png}" "${text}" pos)
  if(pos LESS 0)
    message(FATAL_ERROR "out-0005-2.png does not carry its own settings in its parameters text")
  endif()

elseif(CASE STREQUAL "errors")
  set(bad generate --model ${WORK}/no-such-model --svd-cache none -o ${WORK}/x.png)
  # bad_line(<text of line 3> <regex after "p.txt:3: ">)
  function(bad_line text regex)
    file(WRITE ${WORK}/p.txt "# header\na good line\n${text}\nanother good line\n")
    fails(2 "^svdiff generate: [^\n]*p.txt:3: ${regex}" ${bad} --prompts ${WORK}/p.txt)
  endfunction()
  bad_line("{\"prompt\": \"x\", }" "not a valid JSON object \\(error at column 17\\)")
  bad_line("{\"prompt\": \"x\"} trailing" "text after the JSON object at column 17")
  bad_line("{\"prompt\": \"x\", \"sed\": 3}" "unknown key \"sed\" \\(known: prompt, negative_prompt, seed,")
  bad_line("{\"prompt\": \"x\", \"steps\": 2.5}" "\"steps\" must be an integer in \\[1, 1000\\], got 2.5")
  bad_line("{\"prompt\": \"x\", \"width\": 1e400}" "\"width\" must be an integer in \\[8, 8192\\], got a number too large")
  bad_line("{\"prompt\": \"x\", \"cfg\": 1e39}" "\"cfg\" must be a finite number, got 1e\\+39")
  bad_line("{\"prompt\": \"x\", \"cfg\": NaN}" "not a valid JSON object")
  bad_line("{\"prompt\": \"x\", \"seed\": -2}" "\"seed\" must be an integer in \\[0, 9007199254740992\\], got -2")
  bad_line("{\"prompt\": \"x\", \"num_images\": 0}" "\"num_images\" must be an integer in \\[1, 10000\\], got 0")
  bad_line("{\"prompt\": \"  \"}" "\"prompt\" is empty")
  bad_line("{\"negative_prompt\": \"x\"}" "no \"prompt\" key")
  bad_line("{\"prompt\": \"x\", \"sampler\": \"plms\"}" "unknown \"sampler\" \"plms\"")
  file(WRITE ${WORK}/empty.txt "# only comments\n\n   \n")
  fails(2 "empty.txt: no prompt in the file" ${bad} --prompts ${WORK}/empty.txt)
  file(WRITE ${WORK}/zero.txt "")
  fails(2 "zero.txt: no prompt in the file" ${bad} --prompts ${WORK}/zero.txt)
  fails(1 "missing.txt: cannot open: No such file" ${bad} --prompts ${WORK}/missing.txt)
  # flags that do not go with a prompts file
  fails(2 "--prompt and --prompts exclude each other" ${bad} --prompts ${WORK}/zero.txt --prompt x)
  fails(2 "--init-latents and --save-latents hold one prompt's images" ${bad} --prompts ${WORK}/zero.txt
        --save-latents ${WORK}/l.safetensors)
  # with the model: a size it cannot take (line 4) and a refused target (line 2's image is a
  # folder) fail before the first image is sampled
  file(WRITE ${WORK}/p.txt "# header\na cat\n{\"prompt\": \"a dog\"}\n{\"prompt\": \"x\", \"width\": 18}\n")
  fails(1 "p.txt:4: width and height must be positive multiples of 4 for this model \\(got 18x16\\)"
        ${gen} --prompts ${WORK}/p.txt -o ${WORK}/out/x.png)
  file(WRITE ${WORK}/p.txt "# header\na cat\n{\"prompt\": \"a dog\"}\n")
  file(MAKE_DIRECTORY ${WORK}/out/x-0003-1.png)
  fails(1 "x-0003-1.png" ${gen} --prompts ${WORK}/p.txt -o ${WORK}/out/x.png)
  # the prompts file is an input of the run, never an output (here it has the name of line 2's image)
  file(WRITE ${WORK}/q-0002-1.png "# comment\na cat\n")
  fails(1 "q-0002-1.png" ${gen} --prompts ${WORK}/q-0002-1.png -o ${WORK}/q.png)
  file(READ ${WORK}/q-0002-1.png text)
  if(NOT text STREQUAL "# comment\na cat\n")
    message(FATAL_ERROR "the prompts file was overwritten")
  endif()
  only_files(${WORK}/out x-0003-1.png)
  if(EXISTS ${WORK}/x.png OR EXISTS ${WORK}/x-0002-1.png OR EXISTS ${WORK}/0002-1.png)
    message(FATAL_ERROR "an image was written despite the errors")
  endif()

elseif(CASE STREQUAL "sigint")
  # 1000 images of 20 steps take 20 s or more (1 ms a step on a fast machine); the signal comes
  # as soon as the first file is there
  file(WRITE ${WORK}/p.txt "a photo of a cat\n{\"prompt\": \"a dog\", \"num_images\": 999}\n")
  list(JOIN gen "' '" gargs)
  execute_process(COMMAND sh -c "'${SVDIFF}' '${gargs}' --steps 20 --prompts '${WORK}/p.txt' -o '${WORK}/s.png' 2>'${WORK}/err' & pid=$!
      i=0; while [ ! -e '${WORK}/s-0001-1.png' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
      kill -INT $pid; wait $pid; echo $?" OUTPUT_VARIABLE rc)
  string(STRIP "${rc}" rc)
  file(READ ${WORK}/err err)
  if(NOT rc STREQUAL "130")
    message(FATAL_ERROR "generate exited with ${rc} after SIGINT, expected 130:\n${err}")
  endif()
  if(NOT err MATCHES "interrupted by SIGINT: ([0-9]+) of 1000 images written\n")
    message(FATAL_ERROR "no interruption message:\n${err}")
  endif()
  set(n ${CMAKE_MATCH_1})
  message(STATUS "after SIGINT: ${CMAKE_MATCH_0}")
  file(GLOB written ${WORK}/s-*.png)
  list(LENGTH written nw)
  if(n LESS 1 OR NOT nw EQUAL n OR n GREATER 999)
    message(FATAL_ERROR "the message says ${n} images, ${nw} files are there")
  endif()
  foreach(f ${written})
    # a whole PNG: the signature first, the IEND chunk last
    file(READ ${f} head HEX LIMIT 8)
    file(SIZE ${f} size)
    math(EXPR off "${size} - 12")
    file(READ ${f} tail HEX OFFSET ${off})
    if(NOT head STREQUAL "89504e470d0a1a0a" OR NOT tail STREQUAL "0000000049454e44ae426082")
      message(FATAL_ERROR "${f} is not a whole PNG")
    endif()
  endforeach()
  file(GLOB tmp ${WORK}/*.tmp.*)
  if(tmp)
    message(FATAL_ERROR "left behind: ${tmp}")
  endif()
else()
  message(FATAL_ERROR "unknown CASE ${CASE}")
endif()
message(STATUS "cli prompts ${CASE}: ok")
