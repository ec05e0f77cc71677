"""Fixed cost per sweep cell: what a cell pays beyond training and evaluating its model.

Runs a sweep of small cells (vgg_small on digits, 2 epochs, 12 seeds by default)
on one warm local worker into a fresh SQLite store, then reads every cell's
timings back from the store:

- compute = the epochs' own seconds (``epoch_seconds``) + test evaluation;
- fixed per cell = the run's wall time - compute, split into the runner's parts
  (data, tracking, model build, the loop around the epochs, report and plots,
  weights, ONNX export + parity + log_model);
- the sweep's own cost = sweep wall - the runs' wall (worker start and the
  framework import, once per worker; scheduling; reading results back).

It prints total wall / sum of compute, and the fixed seconds per cell with the
breakdown, for ``export.onnx: true`` (every cell exported) and ``best`` (only
the group's best cell, exported after the grid). Target: <= 1 s fixed per cell
in a warm worker with export on.

    .venv/bin/python benchmarks/sweep_overhead.py [--cells 12] [--backend torch] [--jobs 1]
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

    from tle.study.grid import load_grid
    from tle.study.sweep import Sweep

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
                     "test_acc": m.get("test_acc"), "exported": "onnx_max_abs_diff" in m, **parts})
    return {"wall": wall, "rows": rows}


def report(name: str, out: dict) -> None:
    rows = out["rows"]
    compute = sum(r["compute"] for r in rows)
    runs_wall = sum(r["wall"] for r in rows)
    fixed = [r["wall"] - r["compute"] for r in rows]
    print(f"\n{name}: {len(rows)} cells, {sum(r['exported'] for r in rows)} exported")
    print(f"  sweep wall {out['wall']:.1f}s, sum of compute (epochs + evaluation) {compute:.1f}s"
          f" -> wall / compute = {out['wall'] / compute:.2f}")
    print(f"  fixed per cell (run wall - compute): mean {statistics.mean(fixed):.2f}s, "
          f"median {statistics.median(fixed):.2f}s, max {max(fixed):.2f}s")
    print(f"  sweep's own cost (worker start, framework import, scheduling): {out['wall'] - runs_wall:.1f}s in all, "
          f"{(out['wall'] - runs_wall) / len(rows):.2f}s per cell")
    print("  breakdown per cell (mean s): " + ", ".join(
        f"{p} {statistics.mean(r[p] for r in rows):.3f}" for p in PARTS if p != "evaluate"))
    print(f"  test_acc mean {statistics.mean(r['test_acc'] for r in rows):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for export in (True, "best"):
            report(f"export.onnx: {export}", sweep(Path(tmp), args.backend, args.cells, args.jobs, export))


if __name__ == "__main__":
    main()
