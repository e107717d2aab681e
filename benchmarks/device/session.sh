#!/usr/bin/env bash
# One call on a lent GPU machine (prepared by benchmarks/device/prepare.sh): the CUDA test, the training
# benchmark, then the face and cat models trained side by side until LIMIT seconds are nearly spent. Everything
# that comes back is packed into 15 MiB pieces under $OUT: unpack with `cat res.tar.* | tar xf -`.
#   OUT=... LIMIT=520 bash benchmarks/device/session.sh
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device-out}; RES=/tmp/res; LIMIT=${LIMIT:-520}
mkdir -p "$OUT" && rm -rf $RES && mkdir -p $RES
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a $RES/session.log; }
pip install -q --no-index --no-deps --target .gl/site .gl/whl/*.whl >> $RES/pip.log 2>&1
export PYTHONPATH=$PWD/.gl/site:$PWD COAT_HF_CACHE=$PWD/.gl/cache
mkdir -p .gl/cache/lpips
python -c "
from safetensors.torch import load_file, save_file
save_file({k: v.float() for k, v in load_file('.gl/lpips/alexnet.fp16.safetensors').items()}, '.gl/cache/lpips/alexnet.safetensors')"
nvidia-smi --query-gpu=name,memory.total --format=csv >> $RES/session.log
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_training_cuda.py > $RES/cuda_test.log 2>&1
log "cuda test: $(tail -1 $RES/cuda_test.log)"
for spec in "32 --transfer_weight 0 --model_overrides {}" "128 --channels_last true"; do
  set -- $spec; batch=$1; shift
  timeout 120 python benchmarks/benchmark_training.py --config training/configs/coat-celeba-128-gpu.yaml \
    --data_dir .gl/faces --holdout_last 3800 --out $RES/benchmark.json --steps 10 --warmup 3 --batch_size $batch "$@" \
    >> $RES/benchmark.log 2>&1
  log "benchmark batch $batch $*: $(grep '^| [0-9]' $RES/benchmark.log | tail -1)"
done
NOW=$(( $(date +%s) - START ))
MINUTES=$(python -c "print(round(($LIMIT - $NOW - 150) / 60, 2))")  # model building, caching and export: < 150 s
log "training for $MINUTES minutes"
for job in "face training/configs/coat-celeba-128-gpu.yaml .gl/faces" "cat training/configs/coat-afhq-cat-128-gpu.yaml .gl/cats"; do
  set -- $job
  timeout $(( LIMIT - NOW - 20 )) python training/train.py --config $2 --data_dir $3 --output_dir $RES/$1 \
    --max_minutes $MINUTES --channels_last true ${INIT:+--init_from $INIT} > $RES/$1.log 2>&1 &
done
wait
log "trainings done: $(grep -h 'spent at step\|exported' $RES/*.log | tr '\n' ' ')"
cd $RES && tar cf - --exclude=checkpoints . | split -b 15m -d - "$OUT/res.tar."
cp $RES/session.log "$OUT/"
