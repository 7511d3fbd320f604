# ctest script (CMakeLists.txt, cli.generate_sdxl_*): `svdiff generate` on the tiny SDXL-shaped model
# (tests/fixtures/tiny-sdxl: a diffusers folder and an sgm single file; 16x16 images, 2 steps: well
# under a second per run).
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -DCASE=<case> -P this
# Cases:
#   layouts   the single file and a diffusers folder holding the same weights and the configs the single
#             file derives give the same latents file bytes and the same pixels
#   defaults  without --sampler / --cfg the PNG text says euler (the scheduler config's class) and
#             CFG 5 (diffusers' SDXL pipeline) and the micro-conditioning defaults (16,16 / 0,0 / 16,16)
#   micro     each of --original-size, --crops-coords-top-left, --target-size (and a negative one)
#             changes the image and is recorded in the PNG text
#   negative  no --negative-prompt (zeros: force_zeros_for_empty_prompt) differs from
#             --negative-prompt "" (the empty prompt encoded)
#   clipskip  --clip-skip 1 changes the image, is recorded as A1111's "Clip skip: 2", and more than the
#             encoders allow exits 1 naming the limit
#   samplers  every sampler runs and gives its own image; --num-images 2 --batch-size 2 (guided rows of
#             two images with their pooled embeddings and time ids) gives the images of batch 1;
#             --save-latents loads back as --init-latents
#   errors    micro-conditioning on an SD 1.x model exits 1 naming text_time; malformed values exit 2
cmake_minimum_required(VERSION 3.19)
foreach(v SVDIFF SRC WORK CASE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(XL ${SRC}/tests/fixtures/tiny-sdxl)
set(common generate --model ${XL}/diffusers --prompt "a photo of a cat" --steps 2 --seed 3 --threads 1 --quiet)

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

# differ(<a> <b>): the two files hold different bytes
function(differ a b)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${a} ${b} RESULT_VARIABLE rc)
  if(NOT rc)
    message(FATAL_ERROR "${a} and ${b} are the same: the option changed nothing")
  endif()
endfunction()

# same_pixels(<a.png> <b.png>): svdiff compare finds no difference (the PNG texts may differ)
function(same_pixels a b)
  run(0 compare ${a} ${b})
  if(NOT run_out MATCHES "inf")
    message(FATAL_ERROR "${a} and ${b} differ in pixels:\n${run_out}")
  endif()
endfunction()

# err_has(<regex>): the last run's stderr matches
function(err_has re)
  if(NOT run_err MATCHES "${re}")
    message(FATAL_ERROR "expected a message matching '${re}', got:\n${run_err}")
  endif()
endfunction()

