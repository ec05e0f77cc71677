"""``tle sweep``: a grid of runs on warm workers or Ray, one parent run, a table like S1's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tle.cli.app import STATE, Opt, TrackingUriOpt, app, err, out, parse_sets
from tle.errors import UserError
from tle.store.status import RunStatus


@app.command()
def sweep(
    grid_file: Annotated[Path, typer.Argument(help="sweep file: base spec + axes (+ cells, pretrain, search)")],
    jobs: Annotated[str, Opt("--jobs", "-j", help="cells running at once (warm workers, one backend each); "
                                               "auto: one per core this process may use, at most one per cell")] = "auto",
    executor: Annotated[str, Opt(help="local | ray")] = "local",
    address: Annotated[Optional[str], Opt(help="Ray cluster address (default: start Ray on this machine)")] = None,
    gpus_per_cell: Annotated[Optional[float], Opt(help="GPUs each Ray cell asks for (default: 1 if device is cuda)")] = None,
    tracking_uri: TrackingUriOpt = None,
    rows: Annotated[Optional[str], Opt(help="axes for table rows, comma-separated (default: the rest)")] = None,
    cols: Annotated[Optional[str], Opt(help="axes for table columns (default: dataset, else strategy)")] = None,
    metric: Annotated[str, Opt(help="run metric in the table (a search's confirm table)")] = "test_acc",
    fmt: Annotated[str, Opt("--format", help="table | markdown | csv | json")] = "table",
    dry_run: Annotated[bool, Opt("--dry-run", help="print the cells and exit")] = False,
    set_: Annotated[Optional[list[str]], Opt("--set", help="override a base spec field: --set train.epochs=2")] = None,
) -> None:
    """Run a grid of experiments (any spec field by dotted key) and print their table; with a search: section, an
    Optuna search per cell of the axes (trials, pruning, confirm over seeds) and its answer."""
    from tle.studies.grid import load_grid
    from tle.analysis.table import FORMATS, layout

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}", f"choose one of {', '.join(FORMATS)}")
    grid = load_grid(grid_file, parse_sets(set_ or []))
    layout(grid, _split(rows), _split(cols))  # a bad --rows/--cols fails before any cell runs
    if dry_run:
        from tle.studies.sweep import check_cells

        cells = grid.cells()
        check_cells(cells + [p for c in cells if grid.search is not None and c.role != "pretrain"
                             for p in grid.search_probes(c)])
        _print_cells(grid)
        return
    from tle.studies.search import Search
    from tle.studies.sweep import Executor, Sweep, TableLayout

    studies = sum(c.role != "pretrain" for c in grid.cells())
    workers, why = _jobs(jobs, len(grid.cells()) if grid.search is None else studies * grid.search.trials)

    runner = (Sweep if grid.search is None else Search)(
        grid, Executor(executor, workers, address, gpus_per_cell), TableLayout(metric, _split(rows), _split(cols)),
        tracking_uri=tracking_uri, console=err, quiet=STATE["quiet"])
    if why and not STATE["quiet"]:
        err.print(why, highlight=False)
    result = runner.run()  # the parent run has ended (FINISHED, FAILED or KILLED) when this returns or raises
    table = result.table
    _check_metric(result, metric)
    if fmt == "table":
        out.print(table.rich())
        for note in table.notes:
            err.print(note, highlight=False)
    else:
        print({"markdown": table.markdown, "csv": table.csv, "json": table.json}[fmt](), end="")
    done = sum(r.status == RunStatus.FINISHED for r in result.results)
    reused = sum(r.reused for r in result.results)
    what = "cells" if grid.search is None else "runs"
    err.print(f"{done}/{len(result.results)} {what} finished ({reused} reused) in {result.wall_seconds:.1f}s; "
              f"parent run {result.parent_id} in experiment {result.experiment!r} at {result.uri}", highlight=False)
    if not result.ok:
        failed = [r for r in result.results if r.status != RunStatus.FINISHED]
        for r in failed[:10]:
            err.print(f"  {r.status.lower()}: {r.cell.label}: {r.error}", highlight=False, markup=False)
        raise typer.Exit(1)


def _jobs(text: str, cells: int) -> tuple[int, str]:
    """The number of workers, and for ``auto`` the line that says how it was chosen."""
    if text.strip().lower() == "auto":
        from tle.workers.local import usable_cores

        cores = usable_cores()
        jobs = max(1, min(cores, cells))
        return jobs, f"--jobs auto: {jobs} worker(s) ({cores} cores, {cells} cells)"
    try:
        jobs = int(text)
    except ValueError:
        raise UserError(f"--jobs {text!r} is not a number", "give --jobs auto or a count, e.g. --jobs 2") from None
    if jobs < 1:
        raise UserError(f"--jobs {jobs} must be at least 1", "use --jobs auto or 1 or more")
    return jobs, ""


def _check_metric(result, metric: str) -> None:
    """A metric no finished cell logged would print a table of '-': say so instead (backends log their own
    metrics, so the name can only be checked against what the cells logged)."""
    runs = [run for r in result.results if r.status == RunStatus.FINISHED and (run := result.run_of(r)) is not None]
    if runs and not any(metric in run.metrics for run in runs):
        logged = sorted({m for run in runs for m in run.metrics if not m.startswith("seconds_")})
        raise UserError(f"no cell of the sweep logged the metric {metric!r}",
                        f"choose one they logged: {', '.join(logged[:12])}{' ...' if len(logged) > 12 else ''}")


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _print_cells(grid) -> None:
    cells = grid.cells()
    search = grid.search
    if search is not None:
        studies = sum(c.role != "pretrain" for c in cells)
        out.print(f"search: {studies} stud{'y' if studies == 1 else 'ies'} (the cells below) × {search.trials} trials, "
                  f"{search.direction} {search.metric}, sampler {search.sampler}, pruner {search.pruner}"
                  + (f"; confirm top {search.confirm.top} over seeds {', '.join(map(str, search.confirm.seeds))} "
                     f"against {search.confirm.against}" if search.confirm else ""), highlight=False)
        for key, dim in search.space.items():
            out.print(f"  {key}: {dim.text()}", highlight=False)
    pre = sum(c.role == "pretrain" for c in cells)
    table = Table(title=f"sweep {grid.name}: {len(cells)} cells" if search is None else
                  f"sweep {grid.name}: {len(cells) - pre} stud{'y' if len(cells) - pre == 1 else 'ies'}, "
                  f"{pre} pretraining run(s)")
    table.add_column("#", justify="right")
    table.add_column("role")
    table.add_column("cell")
    for col in ("backend", "model", "dataset", "strategy", "weights", "seed"):
        table.add_column(col)
    for c in cells:
        s = c.spec
        weights = f"pretrain #{c.pretrain.index}" if c.pretrain is not None else s.weights
        table.add_row(str(c.index), c.role, c.label, s.backend, s.model, s.dataset.source, s.strategy, weights,
                      str(s.train.seed))
    out.print(table)
