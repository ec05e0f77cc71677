"""``tle compare``: runs side by side across backends, their learning curves and transfer metrics."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

from rich.table import Table

from tle.cli.app import JsonOpt, Opt, TrackingUriOpt, app, err, fmt, out, output_file
from tle.errors import UserError
from tle.store.status import RunStatus

COLUMNS = ("name", "status", "backend", "model", "strategy", "dataset", "seed", "best_val_acc", "test_acc",
           "jumpstart", "speedup", "asymptote_gain", "auc_ratio", "trainable_params", "wall_seconds", "run_id",
           "baseline")
FORMATS = ("table", "markdown", "csv", "json")


@app.command()
def compare(
    experiment: Annotated[Optional[str], Opt(help="MLflow experiment name (default: tle)")] = None,
    sweep: Annotated[Optional[str], Opt(help="only the cells of this sweep (parent run id or sweep name)")] = None,
    filter_: Annotated[Optional[str], Opt("--filter", help="MLflow filter, e.g. \"tags.backend = 'torch'\"")] = None,
    curves: Annotated[Optional[Path], Opt(help="write the overlaid val_acc curves PNG here")] = None,
    tracking_uri: TrackingUriOpt = None,
    fmt_: Annotated[str, Opt("--format", help="table | markdown | csv | json")] = "table",
    json_out: JsonOpt = False,
    runs: Annotated[bool, Opt("--runs", help="one row per run (the default without --sweep)")] = False,
    cells: Annotated[bool, Opt("--cells", help="one row per cell, mean ± sd over seeds (the default with --sweep)")]
    = False,
) -> None:
    """Runs side by side across backends, with transfer metrics against scratch and overlaid curves.

    With --sweep: one row per cell (backend × model × strategy × dataset, and any other field that varies), mean ±
    sd over seeds of test accuracy and of each transfer metric, marked ▲/▼ as the sweep table is; --runs for one row
    per run."""
    from tle.run import plots
    from tle.analysis.compare import load_runs, public, resolve_sweep

    fmt_ = "json" if json_out else fmt_
    if fmt_ not in FORMATS:
        raise UserError(f"unknown --format {fmt_!r}", f"choose one of {', '.join(FORMATS)}")
    if sweep and experiment:
        raise UserError("give --experiment or --sweep, not both", "a sweep's cells are in its own experiment")
    if runs and cells:
        raise UserError("give --runs or --cells, not both", "--runs: one row per run; --cells: one row per cell")
    if curves is not None:
        curves = output_file(curves, "--curves", ".png")
    rows = load_runs(experiment or "tle", tracking_uri, sweep=sweep, filter_string=filter_)
    title = f"sweep {sweep}" if sweep else f"experiment {experiment or 'tle'}"
    if rows:
        _curves(rows, title, sweep, curves, tracking_uri, plots, resolve_sweep)
    if cells or (sweep and not runs):
        _print_cells([r for r in rows if not r.get("pruned")], title, fmt_)
        pruned = sum(bool(r.get("pruned")) for r in rows)
        if pruned:
            err.print(f"{pruned} run(s) a search's pruner stopped early left out (--runs lists them)", highlight=False)
    elif fmt_ == "json":
        print(json.dumps({"title": title, "runs": [public(r) for r in rows]}))
    elif fmt_ == "csv":
        print(_csv(rows), end="")
    elif fmt_ == "markdown":
        print(_markdown(rows, title))
    else:
        out.print(_table(rows, title))
        if any(r["baseline"] for r in rows):
            err.print("jump/speedup/asym: jumpstart, epochs-to-90%-of-best speed-up and asymptote gain against "
                      "the scratch run with the same spec but strategy and weights (same seed in a sweep)",
                      highlight=False)


def _print_cells(rows, title, fmt_) -> None:
    from tle.analysis import cells as cc

    found = cc.cell_rows(rows)
    if fmt_ == "json":
        print(cc.to_json(found, title))
    elif fmt_ == "csv":
        print(cc.to_csv(found), end="")
    elif fmt_ == "markdown":
        print(cc.markdown(found, title), end="")
    else:
        out.print(cc.rich_table(found, title))
        err.print(cc.RULE, highlight=False)


def _curves(rows, title, sweep, target, tracking_uri, plots, resolve_sweep) -> None:
    if sweep:
        from tle.store.tracking import configure

        client = configure(tracking_uri).MlflowClient()
        parent = resolve_sweep(client, sweep)
        with tempfile.TemporaryDirectory() as tmp:
            path = plots.compare_curves(rows, Path(tmp) / "val_acc_curves.png", f"{title}: val_acc per epoch")
            client.log_artifact(parent.info.run_id, str(path), "plots")
        err.print(f"curves: plots/val_acc_curves.png on parent run {parent.info.run_id}", highlight=False)
        if target is None:
            return
    # Without a target, a file in the temp folder: a comparison must not litter the working directory.
    path = target or Path(tempfile.gettempdir()) / f"tle-compare-{(title.split(' ', 1)[1]).replace('/', '_')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plots.compare_curves(rows, path, f"{title}: val_acc per epoch")
    err.print(f"curves: {path}", highlight=False)


def _cells(r: dict) -> list[str]:
    status = " pruned" if r.get("pruned") else "" if r["status"] == RunStatus.FINISHED else f" {r['status']}"
    return [f"{r['name'] or r['run_id'][:8]}{status}", r["backend"], r["model"], r["strategy"], r["dataset"],
            r["seed"] or "", fmt(r["best_val_acc"], ".3f"), fmt(r["test_acc"], ".3f"), fmt(r["jumpstart"], "+.3f"),
            fmt(r["speedup"], ".1f", "x"), fmt(r["asymptote_gain"], "+.3f"), fmt(r["auc_ratio"], ".2f"),
            fmt(r["trainable_params"], ",.0f"), fmt(r["wall_seconds"], ".1f", "s")]


HEAD = ("run", "backend", "model", "strategy", "dataset", "seed", "best val", "test acc", "jump", "speedup",
        "asym", "auc", "trainable", "time")


def _table(rows, title) -> Table:
    table = Table(title=f"{title}: {len(rows)} runs")
    for col in HEAD:
        table.add_column(col, justify="right" if col in HEAD[5:] else "left")
    for r in rows:
        cells = _cells(r)
        if r["status"] != RunStatus.FINISHED:
            cells[0] = f"{r['name'] or r['run_id'][:8]} [red]{r['status']}[/]"
        table.add_row(*cells)
    return table


def _markdown(rows, title) -> str:
    lines = [f"**{title}: {len(rows)} runs**", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS) + ["val_curve"], extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "val_curve": " ".join(f"{v:.4f}" for v in r["val_curve"])})
    return buf.getvalue()
