"""Reading runs back from MLflow for cross-backend tables, curves and transfer metrics.

Runs are selected by experiment, by sweep (the children of a parent run) and
by an MLflow filter string. Each run is compared with its baseline: the latest
finished ``scratch`` run with the same resolved spec except strategy and
weights (in a sweep: the scratch cell of the same backend, model, data and
seed); failing that, the latest finished ``scratch`` run of the same backend,
model and dataset. The transfer metrics are shown and logged to the run
(``transfer_*``).
"""

from __future__ import annotations

import math

from tle.errors import UserError
from tle.analysis.transfer import transfer_metrics
from tle.store.status import PRUNED_TAG, RunStatus

METRICS = ("best_val_acc", "test_acc", "test_loss", "trainable_params", "total_params", "onnx_max_abs_diff",
           "wall_seconds")
TAGS = ("backend", "model", "strategy", "dataset", "init", "weights", "device")
TRANSFER = ("jumpstart", "speedup", "asymptote_gain", "auc_ratio")
# Params that may differ between a run and its scratch baseline.
NOT_BASELINE = ("strategy", "weights", "tracking.", "train.checkpoint", "export.", "data.")


def resolve_sweep(client, ref: str, experiment_ids: list[str] | None = None):
    """A sweep's parent run from its run id or its name (the latest sweep of that name)."""
    try:
        run = client.get_run(ref)
        if run.data.tags.get("tle.role") == "sweep":
            return run
    except Exception:
        pass
    ids = experiment_ids or [e.experiment_id for e in client.search_experiments(max_results=1000)]
    found = client.search_runs(ids, filter_string=f"tags.`tle.sweep` = '{ref}' and tags.`tle.role` = 'sweep'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        raise UserError(f"no sweep {ref!r} (a parent run id or a sweep name)",
                        "give the parent run id that 'tle sweep' printed, or the sweep file's name")
    return found[0]


def load_runs(experiment: str | None = "tle", tracking_uri: str | None = None, log: bool = True,
              sweep: str | None = None, filter_string: str | None = None) -> list[dict]:
    """Rows for the selected runs (oldest first); with ``sweep``, only its cells (and its pretraining runs)."""
    from tle.store.tracking import configure

    mlflow = configure(tracking_uri)
    client = mlflow.MlflowClient()
    if sweep:
        parent = resolve_sweep(client, sweep)
        exp_ids = [parent.info.experiment_id]
        where = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    else:
        exp = mlflow.get_experiment_by_name(experiment or "tle")
        if exp is None:
            raise UserError(f"no experiment {experiment!r} in {mlflow.get_tracking_uri()}",
                            "run 'tle run --experiment NAME ...' first, or pass --tracking-uri")
        exp_ids, where = [exp.experiment_id], ""
    if filter_string:
        where = f"{where} and {filter_string}" if where else filter_string
    try:
        runs = client.search_runs(exp_ids, filter_string=where, order_by=["attributes.start_time ASC"],
                                  max_results=5000)
    except Exception as exc:
        raise UserError(f"bad --filter {filter_string!r}: {str(exc).splitlines()[0]}",
                        "use MLflow's syntax, e.g. \"metrics.test_acc > 0.5 and tags.backend = 'torch'\"") from None
    if not any(r.data.tags.get("tle.role") != "sweep" for r in runs):
        what = f"sweep {sweep!r}" if sweep else f"experiment {experiment or 'tle'!r}"
        raise UserError(f"no runs to compare in {what}" + (f" matching {filter_string!r}" if filter_string else ""),
                        "run some first ('tle run', 'tle sweep') or loosen --filter")
    rows = []
    for r in runs:
        if r.data.tags.get("tle.role") == "sweep":
            continue
        row = {"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
               "role": r.data.tags.get("tle.role", "run"), "seed": r.data.params.get("train.seed"),
               "pruned": PRUNED_TAG in r.data.tags}  # a search's trial its pruner stopped: fewer epochs than its spec
        row.update({t: r.data.tags.get(t, "") for t in TAGS})
        row.update({m: r.data.metrics.get(m) for m in METRICS})
        row["params"] = dict(r.data.params)
        row["axes"] = {k[5:]: v for k, v in r.data.tags.items() if k.startswith("axis.")}  # a sweep cell's place
        curve = sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda m: m.step)
        row["val_curve"] = [m.value for m in curve]
        rows.append(row)
    _add_transfer(rows, client if log else None)
    return rows


def _baseline_key(row: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in row["params"].items() if not k.startswith(NOT_BASELINE)))


def _loose_key(row: dict) -> tuple:
    return row["backend"], row["model"], row["dataset"]


def _add_transfer(rows: list[dict], client) -> None:
    exact, loose = {}, {}
    for row in rows:  # oldest first, so the latest scratch run wins
        if row["strategy"] == "scratch" and row["status"] == RunStatus.FINISHED and row["val_curve"]:
            exact[_baseline_key(row)] = row
            loose[_loose_key(row)] = row
    for row in rows:
        base = exact.get(_baseline_key(row)) or loose.get(_loose_key(row))
        row.update({k: None for k in TRANSFER})
        row["baseline"] = None
        if base is None or base is row or not row["val_curve"] or row["strategy"] == "scratch":
            continue
        metrics = transfer_metrics(row["val_curve"], base["val_curve"]).as_dict()
        row.update({k: metrics[k] for k in TRANSFER})
        row["baseline"] = base["run_id"]
        if client is not None:
            for k in TRANSFER:
                if math.isfinite(metrics[k]):
                    client.log_metric(row["run_id"], f"transfer_{k}", metrics[k])
            client.set_tag(row["run_id"], "transfer_baseline", base["run_id"])


def public(row: dict) -> dict:
    """A row without the bulky parts, for JSON and CSV."""
    return {k: v for k, v in row.items() if k not in ("params",)}
