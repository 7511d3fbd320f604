#!/usr/bin/env bash
# Data parallelism over MPI (issue 21), on the tiny model: tests/cli_mpi.sh SVDIFF WORK CASE
#   equal    2 ranks x (batch 2, accumulation 1) == 1 process x (batch 2, accumulation 2): the
#            shift files, the sample grids (rank 0's) and the class images (generated over the
#            ranks) byte for byte, loss.csv but for its seconds column; also 2 ranks x accumulation 2 == 1 process x 4 (LoRA),
#            and pretrain (full weights with an EMA) with 2 ranks == accumulation 2
#   resume   a 2-rank run killed after its step-2 checkpoint resumes in 1 process (accumulation
#            2), a 1-process run resumes with 2 ranks: both end as the uninterrupted run
#   generate mpirun -np 2 / -np 3 generate --num-images 5 (grid, --save-latents) and --prompts FILE
#            write the files of one process
#   dead     kill -9 of rank 1, then (resumed) of rank 0, mid-run: each time mpirun ends the job
#            within seconds with an error naming the rank, the other rank is gone, and the last
#            checkpoint resumes
#   baddata  rank 1 cannot read its data: every rank stops, rank 1's message names the file
#   refuse   a command that does not split its work (info) refuses mpirun -np 2, once; a training
#            output folder that another run holds stops both ranks with rank 0's lock message
# Exit 77 (ctest: skipped) with a message where MPI is not built in or mpirun is missing.
set -u
SVDIFF=$1 WORK=$2 CASE=$3
SRC=${SVDIFF_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
if ! "$SVDIFF" --version | grep -q '^MPI: Open MPI\|^MPI: MPICH\|^MPI: .*MPI v'; then
  echo "SKIP: svdiff is built without MPI (cmake -DSVDIFF_MPI=ON with libopenmpi-dev installed)"; exit 77
fi
if ! command -v mpirun >/dev/null; then echo "SKIP: mpirun is not installed (openmpi-bin)"; exit 77; fi
MPIRUN=(mpirun --oversubscribe -np)
[ "$(id -u)" = 0 ] && MPIRUN=(mpirun --oversubscribe --allow-run-as-root -np)
export OMP_NUM_THREADS=1
# an ASan build: Open MPI keeps allocations past MPI_Finalize (LeakSanitizer would fail every run)
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
MODEL=$SRC/tests/fixtures/tiny-sd/diffusers
IMAGES=$SRC/tests/fixtures/train/images
TRAIN=(train --model "$MODEL" --instance-prompt "a photo of sks dog" --resolution 16 --flip --svd-cache none
       --threads 1 --quiet)
same() { cmp "$1" "$2" || fail "$1 and $2 differ"; }
# loss.csv without its last column (seconds)
same_csv() { diff <(cut -d, -f1-6 "$1") <(cut -d, -f1-6 "$2") || fail "$1 and $2 differ"; }

case "$CASE" in
equal)
  args=("${TRAIN[@]}" --instance-dir "$IMAGES" --class-prompt "a dog" --num-class-images 3 --class-steps 2
        --batch-size 2 --steps 3 --train-text-encoder --sample-every 2 --sample-prompt "a dog" --sample-steps 2)
  "$SVDIFF" "${args[@]}" --class-dir cls1 --grad-accum 2 -o one > one.log 2>&1 || { cat one.log; fail "1 process"; }
  "${MPIRUN[@]}" 2 "$SVDIFF" "${args[@]}" --class-dir cls2 -o two > two.log 2>&1 || { cat two.log; fail "2 ranks"; }
  grep -q "MPI ranks      2 (4 samples per step)" two.log || { cat two.log; fail "no MPI summary line"; }
  for f in spectral_shifts.safetensors spectral_shifts_te.safetensors; do same one/$f two/$f; done
  same_csv one/loss.csv two/loss.csv
  [ "$(ls cls1 | wc -l)" = 3 ] || fail "class images: $(ls cls1)"
  for f in cls1/*; do same "$f" "cls2/${f#cls1/}"; done
  for f in samples/step-000002.png samples/step-000003.png; do same one/$f two/$f; done   # rank 0 samples
  [ "$(ls two)" = "$(printf 'loss.csv\nsamples\nspectral_shifts.safetensors\nspectral_shifts_te.safetensors')" ] ||
    fail "2-rank output folder holds: $(ls two)"
  # LoRA, 2 accumulation steps per rank against 4 in one process
  largs=("${TRAIN[@]}" --instance-dir "$IMAGES" --mode lora --steps 2)
  "$SVDIFF" "${largs[@]}" --grad-accum 4 -o lora1 > lora1.log 2>&1 || { cat lora1.log; fail "LoRA, 1 process"; }
  "${MPIRUN[@]}" 2 "$SVDIFF" "${largs[@]}" --grad-accum 2 -o lora2 > lora2.log 2>&1 || { cat lora2.log; fail "LoRA, 2 ranks"; }
  same lora1/pytorch_lora_weights.safetensors lora2/pytorch_lora_weights.safetensors
  # pretrain (every weight, an EMA, a captioned data set): 2 ranks == accumulation 2
  printf 'path\tcaption\n%s\tan emoji of a dog\n%s\tan emoji of a dog face\n' "$IMAGES/dog1.png" "$IMAGES/dog2.png" > c.tsv
  pargs=(pretrain --model "$MODEL" --data c.tsv --resolution 16 --steps 3 --batch-size 2 --ema-decay 0.9 --threads 1 --quiet)
  "$SVDIFF" "${pargs[@]}" --grad-accum 2 -o pre1 > pre1.log 2>&1 || { cat pre1.log; fail "pretrain, 1 process"; }
  "${MPIRUN[@]}" 2 "$SVDIFF" "${pargs[@]}" -o pre2 > pre2.log 2>&1 || { cat pre2.log; fail "pretrain, 2 ranks"; }
  for f in unet/diffusion_pytorch_model.safetensors text_encoder/model.safetensors; do same pre1/$f pre2/$f; done
  same_csv pre1/loss.csv pre2/loss.csv
  ;;
resume)
  args=("${TRAIN[@]}" --instance-dir "$IMAGES" --steps 4 --checkpoint-every 1)
  "$SVDIFF" "${args[@]}" --grad-accum 2 -o ref > ref.log 2>&1 || { cat ref.log; fail "reference run"; }
  # 2 ranks -> 1 process
  SVDIFF_TEST_ABORT_AT_STEP=2 "${MPIRUN[@]}" 2 "$SVDIFF" "${args[@]}" -o a > a1.log 2>&1 && fail "the abort hook did not end the 2-rank run"
  [ -f a/checkpoint.safetensors ] && [ ! -f a/spectral_shifts.safetensors ] || fail "2-rank run: no checkpoint, or a result"
  "$SVDIFF" "${args[@]}" --grad-accum 2 --resume -o a > a2.log 2>&1 || { cat a2.log; fail "resume in 1 process"; }
  grep -q "resuming at step 2 of 4" a2.log || { cat a2.log; fail "did not resume at step 2"; }
  same ref/spectral_shifts.safetensors a/spectral_shifts.safetensors
  same_csv ref/loss.csv a/loss.csv
  # 1 process -> 2 ranks
  SVDIFF_TEST_ABORT_AT_STEP=2 "$SVDIFF" "${args[@]}" --grad-accum 2 -o b > b1.log 2>&1; [ $? = 137 ] || fail "abort hook"
  "${MPIRUN[@]}" 2 "$SVDIFF" "${args[@]}" --resume -o b > b2.log 2>&1 || { cat b2.log; fail "resume with 2 ranks"; }
  grep -q "resuming at step 2 of 4" b2.log || { cat b2.log; fail "did not resume at step 2"; }
  [ "$(grep -c 'resuming at step' b2.log)" = 1 ] || fail "rank 1 printed too: $(cat b2.log)"
  same ref/spectral_shifts.safetensors b/spectral_shifts.safetensors
  same_csv ref/loss.csv b/loss.csv
  # a different product of ranks and accumulation is another run: refused, naming the setting
  "${MPIRUN[@]}" 2 "$SVDIFF" "${args[@]}" --grad-accum 2 --resume -o b > b3.log 2>&1 && fail "resumed with 4 micro-batches"
  grep -q "other settings: .*grad_accum" b3.log || { cat b3.log; fail "no message naming grad_accum"; }
  ;;
generate)
  gen=(generate --model "$MODEL" --prompt "a cat" --steps 2 --width 16 --height 16 --svd-cache none --num-images 5
       --batch-size 2)
  for n in 1 2 3; do
    mkdir g$n
    if [ $n = 1 ]; then "$SVDIFF" "${gen[@]}" -o g1/x.png --save-latents g1/lat.safetensors > g1.log 2>&1
    else "${MPIRUN[@]}" $n "$SVDIFF" "${gen[@]}" -o g$n/x.png --save-latents g$n/lat.safetensors > g$n.log 2>&1; fi
    [ $? = 0 ] || { cat g$n.log; fail "generate with $n ranks"; }
  done
  [ "$(ls g1 | wc -l)" = 7 ] || fail "1 process wrote: $(ls g1)"
  for f in g1/*; do same "$f" "g2/${f#g1/}"; same "$f" "g3/${f#g1/}"; done
  [ "$(grep -c 'done in' g3.log)" = 1 ] || fail "'done in' not printed once: $(cat g3.log)"
  # a prompts file (several prompts, sizes, seeds, batches within a line): the same files too
  printf '%s\n' 'a cat' '{"prompt": "a dog", "seed": 7, "num_images": 3}' '{"prompt": "a tree", "width": 24}' \
    'a house' > p.txt
  pgen=(generate --model "$MODEL" --steps 2 --width 16 --height 16 --svd-cache none --batch-size 2 --prompts p.txt)
  "$SVDIFF" "${pgen[@]}" -o p1/ > p1.log 2>&1 || { cat p1.log; fail "prompts, 1 process"; }
  for n in 2 3; do
    "${MPIRUN[@]}" $n "$SVDIFF" "${pgen[@]}" -o p$n/ > p$n.log 2>&1 || { cat p$n.log; fail "prompts, $n ranks"; }
  done
  [ "$(ls p1 | wc -l)" = 6 ] || fail "prompts run wrote: $(ls p1)"
  for f in p1/*; do same "$f" "p2/${f#p1/}"; same "$f" "p3/${f#p1/}"; done
  [ "$(ls p1)" = "$(ls p3)" ] || fail "3 ranks wrote other files: $(ls p3)"
  ;;
dead)
  # many steps, a checkpoint after each. Run 1: kill -9 rank 1 once a checkpoint is there; run 2
  # (--resume): kill -9 rank 0, the writer, a few steps later; run 3 resumes and finishes.
  args=("${TRAIN[@]}" --instance-dir "$IMAGES" --steps 1000000 --checkpoint-every 1)
  kill_rank() {   # kill_rank RANK LOG MIN_STEP [--resume]
    local victim=$1 log=$2 min_step=$3 mpid pids=() p t0 secs rc
    "${MPIRUN[@]}" 2 "$SVDIFF" "${args[@]}" ${4:-} -o d > "$log" 2>&1 &
    mpid=$!
    for _ in $(seq 300); do
      [ -f d/checkpoint.safetensors ] && [ "$(tail -1 d/loss.csv 2>/dev/null | cut -d, -f1)" -gt "$min_step" ] 2>/dev/null && break
      sleep 0.1
    done
    [ -f d/checkpoint.safetensors ] || { kill $mpid; fail "no checkpoint after 30 s"; }
    for p in $(ps -o pid= --ppid $mpid); do
      case "$(tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep '^OMPI_COMM_WORLD_RANK=')" in
        *=0) pids[0]=$p ;; *=1) pids[1]=$p ;;
      esac
    done
    [ -n "${pids[0]:-}" ] && [ -n "${pids[1]:-}" ] || { kill $mpid; fail "ranks not found among the children of mpirun $mpid"; }
    t0=$(date +%s.%N)
    kill -9 "${pids[$victim]}"
    for _ in $(seq 200); do kill -0 $mpid 2>/dev/null || break; sleep 0.05; done
    if kill -0 $mpid 2>/dev/null; then kill $mpid; fail "mpirun still running 10 s after rank $victim died"; fi
    wait $mpid; rc=$?
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    echo "mpirun ended ${secs} s after kill -9 of rank $victim, exit status $rc"
    [ $rc != 0 ] || fail "mpirun exited 0"
    grep -q "process rank $victim .*exited on signal 9" "$log" || { cat "$log"; fail "no message naming the killed rank"; }
    local other=${pids[$((1 - victim))]}
    for _ in $(seq 100); do kill -0 "$other" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$other" 2>/dev/null; then
      ps -o pid,stat,etime,args -p "$other"; kill -9 "$other"; fail "the other rank (pid $other) still runs 5 s after mpirun ended"
    fi
  }
  kill_rank 1 d1.log 0
  step1=$(tail -1 d/loss.csv | cut -d, -f1)
  kill_rank 0 d2.log $((step1 + 3)) --resume
  grep -q "resuming at step" d2.log || { cat d2.log; fail "run 2 did not resume"; }
  # the last checkpoint is whole: it resumes (--force: fewer steps than the killed runs) and finishes
  step=$(tail -1 d/loss.csv | cut -d, -f1)
  [ "$step" -gt $((step1 + 3)) ] || fail "run 2 did not train past step $((step1 + 3)) (at $step)"
  "${MPIRUN[@]}" 2 "$SVDIFF" "${TRAIN[@]}" --instance-dir "$IMAGES" --steps $((step + 2)) --checkpoint-every 1 \
    --resume --force -o d > d3.log 2>&1 || { cat d3.log; fail "resume after the dead ranks"; }
  grep -q "resuming at step" d3.log && [ -s d/spectral_shifts.safetensors ] || { cat d3.log; fail "no resumed result"; }
  ;;
baddata)
  # a node without the data: rank 1 (MPMD: its own arguments) reads a folder holding a broken image
  mkdir data && cp "$IMAGES/dog1.png" data/a.png && printf 'not an image\n' > data/b.png
  "${MPIRUN[@]}" 1 "$SVDIFF" "${TRAIN[@]}" --instance-dir "$IMAGES" --steps 5 -o bad : \
    -np 1 "$SVDIFF" "${TRAIN[@]}" --instance-dir data --steps 5 -o bad > bad.log 2>&1 && fail "the job succeeded"
  grep -q "rank 1 of 2: .*data/b.png: cannot read image" bad.log || { cat bad.log; fail "no rank-1 message naming b.png"; }
  grep -q "rank 0 of 2 .*stopped: rank 1 of 2 failed\|stopped: rank 1 of 2 failed" bad.log ||
    { cat bad.log; fail "rank 0 did not say why it stopped"; }
  [ ! -e bad/spectral_shifts.safetensors ] || fail "a result was written"
  ;;
refuse)
  # a command that does not split its work would run N times over the same outputs: refused
  "${MPIRUN[@]}" 2 "$SVDIFF" info --model "$MODEL" > info.log 2>&1 && fail "svdiff info ran under mpirun -np 2"
  grep -q "svdiff info: does not run over MPI (2 ranks)" info.log || { cat info.log; fail "no message"; }
  [ "$(grep -c 'does not run over MPI' info.log)" = 1 ] || fail "printed by every rank"
  "$SVDIFF" info --model "$MODEL" > info1.log 2>&1 || { cat info1.log; fail "svdiff info without mpirun"; }
  # an output folder that another run holds: rank 0 cannot lock it, both ranks stop at once
  "$SVDIFF" "${TRAIN[@]}" --instance-dir "$IMAGES" --steps 1000000 -o busy > busy1.log 2>&1 &
  other=$!
  for _ in $(seq 300); do [ -f busy/.svdiff.lock ] && break; sleep 0.1; done
  "${MPIRUN[@]}" 2 "$SVDIFF" "${TRAIN[@]}" --instance-dir "$IMAGES" --steps 2 -o busy > busy2.log 2>&1; rc=$?
  kill $other; wait $other 2>/dev/null
  [ $rc != 0 ] || fail "2 ranks wrote into a folder another run holds"
  grep -q "rank 0 of 2: busy: another svdiff run (PID $other)" busy2.log || { cat busy2.log; fail "no lock message from rank 0"; }
  grep -q "stopped: rank 0 of 2 failed" busy2.log || { cat busy2.log; fail "rank 1 did not say why it stopped"; }
  ;;
*) fail "unknown case $CASE" ;;
esac
echo "PASS: $CASE"
