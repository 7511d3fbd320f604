# ctest script (CMakeLists.txt, cli.sdxl_shifts): SDXL shift files through the command line on the
# tiny SDXL fixture. `svdiff train --train-text-encoder` writes three files of one run (UNet, text
# encoder, text_encoder_2); every `svdiff shifts` verb reads and writes that folder (info, combine,
# scale, limit-rank, mix with the SDXL presets, convert, to-lora with kohya's SDXL key names and
# diffusers' text_encoder_2 ones); generate, eval, attention-leakage and edit run with the shifts.
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -P this
cmake_minimum_required(VERSION 3.18)
foreach(v SVDIFF SRC WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(M ${SRC}/tests/fixtures/tiny-sdxl/diffusers)
set(IMAGES ${SRC}/tests/fixtures/train/images)

# run(<want exit> <args...>): svdiff's stdout in `out`, stderr in `err`; fails on another exit code.
function(run want)
  execute_process(COMMAND ${SVDIFF} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE o ERROR_VARIABLE e)
  if(NOT rc STREQUAL want)
    message(FATAL_ERROR "svdiff ${ARGN}\nexited with ${rc}, expected ${want}\n${o}${e}")
  endif()
  set(out "${o}" PARENT_SCOPE)
  set(err "${e}" PARENT_SCOPE)
endfunction()

function(expect text regex)
  if(NOT text MATCHES "${regex}")
    message(FATAL_ERROR "expected /${regex}/ in:\n${text}")
  endif()
endfunction()

function(files_exist)
  foreach(f ${ARGN})
    if(NOT EXISTS ${f})
      message(FATAL_ERROR "missing ${f}")
    endif()
  endforeach()
endfunction()

set(PARTS spectral_shifts.safetensors spectral_shifts_te.safetensors spectral_shifts_te2.safetensors)
function(folder_exists dir)
  foreach(p ${PARTS})
    files_exist(${dir}/${p})
  endforeach()
endfunction()

# training: three files
run(0 train --model ${M} --instance-dir ${IMAGES} --instance-prompt "a photo of sks dog" --resolution 16
    --steps 3 --lr 1e-2 --train-text-encoder --flip --svd-cache none --threads 1 --quiet -o ${WORK}/run)
expect("${err}" "spectral_shifts_te2.safetensors")
folder_exists(${WORK}/run)

# memory: a run whose estimate (svdiff info's model, here 68.42 MB with fp32 factors and no
# checkpointing, 67.91 MB with bf16 factors and checkpointing, 68.11 MB checkpointed alone) exceeds
# the RAM is refused before anything is written, naming the flags that fit
set(ENV{SVDIFF_TEST_RAM_BYTES} 68000000)
set(tr train --model ${M} --instance-dir ${IMAGES} --instance-prompt "a photo of sks dog" --resolution 16 --steps 1
    --svd-cache none --threads 1 --quiet)
run(1 ${tr} -o ${WORK}/mem)
expect("${err}" "training at 16 px needs about 0.1 GB \\(fp32 SVD factors, no gradient checkpointing.*add --compute-dtype bf16 --gradient-checkpointing")
if(EXISTS ${WORK}/mem)
  message(FATAL_ERROR "a refused run created ${WORK}/mem")
endif()
set(ENV{SVDIFF_TEST_RAM_BYTES} 68150000)
run(1 ${tr} -o ${WORK}/mem)
expect("${err}" "add --gradient-checkpointing \\(about")
run(0 ${tr} --gradient-checkpointing -o ${WORK}/mem)
set(ENV{SVDIFF_TEST_RAM_BYTES} 68000000)
run(0 ${tr} --gradient-checkpointing --compute-dtype bf16 -o ${WORK}/mem2)
set(ENV{SVDIFF_TEST_RAM_BYTES} 1000)
run(1 ${tr} --gradient-checkpointing --compute-dtype bf16 -o ${WORK}/mem3)
expect("${err}" "even with --compute-dtype bf16 --gradient-checkpointing")
unset(ENV{SVDIFF_TEST_RAM_BYTES})

# info: one object per file, the second encoder's blocks named
run(0 shifts info ${WORK}/run --json)
expect("${out}" "spectral_shifts_te2.safetensors")
expect("${out}" "\"text_encoder_2.text_model.encoder.layers.0\"")
expect("${out}" "\"text_model.encoder.layers.0\"")
run(0 shifts info ${WORK}/run)
expect("${out}" "text_encoder_2.text_model \\(other\\)")

# combine, scale, limit-rank, convert: folders in, folders out (three parts, one new group id)
run(0 shifts combine ${WORK}/run ${WORK}/run --weights 0.5,0.5 -o ${WORK}/comb)
expect("${out}" "wrote ${WORK}/comb/spectral_shifts_te2.safetensors")
folder_exists(${WORK}/comb)
run(0 shifts scale ${WORK}/run 0.5 -o ${WORK}/half)
folder_exists(${WORK}/half)
run(0 shifts limit-rank ${WORK}/run 2 -o ${WORK}/lr)
expect("${out}" "spectral_shifts_te2.safetensors: [0-9]+ of [0-9]+ shift values kept")
run(0 shifts convert ${WORK}/run --dtype fp16 -o ${WORK}/f16)
expect("${out}" "spectral_shifts_te2.safetensors \\([0-9]+ shifts, F16\\)")
# the halves of a combine of a set with itself at 0.5 each are that set: the same values as scale 1
run(0 shifts info ${WORK}/comb --json --top 3)
set(comb "${out}")
run(0 shifts info ${WORK}/run --json --top 3)
string(REGEX MATCH "\"largest_shifts\"[^]]*" a "${comb}")
string(REGEX MATCH "\"largest_shifts\"[^]]*" b "${out}")
if(NOT a STREQUAL b)
  message(FATAL_ERROR "combine 0.5 + 0.5 changed the shifts:\n${a}\n${b}")
endif()
# a third part that does not belong: the group ids differ
file(COPY ${WORK}/half/spectral_shifts_te2.safetensors DESTINATION ${WORK}/mixed)
file(COPY ${WORK}/run/spectral_shifts.safetensors ${WORK}/run/spectral_shifts_te.safetensors DESTINATION ${WORK}/mixed)
run(1 shifts info ${WORK}/mixed)
expect("${err}" "were not written together")

# mix: the SDXL presets by block and level (3 levels, told by the files)
run(0 shifts mix --from ${WORK}/run --rest ${WORK}/half --layers content -o ${WORK}/mix1)
expect("${out}" "spectral_shifts.safetensors: [1-9][0-9]* of [0-9]+ shifts from")
run(0 shifts mix --from ${WORK}/run --rest ${WORK}/half --layers style level:0 geometry -o ${WORK}/mix2)
folder_exists(${WORK}/mix2)
run(2 shifts mix --from ${WORK}/run --rest ${WORK}/half --layers level:3 -o ${WORK}/mix3)
expect("${err}" "level:3")
run(2 shifts mix --from ${WORK}/run --rest ${WORK}/half --layers style --levels 4 -o ${WORK}/mix4)
expect("${err}" "SDXL preset")

# to-lora: kohya's SDXL names (lora_unet_, lora_te1_, lora_te2_) and diffusers' text_encoder_2.
run(0 shifts to-lora ${WORK}/run --model ${M} --svd-cache none -o ${WORK}/kohya.safetensors)
file(READ ${WORK}/kohya.safetensors head LIMIT 200000)
foreach(k lora_unet_add_embedding_linear_1.lora_down.weight lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight
          lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_down.weight lora_te2_text_projection.alpha)
  string(FIND "${head}" "\"${k}\"" at)
  if(at LESS 0)
    message(FATAL_ERROR "to-lora: no key ${k} in ${WORK}/kohya.safetensors")
  endif()
endforeach()
string(FIND "${head}" "\"lora_te_" at)
if(NOT at LESS 0)
  message(FATAL_ERROR "to-lora: an SD 1.x lora_te_ key in an SDXL file")
endif()
run(0 shifts to-lora ${WORK}/run --model ${M} --format diffusers --no-norms --no-embeddings --svd-cache none
    -o ${WORK}/diffusers.safetensors)
file(READ ${WORK}/diffusers.safetensors head LIMIT 200000)
foreach(k "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight"
          "text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight" "unet.add_embedding.linear_2.lora_A.weight")
  string(FIND "${head}" "\"${k}\"" at)
  if(at LESS 0)
    message(FATAL_ERROR "to-lora: no key ${k} in ${WORK}/diffusers.safetensors")
  endif()
endforeach()
# SDXL shifts on an SD 1.x model: refused by name
run(2 shifts to-lora ${WORK}/run --model ${SRC}/tests/fixtures/tiny-sd/diffusers --svd-cache none --force
    -o ${WORK}/wrong.safetensors)
expect("${err}" "text_encoder_2")

# generate with the folder (every part routed), eval and attention-leakage with it
run(0 generate --model ${M} --prompt "a photo of sks dog" --width 16 --height 16 --steps 2 --seed 3
    --svd-cache none --threads 1 -o ${WORK}/base.png)
run(0 generate --model ${M} --prompt "a photo of sks dog" --width 16 --height 16 --steps 2 --seed 3
    --svd-cache none --threads 1 --shifts ${WORK}/run -o ${WORK}/shifted.png)
file(READ ${WORK}/base.png a HEX)
file(READ ${WORK}/shifted.png b HEX)
if(a STREQUAL b)
  message(FATAL_ERROR "the shifts did not change the image")
endif()
# the exported LoRAs load back: kohya's lora_te1_ / lora_te2_ and diffusers' text_encoder_2. keys
foreach(l kohya diffusers)
  run(0 generate --model ${M} --prompt "a photo of sks dog" --width 16 --height 16 --steps 2 --seed 3
      --svd-cache none --threads 1 --lora ${WORK}/${l}.safetensors -o ${WORK}/lora-${l}.png)
  file(READ ${WORK}/lora-${l}.png c HEX)
  if(a STREQUAL c)
    message(FATAL_ERROR "the ${l} LoRA did not change the image")
  endif()
endforeach()
set(ev eval --model ${M} --images ${IMAGES} --prompt "a photo of sks dog" --resolution 16 --noise-draws 2
    --num-timesteps 3 --json --svd-cache none --threads 1)
run(0 ${ev})
set(base "${out}")
run(0 ${ev} --shifts ${WORK}/run:0)
if(NOT out STREQUAL base)
  message(FATAL_ERROR "shifts at scale 0 changed the loss:\n${base}${out}")
endif()
run(0 ${ev} --shifts ${WORK}/run)
expect("${out}" "^\\{\"loss\": [0-9.]+")
if(out STREQUAL base)
  message(FATAL_ERROR "the shifts left the loss unchanged")
endif()
run(0 attention-leakage --model ${M} --prompt "a photo of sks dog on the left and a cat on the right" --token-a "sks dog"
    --token-b "cat" --seeds 1 --steps 2 --width 16 --height 16 --svd-cache none --shifts ${WORK}/run --json)
expect("${out}" "\"leakage_mean\": 0\\.[0-9]+")
run(0 attention-leakage --model ${M} --prompt "a photo of sks dog on the left and a cat on the right" --token-a "sks dog"
    --token-b "cat" --images-a ${IMAGES} --images-b ${IMAGES} --timesteps 100,700 --resolution 16 --json)
expect("${out}" "\"leakage_mean\": 0\\.[0-9]+")

# edit (CoSINE): shifts trained on the image, DDIM inversion with the added conditioning, one edit
run(0 edit --model ${M} --image ${IMAGES}/dog1.png --prompt "a photo of a dog" --edit "a photo of a cat"
    --resolution 16 --steps 2 --sample-steps 3 --train-text-encoder --svd-cache none --threads 1 -o ${WORK}/edit)
files_exist(${WORK}/edit/spectral_shifts_te2.safetensors)
file(GLOB pngs ${WORK}/edit/*.png)
list(LENGTH pngs n)
if(n LESS 2)
  message(FATAL_ERROR "edit wrote ${n} images: ${pngs}")
endif()
