"""A sweep's results in the store: the table and counts on the parent run (the sweep ends the run)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from tle.store.status import RunStatus


def record(sweep, table) -> None:
    """Log ``table`` (markdown, csv, json) and the cell counts on the parent (still open: the sweep ends it)."""
    from tle.store.tracking import configure

    mlflow = configure(sweep.uri)
    client = mlflow.MlflowClient()
    cells = sweep.results
    counts = {"cells_total": len(cells),
              "cells_finished": sum(r.status == RunStatus.FINISHED for r in cells),
              "cells_failed": sum(r.status == RunStatus.FAILED for r in cells),
              "cells_reused": sum(r.reused for r in cells),
              "sweep_wall_seconds": sweep.wall_seconds}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "results"
        folder.mkdir()
        (folder / "table.md").write_text(table.markdown())
        (folder / "table.csv").write_text(table.csv())
        (folder / "table.json").write_text(table.json())
        client.log_artifacts(sweep.parent_id, str(folder), "results")
    for key, value in counts.items():
        client.log_metric(sweep.parent_id, key, float(value))
    for group in table.groups.values():
        if group.summary is not None and group.summary.n:
            name = "_".join(str(v) for v in group.axes.values()) or "all"
            client.log_metric(sweep.parent_id, _metric_name(f"{table.metric}_mean.{name}"), group.summary.mean)


def _metric_name(text: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and spaces
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in text)[:250]
