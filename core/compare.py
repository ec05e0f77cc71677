"""Reading runs back from MLflow for cross-backend tables."""

from __future__ import annotations

from tle.errors import UserError

METRICS = ("best_val_acc", "test_acc", "test_loss", "trainable_params", "total_params", "onnx_max_abs_diff",
           "wall_seconds")
TAGS = ("backend", "model", "strategy", "dataset", "init", "weights", "device")


def load_runs(experiment: str, tracking_uri: str | None = None) -> list[dict]:
    from tle.tracking import configure

    mlflow = configure(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no experiment {experiment!r} in {mlflow.get_tracking_uri()}",
                        "run 'tle run --experiment NAME ...' first, or pass --tracking-uri")
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"],
                                             max_results=5000)
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status}
        row.update({t: r.data.tags.get(t, "") for t in TAGS})
        row.update({m: r.data.metrics.get(m) for m in METRICS})
        rows.append(row)
    return rows
