# ctest script (CMakeLists.txt, cli.malformed): broken copies of the tiny model and its
# tokenizer, each run through `svdiff info` / `svdiff tokenize`; every case must exit 1 with a
# single "svdiff <verb>: ..." line on stderr that names the culprit.
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -P this
cmake_minimum_required(VERSION 3.18)
foreach(v SVDIFF SRC WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
set(model ${SRC}/tests/fixtures/tiny-sd/diffusers)

# fresh(<name>): a copy of the tiny model in WORK/<name>
function(fresh name)
  file(REMOVE_RECURSE ${WORK}/${name})
  file(COPY ${model}/ DESTINATION ${WORK}/${name})
endfunction()

# expect_fail(<substring> <args...>): exit code 1, one stderr line containing substring
function(expect_fail want)
  execute_process(COMMAND ${SVDIFF} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(STRIP "${err}" err)
  string(FIND "${err}" "\n" nl)
  if(NOT rc EQUAL 1 OR NOT nl EQUAL -1)
    message(FATAL_ERROR "svdiff ${ARGN}: want exit 1 and one error line, got ${rc}:\n${err}")
  endif()
  string(FIND "${err}" "${want}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "svdiff ${ARGN}: message does not mention '${want}':\n${err}")
  endif()
endfunction()

# missing config key
fresh(nokey)
file(READ ${WORK}/nokey/unet/config.json cfg)
string(REGEX REPLACE "\"block_out_channels\"[^]]*\\]," "" cfg "${cfg}")
file(WRITE ${WORK}/nokey/unet/config.json "${cfg}")
expect_fail("block_out_channels" info --model ${WORK}/nokey)

# config that is not JSON
fresh(badjson)
file(WRITE ${WORK}/badjson/vae/config.json "{ not json")
expect_fail("config.json" info --model ${WORK}/badjson)

# missing model_index.json
fresh(noindex)
file(REMOVE ${WORK}/noindex/model_index.json)
expect_fail("model_index.json" info --model ${WORK}/noindex)

# a missing tensor: a shard of the text encoder gone
fresh(noshard)
file(REMOVE ${WORK}/noshard/text_encoder/model-00002-of-00002.safetensors)
expect_fail("model-00002-of-00002.safetensors" info --model ${WORK}/noshard)

# wrong shape: the UNet config claims wider blocks than the weights have
fresh(shape)
file(READ ${WORK}/shape/unet/config.json cfg)
string(REGEX REPLACE "\"cross_attention_dim\": *[0-9]+" "\"cross_attention_dim\": 24" cfg "${cfg}")
file(WRITE ${WORK}/shape/unet/config.json "${cfg}")
expect_fail("attn2.to_k.weight" info --model ${WORK}/shape)

# tokenizer: vocab without merges, vocab that is not JSON
fresh(nomerges)
file(REMOVE ${WORK}/nomerges/tokenizer/merges.txt)
expect_fail("merges.txt" tokenize --model ${WORK}/nomerges "a cat")
fresh(vocabjson)
file(WRITE ${WORK}/vocabjson/tokenizer/vocab.json "[1, 2")
expect_fail("vocab.json" tokenize --model ${WORK}/vocabjson "a cat")

# a truncated weights file
fresh(trunc)
file(READ ${WORK}/trunc/unet/diffusion_pytorch_model.safetensors head LIMIT 200 HEX)
file(WRITE ${WORK}/trunc/unet/diffusion_pytorch_model.safetensors "")
expect_fail("diffusion_pytorch_model.safetensors" info --model ${WORK}/trunc)
file(REMOVE_RECURSE ${WORK})
