#!/usr/bin/env bash
# The transfer-recipe ablation at 64 px on a CPU (issue 15): each arm trains for the same wall-clock budget,
# two arms at a time with one thread each, then `python -m coat_hf.evaluation` scores every arm on
# celeba/val with the full n sweep, under each alignment rule at inference. Results: runs/ablation/*/results.md.
#   bash benchmarks/ablation_64.sh [MINUTES]            (default 28 minutes per arm)
#   bash benchmarks/ablation_64.sh MINUTES hybrids      (item 4: the chosen recipe, + style mixing, + the
#                                                        adversarial term on transfers and reconstructions; three
#                                                        arms side by side, scored with nearest matches)
#   bash benchmarks/ablation_64.sh MINUTES color        (L_color: the recipe with style mixing, with and without
#                                                        --color_weight 20, side by side, nearest)
#   bash benchmarks/ablation_64.sh MINUTES color-weight (L_color's weight, 20 against 60, side by side, nearest)
#   bash benchmarks/ablation_64.sh MINUTES transfer-weight (the transfer term's weight, 1 against 0.5, L_color on)
# Every arm starts from recipe-64.yaml with the values it had when the first arms were measured (no style mixing,
# no L_color, γ = 1) and sets what it tests, so each set reproduces its arms as measured whatever the recipe adopts.
#   bash benchmarks/ablation_64.sh MINUTES vgg          (item 5: the recipe with style mixing, matched on E's own
#                                                        maps and on frozen VGG16 maps, side by side, nearest)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-28}
SET=${2:-recipe}
DATA=${COAT_DATA_DIR:-../shared/data}
OUT=runs/ablation$([ "$SET" = recipe ] || echo "-$SET")
mkdir -p $OUT
train() {  # name, then overrides of training/configs/recipe-64.yaml
  local name=$1; shift
  python training/train.py --config training/configs/recipe-64.yaml --data_dir "$DATA/celeba/train" \
    --output_dir "$OUT/$name" --num_workers 0 --max_minutes "$MINUTES" --resume latest \
    --style_mixing_prob 0 --color_weight 0 --transfer_weight 1 "$@" > "$OUT/$name.log" 2>&1
}
evaluate() {  # name, alignment rule
  python -m coat_hf.evaluation --model "$OUT/$1/final" --data "$DATA/celeba/val" --out "$OUT/eval/$1-$2" \
    --alignment "$2" --num-pairs 30 --num-reconstruction 20 --threads 1 > "$OUT/eval-$1-$2.log" 2>&1
}
score() {  # the arms named, side by side, with nearest matches
  for arm in "$@"; do evaluate "$arm" nearest & done
  wait
}
if [ "$SET" = hybrids ]; then
  train recipe &
  train recipe-mixing --style_mixing_prob 0.9 &
  train recipe-adversarial --adversarial true --disc_max_channels 64 &  # a discriminator sized to the tiny generator
  wait
  score recipe recipe-mixing recipe-adversarial
  exit
fi
if [ "$SET" = color ]; then  # L_color (--color_weight) on the recipe with style mixing, scored with nearest matches
  train recipe-mixing --style_mixing_prob 0.9 &
  train recipe-mixing-color --style_mixing_prob 0.9 --color_weight 20 &
  wait
  score recipe-mixing recipe-mixing-color
  exit
fi
if [ "$SET" = color-weight ]; then  # L_color's weight: the adopted 20 against 60, side by side, nearest
  train recipe-mixing-color --style_mixing_prob 0.9 --color_weight 20 &
  train recipe-mixing-color60 --style_mixing_prob 0.9 --color_weight 60 &
  wait
  score recipe-mixing-color recipe-mixing-color60
  exit
fi
if [ "$SET" = transfer-weight ]; then  # the transfer term's weight γ: 1 against 0.5 (adopted), with L_color, nearest
  train recipe-mixing-color --style_mixing_prob 0.9 --color_weight 20 &
  train recipe-mixing-color-transfer05 --style_mixing_prob 0.9 --color_weight 20 --transfer_weight 0.5 &
  wait
  score recipe-mixing-color recipe-mixing-color-transfer05
  exit
fi
if [ "$SET" = vgg ]; then
  train recipe-mixing --style_mixing_prob 0.9 &
  train recipe-mixing-vgg --style_mixing_prob 0.9 \
    --model_overrides "{alignment: nearest, modulation_pyramid: true, match_features: vgg16}" &
  wait
  score recipe-mixing recipe-mixing-vgg
  exit
fi
# The paper's objective; + the transfer term; + the pyramid E_mod; + soft matches in training (all else equal).
train paper --transfer_weight 0 --model_overrides "{alignment: mutual, modulation_pyramid: false}" \
  --train_alignment mutual &
train transfer-pyramid-soft --model_overrides "{alignment: soft, modulation_pyramid: true}" --train_alignment soft &
wait
train transfer --model_overrides "{alignment: mutual, modulation_pyramid: false}" --train_alignment mutual &
train transfer-pyramid --model_overrides "{alignment: mutual, modulation_pyramid: true}" --train_alignment mutual &
wait
for arm in paper transfer transfer-pyramid transfer-pyramid-soft; do
  for rule in mutual nearest soft; do evaluate $arm $rule; done
done
