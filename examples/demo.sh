#!/usr/bin/env bash
# Offline demo: does transfer help a small CNN that sees few images, in PyTorch and in Keras, beyond the
# seed spread? One sweep (examples/sweeps/demo.yaml): a backbone pretrained on digits 0-4 per backend,
# then digits 5-9 from 10 images per class, from scratch and with three mixed initialisations, 3 seeds.
# Runs land in ./mlflow.db (MLflow's default store); running the demo again reuses the finished cells.
set -euo pipefail
JOBS="${DEMO_JOBS:-2}"
tle sweep "$(dirname "$0")/sweeps/demo.yaml" --jobs "$JOBS" --rows backend "$@"
echo "browse the runs (the sweep is a parent run with nested cells): mlflow ui --backend-store-uri sqlite:///mlflow.db" >&2
