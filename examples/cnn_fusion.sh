#!/usr/bin/env bash
# CNN fusion offline (S2 carried to CNNs): two heads on one frozen backbone merged into one head.
#   backbone: vgg_small trained from scratch on digits 0-4 (40 images per class)
#   net A:    digits 0-4, the backbone frozen (feature-extractor), its own dense head
#   net B:    digits 5-9, the same frozen backbone, its own dense head
#   tle fuse A B: the top half of each head's hidden units (ranked by the sum of their largest 10 %
#   incoming |weights|) in one head of the same hidden size over the ten classes, beside each net
#   alone, bagging (both vote) and the full concatenation (every hidden unit of both), ONNX-checked;
#   once --align index (S2's protocol: class k of A and of B share output k, five outputs, each task on
#   its own labels) and once --align names (the union of the names: ten outputs, every image against all).
# usage: examples/cnn_fusion.sh [torch|keras]   (MODEL=vgg_small SIZE=32 EPOCHS=6 HEAD_EPOCHS=8 TRAIN=40)
set -euo pipefail
BACKEND=${1:-torch}
MODEL=${MODEL:-vgg_small}
SIZE=${SIZE:-32}
EPOCHS=${EPOCHS:-6}
HEAD_EPOCHS=${HEAD_EPOCHS:-8}
TRAIN=${TRAIN:-40}
EXP="cnn-fusion-$BACKEND-$(date +%Y%m%d-%H%M%S)"
# Small models on a shared CPU: one thread each avoids OpenMP/TF threads contending for the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1}
run() { echo "+ tle run $*" >&2; tle --quiet run --backend "$BACKEND" --model "$MODEL" --experiment "$EXP" \
          --image-size "$SIZE" --batch-size 16 --no-export "$@" --json; }
run_id() { python -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["run_id"])'; }

# The backbone's own head is linear, so net A's dense head starts new like net B's (a head for the same
# classes would come back with the weights) and the two heads' logits have comparable scales.
BACKBONE=$(run --dataset digits:0-4 --epochs "$EPOCHS" --lr 1e-3 --set "dataset.train=$TRAIN" --head linear \
             --run-name "backbone 0-4" | run_id)
heads() { run --dataset "$1" --strategy feature-extractor --weights "runs:/$BACKBONE" --epochs "$HEAD_EPOCHS" \
            --lr 3e-3 --run-name "$2" | run_id; }
A=$(heads digits:0-4 "net A (0-4)")
B=$(heads digits:5-9 "net B (5-9)")
for ALIGN in ${ALIGNS:-index names}; do
  echo "+ tle fuse $A $B --align $ALIGN" >&2
  tle fuse "$A" "$B" --align "$ALIGN" --keep 0.5 --ratio 0.1 --export --experiment "$EXP" \
    --run-name "CNN fusion ($ALIGN)"
done
