#!/usr/bin/env bash
# The seeds' procedures on small offline data, for one backend (default torch):
#   S0: scratch vs transfer:block1..4 vs transfer:all from a backbone pretrained on digits 0-4
#   S1: feature-extractor with the model's own classifier, last layer replaced (head: original)
#   S3: examples/specs/s3_offline.yaml (frozen base + head, then block5 at Adam 1e-5 for 2 epochs)
# usage: examples/seeds_offline.sh [torch|keras]
set -euo pipefail
B=${1:-torch}
EXP="seeds-$B-$(date +%Y%m%d-%H%M%S)"
run() { echo "+ tle run $*" >&2; tle --quiet run --backend "$B" --experiment "$EXP" "$@"; }
run_id() { python -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["run_id"])'; }
COMMON=(--model vgg_small --image-size 32 --epochs 6 --batch-size 20)

BASE=$(run "${COMMON[@]}" --dataset digits:0-4 --run-name pretrain --json | run_id)
for s in scratch transfer:block1 transfer:block2 transfer:block3 transfer:block4 transfer:all; do
  w="runs:/$BASE"; [ "$s" = scratch ] && w=none
  run "${COMMON[@]}" --dataset digits:5-9 --set dataset.train=40 --strategy "$s" --weights "$w" --run-name "S0 $s" >/dev/null
done
run "${COMMON[@]}" --dataset digits:5-9 --set dataset.train=40 --strategy feature-extractor --head original \
    --weights "runs:/$BASE" --run-name "S1 feature-extractor" >/dev/null
run -c examples/specs/s3_offline.yaml --weights "runs:/$BASE" --run-name "S3 finetune:block5" >/dev/null
tle compare --experiment "$EXP"
