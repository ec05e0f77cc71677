#!/usr/bin/env bash
# Offline demo: pretrain a backbone on digits 0-4, transfer it to digits 5-9 with
# every strategy, and compare the runs. Everything lands in ./mlflow.db
# (MLflow's default store); look at it with `mlflow ui`.
set -euo pipefail
EXP="demo-$(date +%Y%m%d-%H%M%S)"
run() { echo "+ tle run $*" >&2; tle --quiet run --experiment "$EXP" "$@"; }

echo "== example backend (numpy MLP, a third-party plugin from examples/) ==" >&2
BASE=$(run --backend numpy --model mlp --dataset digits:0-4 --epochs 15 --run-name pretrain-numpy --json \
       | python -c 'import json,sys; print(json.loads(sys.stdin.read())["run_id"])')
for strategy in scratch feature-extractor finetune:block2 transfer:block1; do
  w=runs:/$BASE; [ "$strategy" = scratch ] && w=none
  run --backend numpy --model mlp --dataset digits:5-9 --set dataset.train=10 --strategy "$strategy" \
      --weights "$w" --epochs 10 --finetune-lr 1e-4 --finetune-epochs 5 --run-name "numpy-$strategy" >/dev/null
done

tle compare --experiment "$EXP"
echo "runs are in $(pwd)/mlflow.db - browse them with: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db" >&2
