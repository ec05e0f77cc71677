#!/usr/bin/env bash
# S4, weight initialisation ("Deep Learning Illustrated"): 784 inputs U[0,1) -> Dense 256 sigmoid, bias 0, once
# per initialiser in every installed backend, histograms side by side and the saturated fraction
# (|a - 0.5| > 0.45) as mean ± sd over 3 seeds; then the same question on a real model: every block's
# activations at initialisation (vgg_small on digits offline; e.g. MODEL=vgg16 DATASET=folder:./blood at full size).
# Extra flags go to the dense study (e.g. --backend torch --backend keras). FORMAT=markdown prints README tables.
# usage: examples/s4_init_study.sh [tle init-study flags]
set -euo pipefail
FORMAT=${FORMAT:-table}
MODEL=${MODEL:-vgg_small}
tle init-study --experiment s4 --format "$FORMAT" --plot s4-init-study.png "$@"
tle init-study --experiment s4 --format "$FORMAT" --model "$MODEL" --dataset "${DATASET:-digits}" \
    --init he_normal --init glorot_uniform --init normal:1 --seed 0 --seed 1 --seed 2 --plot "s4-$MODEL-blocks.png"
