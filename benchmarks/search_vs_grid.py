"""A grid against an Optuna search (``tle sweep`` with ``search:``) on one problem where the learning rates matter,
under the same budget rules, in one run.

The problem (offline, the numpy example backend by default): an MLP pretrained on digits 0-4 (one run, shared by
every cell of a sweep) learns digits 5-9 from 20 images per class with S3's two stages, ``finetune:block2``: the new
head trains alone at ``train.lr`` for 6 epochs, then block2 and the head at ``train.finetune_lr`` for 4. Both sweeps
train every run the same epochs, on the same data, and answer over the same seeds (0, 1, 2):

- the grid: ``train.lr`` × ``train.finetune_lr``, 4 × 4 log-spaced values (``--grid``), each over the 3 seeds;
  its answer is the group with the best mean ``test_acc``;
- the search: the same ranges as log-uniform distributions, ``--trials`` trials at seed 0 (TPE, the median pruner
  on ``val_acc`` from the third epoch), then the best configuration over the 3 seeds (``confirm``; the trial itself
  is its seed 0).

It prints each side's answer (mean ± sd over the seeds), whether the search's answer is within the grid's seed spread
of the grid's best (|Δ| ≤ sd_grid + sd_search, the sweep table's rule) or above it, and the epochs, runs and wall
time each side spent, counted from the runs in the store (each side in its own experiment, so neither reuses the
other's runs; the pretraining run is counted on both). Target: the search's answer within the spread of the grid's
best at ≤ 1/3 of the grid's epochs.

    .venv/bin/python benchmarks/search_vs_grid.py [--trials 16] [--jobs 2] [--backend numpy --model mlp]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

LR = (1e-4, 1e-1)
FINETUNE_LR = (1e-5, 1e-2)
SEEDS = [0, 1, 2]


def base(backend: str, model: str, experiment: str) -> dict:
    size = {} if backend == "numpy" else {"image_size": 32}  # the MLP reads digits' own 8x8 pixels
    return {"backend": backend, "model": model, "strategy": "finetune:block2",
            "dataset": {"source": "digits:5-9", **size, "train": 20},
            "train": {"epochs": 6, "finetune_epochs": 4, "batch_size": 16, "seed": 0},
            "export": {"onnx": False}, "tracking": {"experiment": experiment}}


def log_points(low: float, high: float, n: int) -> list[float]:
    return [float(f"{low * (high / low) ** (i / (n - 1)):.3g}") for i in range(n)]


def files(tmp: Path, args) -> tuple[Path, Path]:
    # One backbone for every cell of both sweeps: the pretraining run takes its training settings from here, not from
    # the cell's learning rates (a grid's pretraining run is built from each cell's spec otherwise).
    pretrain = {"dataset": {"source": "digits:0-4", "train": None},
                "train": {"seed": 0, "lr": 1e-3, "finetune_lr": 1e-5}}
    grid = {"name": "bench-grid", "base": base(args.backend, args.model, "bench-grid"), "pretrain": pretrain,
            "axes": {"train.lr": log_points(*LR, args.grid), "train.finetune_lr": log_points(*FINETUNE_LR, args.grid),
                     "train.seed": SEEDS}}
    search = {"name": "bench-search", "base": base(args.backend, args.model, "bench-search"), "pretrain": pretrain,
              "search": {"metric": "val_acc", "trials": args.trials, "sampler": "tpe", "seed": 0,
                         "pruner": {"median": {"n_startup_trials": 4, "n_warmup_steps": 2}},
                         "space": {"train.lr": {"log": list(LR)}, "train.finetune_lr": {"log": list(FINETUNE_LR)}},
                         "confirm": {"seeds": SEEDS, "top": 1, "against": "none"}}}
    paths = []
    for body in (grid, search):
        path = tmp / f"{body['name']}.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        paths.append(path)
    return paths[0], paths[1]


def run(path: Path, uri: str, jobs: int) -> tuple[dict, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tle", "--quiet", "sweep", str(path), "--tracking-uri", uri,
                           "--jobs", str(jobs), "--format", "json"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{path.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), wall


def spent(uri: str, sweep: str) -> dict:
    """Runs and epochs the sweep's own runs trained (its parent's children: a reused run is another's child)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string=f"tags.`tle.sweep` = '{sweep}' and tags.`tle.role` = 'sweep'")[0]
    children = client.search_runs([parent.info.experiment_id], max_results=5000,
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    pre = [r for r in children if r.data.tags.get("tle.role") == "pretrain"]
    return {"runs": len(children), "epochs": int(sum(r.data.metrics.get("epochs_trained", 0) for r in children)),
            "pretrain_epochs": int(sum(r.data.metrics.get("epochs_trained", 0) for r in pre)),
            "pruned": sum("tle.pruned" in r.data.tags for r in children),
            "run_seconds": sum(r.data.metrics.get("wall_seconds", 0.0) for r in children)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--grid", type=int, default=4, help="values per learning rate in the grid")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--keep", type=Path, help="keep the store and the sweep files in this folder")
    args = parser.parse_args()

    from tle.analysis.stats import Summary, difference

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="tle-search-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp / 'bench.db'}"
    grid_file, search_file = files(tmp, args)
    grid_out, grid_wall = run(grid_file, uri, args.jobs)
    search_out, search_wall = run(search_file, uri, args.jobs)

    groups = [g for g in grid_out["groups"] if g["n"]]
    best = max(groups, key=lambda g: g["test_acc_mean"])
    import mlflow

    client = mlflow.MlflowClient(uri)
    grid_values = [client.get_run(i).data.metrics["test_acc"] for i in best["run_ids"]]
    (study,) = search_out["studies"]
    (confirmed,) = [c for c in study["confirm"] if str(c["config"]).startswith("#1")]
    search_values = list(confirmed["by_seed"].values())
    g, s = Summary.of(grid_values), Summary.of(search_values)
    diff = difference(search_values, grid_values)
    grid_spent, search_spent = spent(uri, "bench-grid"), spent(uri, "bench-search")

    print(f"problem: {args.backend}/{args.model}, finetune:block2 from digits 0-4 to 5-9 (20 images per class), "
          f"6 + 4 epochs per run, seeds {SEEDS}; machine: {os.cpu_count()} cores (shared), --jobs {args.jobs}")
    print(f"{'':8}{'answer (test_acc over 3 seeds)':34}{'configuration':44}{'runs':>6}{'epochs':>8}{'wall s':>9}")
    grid_config = f"lr={best['train.lr']:.3g} finetune_lr={best['train.finetune_lr']:.3g}"
    search_config = (f"lr={float(confirmed['train.lr']):.3g} finetune_lr={float(confirmed['train.finetune_lr']):.3g} "
                     f"({confirmed['config'][3:].strip('()')})")
    for name, summary, config, used, wall in (("grid", g, grid_config, grid_spent, grid_wall),
                                              ("search", s, search_config, search_spent, search_wall)):
        print(f"{name:8}{f'{summary.mean:.3f} ± {summary.sd:.3f} (n={summary.n})':34}{config:44}"
              f"{used['runs']:>6}{used['epochs']:>8}{wall:>9.1f}")
    within = not diff.beyond_spread or diff.delta > 0
    ratio = search_spent["epochs"] / grid_spent["epochs"]
    print(f"search - grid: {diff.delta:+.3f} (sd {g.sd:.3f} + {s.sd:.3f}; Welch p "
          f"{'-' if diff.p_value is None else f'{diff.p_value:.2f}'}): "
          + ("above the grid's best by more than the spread" if diff.beyond_spread and diff.delta > 0 else
             "within the seed spread" if not diff.beyond_spread else "below the grid's best by more than the spread"))
    print(f"search ÷ grid: epochs {ratio:.2f} ({search_spent['epochs']} / {grid_spent['epochs']}; pretraining "
          f"{search_spent['pretrain_epochs']} / {grid_spent['pretrain_epochs']} of them), runs {search_spent['runs']} / {grid_spent['runs']} "
          f"({search_spent['pruned']} pruned trials), wall {search_wall / grid_wall:.2f} ({search_wall:.1f} s / "
          f"{grid_wall:.1f} s, each sweep's process included), run seconds "
          f"{search_spent['run_seconds'] / max(grid_spent['run_seconds'], 1e-9):.2f}")
    met = within and ratio <= 1 / 3 + 1e-9
    print(f"target (within the grid's spread or above it, at ≤ 1/3 of its epochs): {'met' if met else 'NOT met'}")
    if args.keep is None:
        print(f"(store and sweep files: {tmp})")
    if not math.isfinite(g.mean) or not math.isfinite(s.mean):
        sys.exit(1)


if __name__ == "__main__":
    main()
