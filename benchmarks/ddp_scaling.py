"""Training throughput of one ``tle run`` on 1 and on N processes (torch DDP through tle's launcher).

Same model, data, global batch and seed; each side is a real ``tle run`` (``--nproc 1`` is the plain single
process, ``--nproc N`` the DDP ranks), timed by the runs' own ``epoch_seconds`` (the median of the epochs after
the first, which holds the warm-up), so process start-up is not counted. Prints images/s per side and the ratio
N ÷ 1. On CPU the ranks share the machine's cores (each gets cores ÷ N threads), so the ratio says what the
all-reduce costs rather than what more hardware buys; on a GPU machine (``--device cuda``) one rank per GPU.

    .venv/bin/python benchmarks/ddp_scaling.py --nproc 2
    python3 benchmarks/ddp_scaling.py --device cuda --nproc auto --image-size 64 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args, nproc: str, uri: str) -> dict:
    cmd = [sys.executable, "-m", "tle", "--quiet", "run", "--backend", "torch", "--model", args.model,
           "--dataset", args.dataset, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--device", args.device, "--no-export", "--no-cache-features",
           "--set", "train.checkpoint=false", "--tracking-uri", uri, "--experiment", "ddp-scaling", "--json"]
    if nproc != "1":
        cmd += ["--nproc", nproc]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        sys.exit(f"tle run --nproc {nproc} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(uri: str, run_id: str) -> tuple[float, int]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    r = client.get_run(run_id)
    seconds = [m.value for m in sorted(client.get_metric_history(run_id, "epoch_seconds"), key=lambda m: m.step)]
    steady = seconds[1:] or seconds
    images = int(r.data.params["data.train_size"])
    return images / statistics.median(steady), int(r.data.tags.get("distributed.world_size", 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", default="2", help="processes of the distributed side (auto: one per GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch, the same on both sides")
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        one = run(args, "1", uri)
        many = run(args, args.nproc, uri)
        single, _ = throughput(uri, one["run_id"])
        multi, world = throughput(uri, many["run_id"])
    print(f"{args.model} {args.dataset} {args.image_size}px, global batch {args.batch_size}, {args.device}")
    print(f"{'processes':>10} {'images/s':>10} {'test_acc':>9}")
    print(f"{1:>10} {single:>10.1f} {one['test_acc']:>9.3f}")
    print(f"{world:>10} {multi:>10.1f} {many['test_acc']:>9.3f}")
    print(f"ratio {world} / 1: {multi / single:.2f}")


if __name__ == "__main__":
    main()
