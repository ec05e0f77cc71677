"""``tle compare``: an experiment's runs side by side, across backends."""

from __future__ import annotations

import json
from typing import Annotated, Optional

from rich.table import Table

from tle.cli.app import Opt, app, err, fmt, out

@app.command()
def compare(
    experiment: Annotated[str, Opt(help="MLflow experiment name")] = "tle",
    tracking_uri: Annotated[Optional[str], Opt(help="MLflow tracking URI")] = None,
    json_out: Annotated[bool, Opt("--json", help="print JSON")] = False,
) -> None:
    """Table of an experiment's runs across backends."""
    from tle.compare import load_runs

    rows = load_runs(experiment, tracking_uri)
    if json_out:
        for r in rows:
            r.pop("val_curve", None)
        print(json.dumps(rows))
        return
    table = Table(title=f"experiment {experiment}: {len(rows)} runs")
    cols = ("run", "backend", "model", "strategy", "dataset", "best val", "test acc", "jump", "speedup",
            "asym", "trainable", "time")
    for col in cols:
        table.add_column(col, justify="right" if col in cols[5:] else "left")
    for r in rows:
        status = "" if r["status"] == "FINISHED" else f" [red]{r['status']}[/]"
        table.add_row(f"{r['name'] or r['run_id'][:8]}{status}", r["backend"], r["model"], r["strategy"],
                      r["dataset"], fmt(r["best_val_acc"], ".3f"), fmt(r["test_acc"], ".3f"),
                      fmt(r["jumpstart"], "+.3f"), fmt(r["speedup"], ".1f", "x"), fmt(r["asymptote_gain"], "+.3f"),
                      fmt(r["trainable_params"], ",.0f"), fmt(r["wall_seconds"], ".1f", "s"))
    out.print(table)
    if any(r["baseline"] for r in rows):
        err.print("jump/speedup/asym: jumpstart, epochs-to-90%-of-best speed-up and asymptote gain against the "
                  "scratch run of the same backend, model and data", highlight=False)
