"""Reading an experiment's runs back from MLflow for cross-backend tables.

Each run is compared with its baseline, the latest finished ``scratch`` run
of the same backend, model and dataset in the experiment; the transfer
metrics are shown and logged to the run (``transfer_*``).
"""

from __future__ import annotations

import math

from tle.errors import UserError
from tle.transfer import transfer_metrics

METRICS = ("best_val_acc", "test_acc", "test_loss", "trainable_params", "total_params", "onnx_max_abs_diff",
           "wall_seconds")
TAGS = ("backend", "model", "strategy", "dataset", "init", "weights", "device")
TRANSFER = ("jumpstart", "speedup", "asymptote_gain", "auc_ratio")


def load_runs(experiment: str, tracking_uri: str | None = None, log: bool = True) -> list[dict]:
    from tle.tracking import configure

    mlflow = configure(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no experiment {experiment!r} in {mlflow.get_tracking_uri()}",
                        "run 'tle run --experiment NAME ...' first, or pass --tracking-uri")
    client = mlflow.MlflowClient()
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000)
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status}
        row.update({t: r.data.tags.get(t, "") for t in TAGS})
        row.update({m: r.data.metrics.get(m) for m in METRICS})
        curve = sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda m: m.step)
        row["val_curve"] = [m.value for m in curve]
        rows.append(row)
    _add_transfer(rows, client if log else None)
    return rows


def _add_transfer(rows: list[dict], client) -> None:
    baselines = {}
    for row in rows:  # oldest first, so the latest scratch run wins
        if row["strategy"] == "scratch" and row["status"] == "FINISHED" and row["val_curve"]:
            baselines[(row["backend"], row["model"], row["dataset"])] = row
    for row in rows:
        base = baselines.get((row["backend"], row["model"], row["dataset"]))
        row.update({k: None for k in TRANSFER})
        row["baseline"] = None
        if base is None or base is row or not row["val_curve"]:
            continue
        metrics = transfer_metrics(row["val_curve"], base["val_curve"]).as_dict()
        row.update({k: metrics[k] for k in TRANSFER})
        row["baseline"] = base["run_id"]
        if client is not None:
            for k in TRANSFER:
                if math.isfinite(metrics[k]):
                    client.log_metric(row["run_id"], f"transfer_{k}", metrics[k])
            client.set_tag(row["run_id"], "transfer_baseline", base["run_id"])
