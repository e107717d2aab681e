#!/usr/bin/env bash
# One call on a lent GPU machine (prepared by benchmarks/device/prepare.sh): the CUDA tests, the training step
# benchmarked, then the face and cat models (the whole objective compiled, as their GPU configs say; eager again if
# compiling fails) trained side by side until LIMIT seconds are nearly spent. Everything that comes back is packed
# into 15 MiB pieces under $OUT: unpack with `cat res.tar.* | tar xf -`.
#   OUT=... LIMIT=540 BATCH=64 bash benchmarks/device/session.sh
# FACE_INIT / CAT_INIT (model folders, e.g. coat_hf/pretrained/coat-celeba-128 when its weights travel) continue
# from those weights (--init_from) with the fine-tunes' objective (training/configs/*-gpu-continue.yaml; FACE_CONFIG /
# CAT_CONFIG name another config); a missing .gl/faces, .gl/cats or .gl/horses skips that model (the horse model
# starts from the bundled cat model's weights, which must then travel).
# BENCH: "engine" (default: the CUDA tests unless CUDA_TESTS=0, the fused search's launch candidates timed alone
# unless SEARCH=0 (benchmarks/benchmark_search.py, up to SEARCH_S=150 s), then the step at batch $BATCH as
# ENGINE_VARIANTS lists: "eager" or scope:mode pairs, each optionally followed by /key=value training flags, e.g.
# "objective:default/batch_branches=false", or "none"; by default eager, then the objective compiled; each up to
# ENGINE_S=330 s and within LIMIT; then the fastest at batch 128 when time allows) or "none" (straight to training,
# e.g. a second call on the warm machine); every benchmark row also profiles 3 steps. Training runs when at least a
# minute is left (TRAIN=0: never), for the models MODELS lists (default "face cat horse"); FACE_ARGS / CAT_ARGS /
# HORSE_ARGS add training arguments (the last of a repeated one wins, e.g. --max_minutes). Compiled runs load and
# save their compile cache (--compile_cache): res/compile/NAME-bBATCH.bin for training, bench-LABEL-bBATCH.bin for
# a benchmark row; carried back as .gl/compile/, they spare the next fresh machine most of the compile.
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device-out}; RES=/tmp/res; LIMIT=${LIMIT:-540}; BATCH=${BATCH:-64}
FACE_CONFIG=${FACE_CONFIG:-training/configs/coat-celeba-128-gpu${FACE_INIT:+-continue}.yaml}  # the benchmark's too
CAT_CONFIG=${CAT_CONFIG:-training/configs/coat-afhq-cat-128-gpu${CAT_INIT:+-continue}.yaml}
mkdir -p "$OUT" && rm -rf $RES && mkdir -p $RES/compile
cp .gl/compile/*.bin $RES/compile/ 2>/dev/null  # compile caches from an earlier call: they come back updated
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[$(elapsed)s] $*" | tee -a $RES/session.log; }
pip install -q --no-index --no-deps --target .gl/site .gl/whl/*.whl >> $RES/pip.log 2>&1
export PYTHONPATH=$PWD/.gl/site:$PWD COAT_HF_CACHE=$PWD/.gl/cache
mkdir -p .gl/cache/lpips
python -c "
from safetensors.torch import load_file, save_file
save_file({k: v.float() for k, v in load_file('.gl/lpips/alexnet.fp16.safetensors').items()}, '.gl/cache/lpips/alexnet.safetensors')"
nvidia-smi --query-gpu=name,memory.total --format=csv >> $RES/session.log
BENCH=${BENCH:-engine}
if [ "$BENCH" != none ] && [ "${CUDA_TESTS:-1}" = 1 ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_training_cuda.py tests/test_fused_search.py \
    tests/test_correspondence.py::test_cuda_search_equals_the_cpu_search > $RES/cuda_test.log 2>&1
  log "cuda test: $(tail -1 $RES/cuda_test.log)"
fi
if [ "$BENCH" = engine ] && [ "${SEARCH:-1}" = 1 ]; then  # the fused search's launch candidates, each scale timed
  timeout ${SEARCH_S:-150} python benchmarks/benchmark_search.py --out $RES/search.json > $RES/search.log 2>&1
  log "search kernel: $(grep -c ' ms ' $RES/search.log) candidate timings in search.log"
fi
if [ "$BENCH" = engine ] && [ -d .gl/faces ]; then  # the benchmark reads the face photos
  bench() {  # label batch [training arguments]: one benchmark row, up to ENGINE_S seconds
    local label=$1 batch=$2 seconds=$(( LIMIT - $(elapsed) - 15 )); shift 2
    [ $seconds -gt ${ENGINE_S:-330} ] && seconds=${ENGINE_S:-330}
    [ $seconds -lt 60 ] && { log "$label, batch $batch: skipped, under a minute left"; return; }
    timeout $seconds python benchmarks/benchmark_training.py --config $FACE_CONFIG \
      --data_dir .gl/faces --holdout_last $HOLDOUT --out $RES/benchmark.json --steps 20 --warmup 3 \
      --batch_size $batch --channels_last true --profile $RES/profile-$label-b$batch.txt "$@" \
      >> $RES/benchmark-$label-b$batch.log 2>&1
    local row=$(grep '^| [0-9]' $RES/benchmark-$label-b$batch.log | tail -1)
    log "$label, batch $batch: ${row:-$(tail -1 $RES/benchmark-$label-b$batch.log)}"
  }
  HOLDOUT=$(( $(ls .gl/faces | wc -l) - 1000 ))
  for entry in ${ENGINE_VARIANTS:-eager objective:default}; do
    [ "$entry" = none ] && continue  # ENGINE_VARIANTS=none: no step rows, training measures the step itself
    variant=${entry%%/*} flags=()  # "/key=value" suffixes become training flags: eager/batch_branches=false
    [ "$entry" != "$variant" ] && for pair in $(tr / ' ' <<< "${entry#*/}"); do flags+=(--${pair%%=*} ${pair#*=}); done
    label=$(sed 's/[^A-Za-z0-9_.-]\+/-/g' <<< "$entry")
    if [ $variant = eager ]; then bench $label $BATCH --compile false "${flags[@]}"
    else bench $label $BATCH --compile true --compile_scope ${variant%%:*} --compile_mode ${variant##*:} "${flags[@]}" \
      --compile_cache $RES/compile/bench-$label-b$BATCH.bin; fi
  done
  best=$(python -c "
import json; rows = json.load(open('$RES/benchmark.json'))
best = max(rows, key=lambda r: r['images_per_s'])
print(f\"{best['compile_scope']}:{best['compile_mode']}\" if best['compile'] else 'eager')" 2>/dev/null)
  if [ -n "$best" ] && [ $BATCH != 128 ] && [ $(( LIMIT - $(elapsed) )) -gt ${ENGINE_S:-330} ]; then  # the large-batch recipe's step
    if [ "$best" = eager ]; then bench eager 128 --compile false
    else bench ${best/:/-} 128 --compile true --compile_scope ${best%%:*} --compile_mode ${best##*:} \
      --compile_cache $RES/compile/bench-${best/:/-}-b128.bin; fi
  fi
fi

minutes_left() { python -c "print(round(($LIMIT - $(elapsed) - 120) / 60, 2))"; }  # build, cache, export: < 120 s
train() {  # name config data output_dir [extra arguments]: compiled as the GPU config says, eager if that fails
  local name=$1 config=$2 data=$3 dir=$4 rc cache=(); shift 4
  [[ "$*" != *"--compile false"* ]] && cache=(--compile_cache $RES/compile/$name-b$BATCH.bin)
  timeout $(( LIMIT - $(elapsed) - 20 )) python training/train.py --config $config --data_dir $data --output_dir $dir \
    --max_minutes $(minutes_left) --batch_size $BATCH --channels_last true "${cache[@]}" "$@" > $dir.log 2>&1; rc=$?
  if [ $rc != 0 ] && [ $rc != 124 ] && [[ "$*" != *"--compile false"* ]]; then
    log "$name: compiled run failed: $(grep -m1 Error $dir.log)"
    python -c "import sys; sys.exit($(minutes_left) < 1)" && train $name $config $data $dir-eager "$@" --compile false
  fi
}
if [ "${TRAIN:-1}" = 1 ] && python -c "import sys; sys.exit($(minutes_left) < 1)"; then
  log "training for $(minutes_left) minutes at batch $BATCH"
  MODELS=" ${MODELS:-face cat horse} "
  [ -d .gl/faces ] && [[ $MODELS == *" face "* ]] && train face $FACE_CONFIG .gl/faces $RES/face \
    ${FACE_INIT:+--init_from $FACE_INIT} ${FACE_ARGS:-} &
  [ -d .gl/cats ] && [[ $MODELS == *" cat "* ]] && train cat $CAT_CONFIG .gl/cats $RES/cat \
    ${CAT_INIT:+--init_from $CAT_INIT} ${CAT_ARGS:-} &
  [ -d .gl/horses ] && [[ $MODELS == *" horse "* ]] && train horse training/configs/coat-horses-128-gpu.yaml .gl/horses $RES/horse \
    ${HORSE_ARGS:-} &
  wait
  log "trainings done: $(grep -h 'spent at step\|exported' $RES/*.log | tr '\n' ' ')"
else
  log "no time left to train"
fi
for cache in $(find $RES/compile -name '*.bin' -size +30M); do  # too large to come back (8 files of 16 MiB)
  log "$(basename $cache): $(du -m $cache | cut -f1) MB, not brought back"; rm $cache
done
cd $RES && tar cf - --exclude=checkpoints . | split -b 15m -d - "$OUT/res.tar."
cp $RES/session.log "$OUT/"
