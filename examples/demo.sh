#!/usr/bin/env bash
# Offline demo: pretrain a backbone on digits 0-4, transfer it to digits 5-9
# (few images per class) with every strategy, and compare the runs. Runs land in
# ./mlflow.db (MLflow's default store); browse them with `mlflow ui`.
set -euo pipefail
EXP="demo-$(date +%Y%m%d-%H%M%S)"
BACKENDS="${DEMO_BACKENDS:-numpy torch keras}"

run() { echo "+ tle run $*" >&2; tle --quiet run --experiment "$EXP" "$@"; }
run_id() { python -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["run_id"])'; }

transfer_table() {  # backend model size last-block epochs
  local backend=$1 model=$2 size=$3 last=$4 epochs=$5 base
  base=$(run --backend "$backend" --model "$model" --dataset digits:0-4 --image-size "$size" --epochs "$epochs" \
             --run-name "$backend-pretrain-digits0-4" --json | run_id)
  for strategy in scratch feature-extractor "finetune:$last" transfer:block2; do
    local weights="runs:/$base"
    [ "$strategy" = scratch ] && weights=none
    run --backend "$backend" --model "$model" --dataset digits:5-9 --image-size "$size" --set dataset.train=15 \
        --strategy "$strategy" --weights "$weights" --epochs "$epochs" --finetune-lr 1e-4 --finetune-epochs 3 \
        --run-name "$backend-$strategy" >/dev/null
  done
}

for backend in $BACKENDS; do
  case $backend in
    numpy) transfer_table numpy mlp 8 block2 10 ;;     # the third-party example backend (examples/numpy_backend)
    torch) transfer_table torch vgg_small 32 block5 6 ;;
    keras) transfer_table keras vgg_small 32 block5 6 ;;
  esac
done

tle compare --experiment "$EXP"
echo "runs are in $(pwd)/mlflow.db; browse them with: mlflow ui --backend-store-uri sqlite:///mlflow.db" >&2
