"""Fixed cost per sweep cell, and a Keras cell's wall against a torch cell's on the same sweep.

For each backend (torch and keras by default, in one run, the order alternating
between repeats) it runs a sweep of small cells (vgg_small on digits, 2 epochs,
6 seeds by default) on one warm local worker into a fresh SQLite store, then
reads every cell's timings back from the store:

- cell wall = the run's ``wall_seconds`` (what ``tle compare`` shows per cell);
- compute = the epochs' own seconds (``epoch_seconds``) + test evaluation;
- fixed per cell = the run's wall time - compute, split into the runner's parts
  (data, tracking, model build, the loop around the epochs, report and plots,
  weights, ONNX export + parity + log_model);
- the sweep's own cost = sweep wall - the runs' wall (worker start and the
  framework import, once per worker; scheduling; reading results back).

It prints total wall / sum of compute and the fixed seconds per cell with the
breakdown, for ``export.onnx: best`` (only the group's best cell, exported
after the grid) and, with ``--export both``, ``true`` (every cell exported);
then, per export mode, the keras / torch ratio of mean cell wall (target
<= 1.5) and of mean compute, the same ratio over the cells after each worker's first (whose imports
differ per framework), and whether both backends' test accuracies are the
same across repeats (a warm keras worker reuses one built and traced model for
all cells, see plugins/keras_backend/models.py; ``TLE_REUSE_MODELS=0`` in the
environment turns that off, for the figures before it). Target: <= 1 s fixed
per cell in a warm worker with export on.

    .venv/bin/python benchmarks/sweep_overhead.py [--cells 6] [--backends torch,keras] [--repeat 2]
        [--export best|true|both] [--jobs 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

PARTS = ("data", "tracking", "model", "loop", "evaluate", "report", "weights", "export")


def sweep(tmp: Path, backend: str, cells: int, jobs: int, export) -> dict:
    from rich.console import Console

    from tle.studies.grid import load_grid
    from tle.studies.sweep import Sweep

    tmp.mkdir(parents=True, exist_ok=True)
    grid = tmp / f"grid-{export}.yaml"
    grid.write_text(yaml.safe_dump({
        "name": f"overhead-{export}",
        "base": {"backend": backend, "model": "vgg_small",
                 "dataset": {"source": "digits", "image_size": 32},
                 "train": {"epochs": 2, "batch_size": 32}, "export": {"onnx": export},
                 "tracking": {"experiment": "overhead"}},
        "axes": {"train.seed": list(range(cells))}}))
    uri = f"sqlite:///{tmp / f'store-{export}.db'}"
    started = time.perf_counter()
    result = Sweep(load_grid(grid), jobs=jobs, tracking_uri=uri, console=Console(stderr=True), quiet=True).run()
    wall = time.perf_counter() - started
    rows = []
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    for res in result.results:
        run = result.runs[res.run_id]
        epochs = sum(m.value for m in client.get_metric_history(res.run_id, "epoch_seconds"))
        m = run.metrics
        parts = {p: m.get(f"seconds_{p}", 0.0) for p in PARTS if p not in ("loop",)}
        parts["loop"] = m.get("seconds_train", 0.0) - epochs  # logging, checkpoints, progress around the epochs
        rows.append({"compute": epochs + m.get("seconds_evaluate", 0.0), "wall": m["wall_seconds"],
                     "test_acc": m.get("test_acc"), "exported": "onnx_max_abs_diff" in m,
                     "seed": int(run.params.get("train.seed", 0)), **parts})
    return {"wall": wall, "rows": sorted(rows, key=lambda r: r["seed"])}


def report(name: str, out: dict) -> None:
    rows = out["rows"]
    compute = sum(r["compute"] for r in rows)
    runs_wall = sum(r["wall"] for r in rows)
    fixed = [r["wall"] - r["compute"] for r in rows]
    print(f"\n{name}: {len(rows)} cells, {sum(r['exported'] for r in rows)} exported")
    print(f"  sweep wall {out['wall']:.1f}s, sum of compute (epochs + evaluation) {compute:.1f}s"
          f" -> wall / compute = {out['wall'] / compute:.2f}")
    walls = [r["wall"] for r in rows]
    print(f"  cell wall (run wall_seconds): mean {statistics.mean(walls):.2f}s, first {walls[0]:.2f}s, "
          f"others mean {statistics.mean(walls[1:] or walls):.2f}s; compute per cell {compute / len(rows):.2f}s")
    print(f"  fixed per cell (run wall - compute): mean {statistics.mean(fixed):.2f}s, "
          f"median {statistics.median(fixed):.2f}s, max {max(fixed):.2f}s")
    print(f"  sweep's own cost (worker start, framework import, scheduling): {out['wall'] - runs_wall:.1f}s in all, "
          f"{(out['wall'] - runs_wall) / len(rows):.2f}s per cell")
    print("  breakdown per cell (mean s): " + ", ".join(
        f"{p} {statistics.mean(r[p] for r in rows):.3f}" for p in PARTS if p != "evaluate"))
    print(f"  test_acc mean {statistics.mean(r['test_acc'] for r in rows):.3f}")


def ratios(results: dict) -> None:
    """keras / torch mean cell wall (and compute) per export mode, over every repeat, and per repeat."""
    print("\nkeras / torch, mean cell wall (run wall_seconds) per export mode:")
    for export in sorted({e for _, e in results}, key=str):
        runs = {b: results.get((b, export), []) for b in ("keras", "torch")}
        if not runs["keras"] or not runs["torch"]:
            continue
        mean = {b: statistics.mean(r["wall"] for out in outs for r in out["rows"]) for b, outs in runs.items()}
        comp = {b: statistics.mean(r["compute"] for out in outs for r in out["rows"]) for b, outs in runs.items()}
        each = [statistics.mean(r["wall"] for r in k["rows"]) / statistics.mean(r["wall"] for r in t["rows"])
                for k, t in zip(runs["keras"], runs["torch"])]
        print(f"  export.onnx: {export}: keras {mean['keras']:.2f}s, torch {mean['torch']:.2f}s per cell -> "
              f"ratio {mean['keras'] / mean['torch']:.2f} (target <= 1.5; per repeat "
              f"{', '.join(f'{x:.2f}' for x in each)}); compute {comp['keras']:.2f}s vs {comp['torch']:.2f}s "
              f"-> {comp['keras'] / comp['torch']:.2f}")
        # A worker's first cell also pays imports its warm-up did not do (torch: torchvision, scikit-learn's
        # digits; keras: its first trace), which differ per framework: the later cells show the warm cost alone.
        if all(len(out["rows"]) > 1 for outs in runs.values() for out in outs):
            later = {b: statistics.mean(r["wall"] for out in outs for r in out["rows"][1:]) for b, outs in runs.items()}
            each_later = [statistics.mean(r["wall"] for r in k["rows"][1:]) /
                          statistics.mean(r["wall"] for r in t["rows"][1:]) for k, t in zip(runs["keras"], runs["torch"])]
            print(f"    cells after the first: keras {later['keras']:.2f}s, torch {later['torch']:.2f}s -> ratio "
                  f"{later['keras'] / later['torch']:.2f} (per repeat {', '.join(f'{x:.2f}' for x in each_later)})")
        for b, outs in runs.items():
            accs = [tuple(round(r["test_acc"], 6) for r in out["rows"]) for out in outs]
            print(f"    {b} test_acc per cell {'identical' if len(set(accs)) == 1 else 'DIFFERENT'} across "
                  f"repeats: {', '.join(f'{a:.4f}' for a in accs[0])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6)
    parser.add_argument("--backends", "--backend", default="torch,keras", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="sweeps per backend and export mode, alternating")
    parser.add_argument("--export", choices=("best", "true", "both"), default="best")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    exports = {"best": ["best"], "true": [True], "both": [True, "best"]}[args.export]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for export in exports:
                for backend in (backends if r % 2 == 0 else backends[::-1]):
                    out = sweep(Path(tmp) / f"{backend}-{r}", backend, args.cells, args.jobs, export)
                    results.setdefault((backend, export), []).append(out)
                    report(f"{backend}, export.onnx: {export} (repeat {r + 1})", out)
    ratios(results)


if __name__ == "__main__":
    main()
