# ctest script (CMakeLists.txt, cli.generate_*): `svdiff generate` on the tiny model
# (tests/fixtures/tiny-sd/diffusers, 16x16 images, 2-4 steps: well under a second per case).
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -DCASE=<case> -P this
# Cases:
#   params   the PNG has a 'parameters' text chunk starting with the prompt, and naming the
#            negative prompt, seed, steps and sampler
#   repeat   the same seed twice gives byte-identical PNGs; another seed a different one
#   batch    --num-images 3 --batch-size 2 writes OUT-1..3.png and the grid OUT.png, the same
#            files as --batch-size 1; image k is the image of seed + k alone
#   latents  --save-latents writes [N, C, h, w]; they load back as --init-latents; latents of
#            the wrong shape or a missing file exit 1 with a message naming the problem
#   usage    bad flags and missing arguments exit 2 with a message
cmake_minimum_required(VERSION 3.18)
foreach(v SVDIFF SRC WORK CASE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(prompt "a photo of a cat")
set(common generate --model ${SRC}/tests/fixtures/tiny-sd/diffusers --prompt ${prompt} --negative-prompt blurry
    --steps 3 --cfg 5 --sampler dpmpp_2m)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

# has_text(<file> <string>): the file contains these bytes
function(has_text file text)
  file(READ ${file} hex HEX)
  string(HEX "${text}" want)
  string(TOLOWER "${want}" want)
  string(FIND "${hex}" "${want}" pos)
  if(pos LESS 0)
    message(FATAL_ERROR "${file} does not contain '${text}'")
  endif()
endfunction()

if(CASE STREQUAL "params")
  run(0 ${common} --seed 31 -o ${WORK}/a.png)
  file(READ ${WORK}/a.png hex HEX LIMIT 8)
  if(NOT hex STREQUAL "89504e470d0a1a0a")
    message(FATAL_ERROR "a.png is not a PNG (${hex})")
  endif()
  # tEXt chunk: keyword "parameters", a NUL, then the text (which starts with the prompt)
  string(HEX "parameters" key)
  string(HEX "${prompt}\nNegative prompt: blurry\nSteps: 3, Sampler: dpmpp_2m, CFG scale: 5" text)
  file(READ ${WORK}/a.png png HEX)
  string(FIND "${png}" "74455874${key}00${text}" pos)
  if(pos LESS 0)
    message(FATAL_ERROR "a.png has no tEXt 'parameters' chunk starting with the prompt and settings")
  endif()
  has_text(${WORK}/a.png "Seed: 31,")
elseif(CASE STREQUAL "repeat")
  run(0 ${common} --seed 5 -o ${WORK}/a.png)
  run(0 ${common} --seed 5 -o ${WORK}/b.png)
  same(${WORK}/a.png ${WORK}/b.png)
  run(0 ${common} --seed 6 -o ${WORK}/c.png)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/a.png ${WORK}/c.png RESULT_VARIABLE rc)
  if(NOT rc)
    message(FATAL_ERROR "seeds 5 and 6 gave the same image")
  endif()
elseif(CASE STREQUAL "batch")
  run(0 ${common} --seed 7 --num-images 3 --batch-size 2 -o ${WORK}/b2.png)
  run(0 ${common} --seed 7 --num-images 3 --batch-size 1 -o ${WORK}/b1.png)
  foreach(f b2-1.png b2-2.png b2-3.png b2.png)
    if(NOT EXISTS ${WORK}/${f})
      message(FATAL_ERROR "--num-images 3 did not write ${f}")
    endif()
  endforeach()
  if(EXISTS ${WORK}/b2-4.png OR EXISTS ${WORK}/b2-0.png)
    message(FATAL_ERROR "--num-images 3 wrote more than 3 numbered files")
  endif()
  foreach(k 1 2 3)
    same(${WORK}/b2-${k}.png ${WORK}/b1-${k}.png)
  endforeach()
  same(${WORK}/b2.png ${WORK}/b1.png)
  has_text(${WORK}/b2-2.png "Seed: 8,")
  # image 2 (k = 1) is seed 8's image: same pixels and parameters, so the same file
  run(0 ${common} --seed 8 -o ${WORK}/s8.png)
  same(${WORK}/b2-2.png ${WORK}/s8.png)
elseif(CASE STREQUAL "latents")
  run(0 ${common} --seed 3 --num-images 2 --batch-size 2 -o ${WORK}/a.png --save-latents ${WORK}/a.safetensors)
  file(READ ${WORK}/a.safetensors head OFFSET 8 LIMIT 240)   # the JSON header after its length
  if(NOT head MATCHES "\"latents\":{\"dtype\":\"F32\",\"shape\":\\[2,4,8,8\\]")
    message(FATAL_ERROR "--save-latents header: ${head}")
  endif()
  # the saved latents have the right shape for a 2-image run: they load as starting latents,
  # and the same starting latents give the same images
  run(0 ${common} --num-images 2 --init-latents ${WORK}/a.safetensors -o ${WORK}/i.png)
  run(0 ${common} --num-images 2 --init-latents ${WORK}/a.safetensors -o ${WORK}/j.png)
  same(${WORK}/i-1.png ${WORK}/j-1.png)
  same(${WORK}/i-2.png ${WORK}/j-2.png)
  # [1, 4, 16, 16] from a 32x32 run does not fit a 16x16 run
  run(0 ${common} --width 32 --height 32 -o ${WORK}/big.png --save-latents ${WORK}/big.safetensors)
  run(1 ${common} --init-latents ${WORK}/big.safetensors -o ${WORK}/x.png)
  if(NOT run_err MATCHES "big.safetensors: tensor 'latents' must be \\[.*4, 8, 8\\]")
    message(FATAL_ERROR "wrong-shape --init-latents message: ${run_err}")
  endif()
  if(EXISTS ${WORK}/x.png)
    message(FATAL_ERROR "an image was written despite the bad --init-latents")
  endif()
  run(1 ${common} --init-latents ${WORK}/missing.safetensors -o ${WORK}/x.png)
  if(NOT run_err MATCHES "missing.safetensors")
    message(FATAL_ERROR "missing --init-latents message: ${run_err}")
  endif()
elseif(CASE STREQUAL "usage")
  foreach(bad "--steps;zero" "--steps;0" "--cfg;abc" "--sampler;plms" "--width;7" "--num-images;0"
              "--batch-size;-1" "--seed;-3" "--eta;2" "--bogus-flag" "extra-argument")
    run(2 ${common} ${bad} -o ${WORK}/x.png)
    if(run_err STREQUAL "")
      message(FATAL_ERROR "svdiff generate ${bad}: exit 2 without a message")
    endif()
  endforeach()
  run(2 generate --model ${SRC}/tests/fixtures/tiny-sd/diffusers -o ${WORK}/x.png)   # no --prompt
  if(NOT run_err MATCHES "--prompt")
    message(FATAL_ERROR "missing --prompt message: ${run_err}")
  endif()
  run(2 generate --model ${SRC}/tests/fixtures/tiny-sd/diffusers --prompt cat)       # no -o
  if(EXISTS ${WORK}/x.png)
    message(FATAL_ERROR "an image was written despite bad usage")
  endif()
  run(1 generate --model ${WORK}/no-such-model --prompt cat -o ${WORK}/x.png)
else()
  message(FATAL_ERROR "unknown CASE ${CASE}")
endif()
message(STATUS "cli generate ${CASE}: ok")
