"""What a ranking costs against what it saves: ``tle rank`` wall time ÷ a 1-seed feature-extractor sweep's wall
time over the same candidates, both measured in one run, as a user runs them (the CLI in a process of its own,
into one fresh SQLite store).

Setup (not timed): backbones pretrained on digits 0-4 in this process, ``--epochs-list`` epochs each, for every
model of ``--models`` (torch by default): those runs are the candidates ``BACKEND:MODEL@runs:/ID`` (and, with
``--random``, each model with random weights: ranked, but without a sweep cell). ``--candidates`` names them instead
(e.g. ``torch:resnet18@imagenet,keras:vgg16@imagenet`` where the weights can be downloaded). Then, timed:

- the sweep: one cell per candidate, ``strategy: feature-extractor``, seed 0, on ``--target`` with tle's defaults
  for everything else (5 epochs, batch 32, ONNX export and parity check of every cell) unless ``--sweep-epochs``
  or ``--no-export`` say otherwise, on ``--jobs`` workers (``tle sweep``'s ``auto`` by default);
- the ranking: ``tle rank`` of the same candidates on the same data (``--max-per-class`` ranks on a sample).

It prints both walls and their ratio (target <= 0.05), then where the ranking's time goes (the command's own start,
the checks, extracting features in the worker, the scores, the tracked run), the marginal ratio (a candidate's
extraction + scores ÷ a sweep cell's run, which is what the ratio tends to when candidates are many or large) and
Kendall's tau of each score against the sweep's test accuracy (what the sampled ranking says).

    .venv/bin/python benchmarks/rank_vs_sweep.py [--models vgg_small,resnet_small] [--epochs-list 2,6] [--random]
        [--candidates BACKEND:MODEL@WEIGHTS,...] [--target digits:5-9] [--image-size 32] [--sweep-epochs 5]
        [--no-export] [--max-per-class N] [--jobs auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from scipy.stats import kendalltau


def pretrain(uri: str, backend: str, models: list[str], epochs: list[int], image_size: int) -> list[str]:
    from tle.contract.spec import build_spec
    from tle.run.runner import RunOptions, run_experiment

    candidates = []
    for model in models:
        for n in epochs:
            spec = build_spec({"backend": backend, "model": model, "export": {"onnx": False},
                               "dataset": {"source": "digits:0-4", "image_size": image_size, "train": None},
                               "train": {"epochs": n, "batch_size": 32, "seed": 0},
                               "tracking": {"uri": uri, "experiment": "pretrain"}})
            result = run_experiment(spec, RunOptions(quiet=True))
            print(f"  pretrained {backend}:{model} {n} epochs: test acc {result.test.accuracy:.3f} ({result.run_id})")
            candidates.append(f"{backend}:{model}@runs:/{result.run_id}")
    return candidates


def timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tle", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"tle {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--models", default="vgg_small,resnet_small")
    parser.add_argument("--epochs-list", default="2,6", help="pretraining epochs: one candidate per model and value")
    parser.add_argument("--candidates", default="", help="BACKEND:MODEL@WEIGHTS,... as tle rank takes them (e.g. "
                                                           "torch:resnet18@imagenet): no pretraining, --models, "
                                                           "--epochs-list and --backend unused")
    parser.add_argument("--random", action="store_true", help="one more candidate per model: its random weights "
                                                             "(ranked, but not in the sweep: no feature extractor)")
    parser.add_argument("--target", default="digits:5-9")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--sweep-epochs", type=int, default=None, help="default: tle's (5)")
    parser.add_argument("--no-export", action="store_true", help="sweep cells without ONNX export (default: export)")
    parser.add_argument("--max-per-class", type=int, default=None, help="rank on a sample of the target")
    parser.add_argument("--jobs", default="auto", help="sweep workers (tle sweep --jobs)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="tle-rank-bench-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    if args.candidates:
        candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    else:
        print(f"setup: pretraining on digits:0-4 into {uri}")
        candidates = pretrain(uri, args.backend, args.models.split(","),
                              [int(e) for e in args.epochs_list.split(",")], args.image_size)
        if args.random:
            candidates += [f"{args.backend}:{m}@random" for m in args.models.split(",")]

    base = {"strategy": "feature-extractor", "tracking": {"experiment": "bench-sweep"},
            "dataset": {"source": args.target, "image_size": args.image_size}, "train": {"seed": 0}}
    if args.sweep_epochs:
        base["train"]["epochs"] = args.sweep_epochs
    if args.no_export:
        base["export"] = {"onnx": False}
    # A random backbone has no feature-extractor cell (tle refuses to freeze random blocks): the sweep holds the
    # pretrained candidates only, the ranking all of them (so --random makes the ratio larger, not smaller).
    cells = [{"backend": c.split(":", 1)[0], "model": c.split(":", 1)[1].split("@")[0], "weights": c.split("@", 1)[1]}
             for c in candidates if not c.endswith("@random")]
    if not cells:
        raise SystemExit("no candidate with weights to sweep: a random backbone has no feature-extractor cell")
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"name": "bench-fe", "base": base, "cells": cells}))

    print(f"timed: tle rank of {len(candidates)} candidates, then tle sweep of the same as feature extractors")
    rank_args = ["--quiet", "rank", "--dataset", args.target, "--image-size", str(args.image_size), "--candidates",
                 ",".join(candidates), "--experiment", "bench-rank", "--json"]
    if args.max_per_class:
        rank_args += ["--max-per-class", str(args.max_per_class)]
    rank_wall, rank_proc = timed(rank_args, env)
    ranking = json.loads(rank_proc.stdout.strip().splitlines()[-1])
    sweep_wall, sweep_proc = timed(["--quiet", "sweep", str(folder / "sweep.yaml"), "--jobs", args.jobs,
                                    "--format", "json"], env)
    table = json.loads(sweep_proc.stdout)
    cell_walls = [g["seconds_mean"] for g in table["groups"] if g.get("seconds_mean") is not None]

    per_candidate = [c["features_seconds"] + sum(c["seconds"].values()) for c in ranking["candidates"]]
    inside = ranking["wall_seconds"]
    print()
    print(f"sweep (1 seed, feature-extractor, {len(cells)} cells, --jobs {args.jobs}): {sweep_wall:8.1f} s")
    print(f"rank  ({len(candidates)} candidates{', max ' + str(args.max_per_class) + '/class' if args.max_per_class else ''}):"
          f"{rank_wall:8.1f} s")
    print(f"ratio rank / sweep: {rank_wall / sweep_wall:.3f}   (target <= 0.05)")
    print()
    print(f"rank's time: command start {rank_wall - inside:.1f} s, then {inside:.1f} s: checks "
          f"{ranking['check_seconds']:.1f} s (MLflow's import, the stored runs; the workers start meanwhile), "
          f"features {ranking['extract_seconds']:.1f} s (waiting for the workers' framework import included), "
          f"scores {sum(ranking['score_seconds'].values()):.2f} s (in a thread, as each candidate's features arrive), "
          f"the tracked run {ranking['log_seconds']:.1f} s "
          "(with the bar plot)")
    print(f"per candidate: extraction + scores {statistics.mean(per_candidate):.2f} s; per sweep cell: run "
          f"{statistics.mean(cell_walls):.2f} s (mean wall_seconds); marginal ratio "
          f"{statistics.mean(per_candidate) / statistics.mean(cell_walls):.3f}")
    print("scores in the ranking, by k-NN:")
    for c in ranking["candidates"]:
        print(f"  {c['rank']}. {c['candidate']}: " + ", ".join(f"{k} {v:.3g}" for k, v in c["scores"].items()
                                                                if v is not None))
    def axis(group: dict, key: str) -> str:  # a group names only the axes that vary: the rest is every cell's
        return group.get(key, cells[0][key])

    print("sweep test acc: " + ", ".join(f"{axis(g, 'backend')}:{axis(g, 'model')}@{axis(g, 'weights')}: "
                                         f"{g['test_acc_mean']:.3f}" for g in table["groups"]))
    # What the sample's ranking says of the sweep: Kendall's tau of each score against the cells' test accuracy.
    accuracy = {axis(g, "weights"): g["test_acc_mean"] for g in table["groups"]}
    swept = [c for c in ranking["candidates"] if c["weights"] in accuracy]
    taus = []
    for score in ranking["candidates"][0]["scores"]:
        pairs = [(c["scores"][score], accuracy[c["weights"]]) for c in swept if c["scores"][score] is not None]
        if len(pairs) >= 3 and len({a for a, _ in pairs}) > 1:
            taus.append(f"{score} {kendalltau(*zip(*pairs)).statistic:+.2f}")
    print(f"Kendall's tau against the sweep's test acc ({len(swept)} candidates): " + ", ".join(taus))
    try:
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    except OSError:
        pass


if __name__ == "__main__":
    main()
