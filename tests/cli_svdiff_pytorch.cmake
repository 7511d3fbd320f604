# ctest script (CMakeLists.txt, cli.svdiff_pytorch): shift files that svdiff-pytorch loads. Its loader
# sets every key of a file as a parameter of its models, so a file is loadable when each key is one of
# their delta parameters with exactly that shape. tests/fixtures/svdiff_pytorch/{unet,text_encoder}.txt
# list those parameters for the tiny model (tests/reference/gen_svdiff_pytorch_table.py); the written
# safetensors headers are read here and compared with them key for key, shape for shape.
#   cmake -DSVDIFF=<svdiff> -DSRC=<source dir> -DWORK=<scratch dir> -P this
cmake_minimum_required(VERSION 3.19)   # string(JSON)
foreach(v SVDIFF SRC WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "define ${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(tiny ${SRC}/tests/fixtures/tiny-sd/diffusers)
set(table ${SRC}/tests/fixtures/svdiff_pytorch)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

# st_shapes(<file> <out var>): "key=d0xd1..." for every tensor of a safetensors file, sorted.
function(st_shapes file outvar)
  file(READ ${file} head LIMIT 8 HEX)
  set(n 0)   # the header length: a little-endian u64
  foreach(i RANGE 7 0 -1)
    math(EXPR pos "${i} * 2")
    string(SUBSTRING ${head} ${pos} 2 byte)
    math(EXPR n "${n} * 256 + 0x${byte}")
  endforeach()
  file(READ ${file} json OFFSET 8 LIMIT ${n})
  string(JSON count LENGTH "${json}")
  math(EXPR last "${count} - 1")
  set(list "")
  foreach(i RANGE ${last})
    string(JSON key MEMBER "${json}" ${i})
    if(key STREQUAL "__metadata__")
      continue()
    endif()
    string(JSON nd LENGTH "${json}" ${key} shape)
    math(EXPR nl "${nd} - 1")
    set(dims "")
    foreach(d RANGE ${nl})
      string(JSON v GET "${json}" ${key} shape ${d})
      list(APPEND dims ${v})
    endforeach()
    list(JOIN dims "x" dims)
    list(APPEND list "${key}=${dims}")
  endforeach()
  list(SORT list)
  set(${outvar} "${list}" PARENT_SCOPE)
endfunction()

# table(<file> <out var>): the same list from a fixture table ("name dim" lines).
function(table file outvar)
  file(STRINGS ${file} lines REGEX "^[^#]")
  set(list "")
  foreach(l ${lines})
    string(REPLACE " " "=" l "${l}")
    list(APPEND list "${l}")
  endforeach()
  list(SORT list)
  set(${outvar} "${list}" PARENT_SCOPE)
endfunction()

# matches(<file> <table> EXACT|SUBSET <out var>): TRUE when every key of the file is a parameter of
# the table with its shape (what the loader needs: parameters a file lacks stay zero), and with EXACT
# when the file also holds all of them; else FALSE, and the first difference in match_why.
function(matches file tab mode outvar)
  st_shapes(${file} got)
  table(${tab} want)
  set(why "")
  foreach(e ${want})
    string(REGEX REPLACE "=.*" "" k "${e}")
    if(mode STREQUAL "SUBSET" AND NOT "${got}" MATCHES "(^|;)${k}=")
      continue()
    endif()
    if(NOT e IN_LIST got)
      string(REGEX MATCH "${k}=[^;]*" g "${got}")
      set(why "${file}: want ${e}, has '${g}'")
      break()
    endif()
  endforeach()
  if(NOT why)
    foreach(e ${got})
      if(NOT e IN_LIST want)
        set(why "${file}: ${e} is no svdiff-pytorch parameter")
        break()
      endif()
    endforeach()
  endif()
  if(why)
    set(${outvar} FALSE PARENT_SCOPE)
  else()
    set(${outvar} TRUE PARENT_SCOPE)
  endif()
  set(match_why "${why}" PARENT_SCOPE)
endfunction()

# loadable(<folder> <mode of the text-encoder file>): the UNet file holds every parameter
function(loadable dir temode)
  matches(${dir}/spectral_shifts.safetensors ${table}/unet.txt EXACT ok)
  if(NOT ok)
    message(FATAL_ERROR "${match_why}")
  endif()
  matches(${dir}/spectral_shifts_te.safetensors ${table}/text_encoder.txt ${temode} ok)
  if(NOT ok)
    message(FATAL_ERROR "${match_why}")
  endif()
endfunction()

# 1. the check itself: svdiff's default per-element [C] norm shifts do not load into svdiff-pytorch
matches(${SRC}/tests/fixtures/shifts/zero/spectral_shifts.safetensors ${table}/unet.txt SUBSET ok)
if(ok OR NOT match_why MATCHES "norm.*delta=1, has '.*norm.*delta=[0-9]+'")
  message(FATAL_ERROR "the per-element fixture should not match the svdiff-pytorch table: '${match_why}'")
endif()

# 2. route 1: train --norm-shift scalar writes a loadable folder directly (the text encoder's
#    norms are not trained: the loader keeps those deltas at zero)
run(0 train --model ${tiny} --instance-dir ${SRC}/tests/fixtures/train/images --instance-prompt "a photo of sks dog"
    --resolution 16 --steps 2 --threads 1 --quiet --train-text-encoder --norm-shift scalar -o ${WORK}/trained)
loadable(${WORK}/trained SUBSET)

# 3. route 2: shifts convert --format svdiff-pytorch; an exact fit (zero shifts) needs no --force
run(0 shifts convert ${SRC}/tests/fixtures/shifts/zero --dtype fp16 --format svdiff-pytorch --model ${tiny}
    -o ${WORK}/converted)
if(NOT run_out MATCHES "overall: 0 of the norm shifts lost over 33 norms")
  message(FATAL_ERROR "no fit report:\n${run_out}")
endif()
loadable(${WORK}/converted EXACT)

# 4. a lossy fit is reported per norm and refused without --force, writing nothing
run(2 shifts convert ${SRC}/tests/fixtures/toolbox/a.safetensors --dtype fp32 --format svdiff-pytorch
    --model ${tiny} -o ${WORK}/a.safetensors)
if(NOT run_out MATCHES "  down_blocks.0.resnets.0.norm1 +lost [0-9.e-]+ \\(largest gain error"
   OR NOT run_err MATCHES "the fit loses 0\\.[0-9]+ of the norm shifts.*--force.*--norm-shift scalar")
  message(FATAL_ERROR "expected a per-norm report and a refusal:\n${run_out}${run_err}")
endif()
if(EXISTS ${WORK}/a.safetensors)
  message(FATAL_ERROR "a refused conversion wrote ${WORK}/a.safetensors")
endif()
run(0 shifts convert ${SRC}/tests/fixtures/toolbox/a.safetensors --dtype fp32 --format svdiff-pytorch
    --model ${tiny} --force -o ${WORK}/a.safetensors)
matches(${WORK}/a.safetensors ${table}/unet.txt EXACT ok)
if(NOT ok)
  message(FATAL_ERROR "${match_why}")
endif()

# 5. without --model the module shapes cannot be checked
run(2 shifts convert ${SRC}/tests/fixtures/shifts/zero --dtype fp16 --format svdiff-pytorch -o ${WORK}/nomodel)
if(NOT run_err MATCHES "add --model M")
  message(FATAL_ERROR "expected 'add --model M':\n${run_err}")
endif()
