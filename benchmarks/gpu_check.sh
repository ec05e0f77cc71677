#!/usr/bin/env bash
# The CUDA checks in one command, for a lent GPU machine (see /work/.library/device): the CUDA tests and the
# spiking throughput on CUDA, outputs under $OUT. That machine's python3 has torch but no registry access;
# of tle's imports only pydantic is missing, so its wheels travel in .device/wheels (git-ignored). Here, once:
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --implementation cp -d .device/wheels "pydantic>=2.6"
# then: run(command="bash benchmarks/gpu_check.sh", carry=[".device"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install --quiet --no-index --find-links .device/wheels pydantic
# tle installs its packages from folders of other names (pyproject's package-dir): link them by import name.
pkgs=$(mktemp -d)
ln -s "$PWD/core" "$pkgs/tle"
ln -s "$PWD/plugins/torch_backend" "$pkgs/tle_torch"
ln -s "$PWD/plugins/spyketorch_backend" "$pkgs/tle_spyketorch"
export PYTHONPATH="$pkgs" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_spyketorch_layers.py \
    tests/test_torch_training.py 2>&1 | tee "$OUT/tests.txt"
for batch in 64 1024; do
    timeout 150 python3 benchmarks/snn_throughput.py --device cuda --batch "$batch" 2>&1 | tee "$OUT/snn_cuda_$batch.txt"
done
# One tle run on the GPUs through torch's launcher: one DDP rank per GPU (--nproc auto), NCCL, beside 1 process.
timeout 240 python3 benchmarks/ddp_scaling.py --device cuda --nproc auto --image-size 64 --batch-size 256 \
    --epochs 3 2>&1 | tee "$OUT/ddp_cuda.txt"