if(CASE STREQUAL "layouts")
  # A single file carries no configs: svdiff derives them from the shapes (SDXL base's head width and
  # group count). A folder with those configs and the fixture's weights (the same floats: the
  # fixture's values are float16-exact) is the same model in the other layout.
  run(0 info --json --model ${XL}/sdxl.safetensors --tokenizer ${XL}/diffusers/tokenizer)
  set(info "${run_out}")
  set(F ${WORK}/folder)
  foreach(part model_index.json scheduler tokenizer tokenizer_2)
    file(COPY ${XL}/diffusers/${part} DESTINATION ${F})
  endforeach()
  foreach(c unet vae text_encoder text_encoder_2)
    file(GLOB weights ${XL}/diffusers/${c}/*.safetensors ${XL}/diffusers/${c}/*.json)
    file(COPY ${weights} DESTINATION ${F}/${c})
    string(JSON cfg GET "${info}" components ${c} config)
    file(WRITE ${F}/${c}/config.json "${cfg}")
  endforeach()
  run(0 generate --model ${XL}/sdxl.safetensors --tokenizer ${XL}/diffusers/tokenizer --prompt "a photo of a cat"
      --negative-prompt "blurry" --steps 2 --seed 3 --width 16 --height 16 --threads 1 --quiet
      --save-latents ${WORK}/single.latents -o ${WORK}/single.png)
  run(0 generate --model ${F} --prompt "a photo of a cat" --negative-prompt "blurry" --steps 2 --seed 3
      --width 16 --height 16 --threads 1 --quiet --save-latents ${WORK}/folder.latents -o ${WORK}/folder.png)
  same(${WORK}/single.latents ${WORK}/folder.latents)
  same_pixels(${WORK}/single.png ${WORK}/folder.png)
  # no negative prompt: SDXL single files zero it as the base model's folder does
  run(0 generate --model ${XL}/sdxl.safetensors --tokenizer ${XL}/diffusers/tokenizer --prompt "a photo of a cat"
      --steps 2 --seed 3 --width 16 --height 16 --threads 1 --quiet --save-latents ${WORK}/single0.latents
      -o ${WORK}/single0.png)
  run(0 generate --model ${F} --prompt "a photo of a cat" --steps 2 --seed 3 --width 16 --height 16 --threads 1
      --quiet --save-latents ${WORK}/folder0.latents -o ${WORK}/folder0.png)
  same(${WORK}/single0.latents ${WORK}/folder0.latents)
  has_text(${WORK}/single0.png "Sampler: euler, CFG scale: 5,")
elseif(CASE STREQUAL "defaults")
  run(0 ${common} -o ${WORK}/a.png)
  has_text(${WORK}/a.png "Steps: 2, Sampler: euler, CFG scale: 5, Eta: 0, Seed: 3, Size: 16x16, Original size: \"16,16\", Crops coords top left: \"0,0\", Target size: \"16,16\", Model:")
  # the defaults are those values: giving them changes no byte
  run(0 ${common} --sampler euler --cfg 5 --original-size 16,16 --crops-coords-top-left 0,0 --target-size 16,16
      -o ${WORK}/b.png)
  same(${WORK}/a.png ${WORK}/b.png)
  # the micro-conditioning defaults follow the size
  run(0 ${common} --width 32 --height 16 -o ${WORK}/c.png)
  has_text(${WORK}/c.png "Size: 32x16, Original size: \"16,32\", Crops coords top left: \"0,0\", Target size: \"16,32\"")
elseif(CASE STREQUAL "micro")
  run(0 ${common} -o ${WORK}/base.png)
  run(0 ${common} --original-size 512,384 -o ${WORK}/orig.png)
  differ(${WORK}/base.png ${WORK}/orig.png)
  has_text(${WORK}/orig.png "Original size: \"512,384\", Crops coords top left: \"0,0\", Target size: \"16,16\"")
  run(0 ${common} --crops-coords-top-left 32,8 -o ${WORK}/crop.png)
  differ(${WORK}/base.png ${WORK}/crop.png)
  has_text(${WORK}/crop.png "Crops coords top left: \"32,8\"")
  run(0 ${common} --target-size 64,48 -o ${WORK}/target.png)
  differ(${WORK}/base.png ${WORK}/target.png)
  has_text(${WORK}/target.png "Target size: \"64,48\"")
  # the negative branch: its own values, recorded when they differ from the positive ones
  run(0 ${common} --negative-original-size 8,8 --negative-target-size 16,16 -o ${WORK}/neg.png)
  differ(${WORK}/base.png ${WORK}/neg.png)
  has_text(${WORK}/neg.png "Negative original size: \"8,8\", Negative crops coords top left: \"0,0\", Negative target size: \"16,16\"")
  # without guidance the negative branch is not run: its values change nothing
  run(0 ${common} --cfg 1 -o ${WORK}/g1.png)
  run(0 ${common} --cfg 1 --negative-crops-coords-top-left 4,4 -o ${WORK}/g1neg.png)
  run(0 compare ${WORK}/g1.png ${WORK}/g1neg.png)
  if(NOT run_out MATCHES "inf")
    message(FATAL_ERROR "unguided: the negative micro-conditioning changed the pixels:\n${run_out}")
  endif()
elseif(CASE STREQUAL "negative")
  run(0 ${common} -o ${WORK}/none.png)
  run(0 ${common} --negative-prompt= -o ${WORK}/empty.png)   # cmake drops an empty "" argument
  differ(${WORK}/none.png ${WORK}/empty.png)
  run(0 ${common} --negative-prompt "blurry" -o ${WORK}/blurry.png)
  differ(${WORK}/none.png ${WORK}/blurry.png)
  differ(${WORK}/empty.png ${WORK}/blurry.png)
elseif(CASE STREQUAL "clipskip")
  run(0 ${common} -o ${WORK}/a.png)
  run(0 ${common} --clip-skip 1 -o ${WORK}/b.png)
  differ(${WORK}/a.png ${WORK}/b.png)
  has_text(${WORK}/b.png "Target size: \"16,16\", Clip skip: 2, Model:")
  # the tiny encoders have 3 layers: the penultimate state with 2 more skipped runs none
  run(1 ${common} --clip-skip 2 -o ${WORK}/c.png)
  err_has("clip skip 2: the text encoders of this model allow at most 1")
  if(EXISTS ${WORK}/c.png)
    message(FATAL_ERROR "a refused run wrote c.png")
  endif()
  # SD 1.x: the final LayerNorm after the skipped layers; recorded the same way
  run(0 generate --model ${SRC}/tests/fixtures/tiny-sd/diffusers --prompt "a cat" --steps 2 --clip-skip 1
      --threads 1 --quiet -o ${WORK}/sd1.png)
  has_text(${WORK}/sd1.png "Size: 16x16, Clip skip: 2, Model:")
elseif(CASE STREQUAL "samplers")
  foreach(s ddim euler euler_a dpmpp_2m)
    run(0 ${common} --sampler ${s} -o ${WORK}/${s}.png)
    has_text(${WORK}/${s}.png "Sampler: ${s}, CFG scale: 5,")
  endforeach()
  differ(${WORK}/ddim.png ${WORK}/euler.png)
  differ(${WORK}/euler.png ${WORK}/euler_a.png)
  differ(${WORK}/euler.png ${WORK}/dpmpp_2m.png)
  # two guided images in one batch: rows [uncond x 2; cond x 2], each with its pooled embedding and
  # time ids; the images of batch size 1
  run(0 ${common} --negative-prompt "blurry" --original-size 64,64 --num-images 2 --batch-size 2 -o ${WORK}/b2.png)
  run(0 ${common} --negative-prompt "blurry" --original-size 64,64 --num-images 2 --batch-size 1 -o ${WORK}/b1.png)
  same(${WORK}/b2-1.png ${WORK}/b1-1.png)
  same(${WORK}/b2-2.png ${WORK}/b1-2.png)
  # the final latents load back as initial latents (the same shape), and start another image
  run(0 ${common} --save-latents ${WORK}/final.latents -o ${WORK}/s.png)
  run(0 ${common} --init-latents ${WORK}/final.latents -o ${WORK}/i1.png)
  run(0 ${common} --init-latents ${WORK}/final.latents -o ${WORK}/i2.png)
  same(${WORK}/i1.png ${WORK}/i2.png)
  differ(${WORK}/s.png ${WORK}/i1.png)
elseif(CASE STREQUAL "errors")
  set(sd1 generate --model ${SRC}/tests/fixtures/tiny-sd/diffusers --prompt "a cat" --steps 2 --threads 1 --quiet)
  foreach(flag original-size crops-coords-top-left target-size negative-target-size)
    run(1 ${sd1} --${flag} 8,8 -o ${WORK}/sd1.png)
    err_has("needs a UNet with SDXL's text_time embedding")
  endforeach()
  if(EXISTS ${WORK}/sd1.png)
    message(FATAL_ERROR "a refused run wrote sd1.png")
  endif()
  foreach(bad "8" "8,x" "8,8,8" ",8" "0,8" "-1,8" "8,70000" "")
    run(2 ${common} --original-size "${bad}" -o ${WORK}/bad.png)
    err_has("--original-size needs")
  endforeach()
  run(2 ${common} --crops-coords-top-left -1,0 -o ${WORK}/bad.png)
  err_has("--crops-coords-top-left needs an integer in \\[0, 65536\\]")
  run(2 ${common} --target-size 16 -o ${WORK}/bad.png)
  err_has("--target-size needs two integers")
  run(2 ${common} --clip-skip -1 -o ${WORK}/bad.png)
  err_has("--clip-skip needs an integer")
  if(EXISTS ${WORK}/bad.png)
    message(FATAL_ERROR "a refused run wrote bad.png")
  endif()
else()
  message(FATAL_ERROR "unknown CASE ${CASE}")
endif()
