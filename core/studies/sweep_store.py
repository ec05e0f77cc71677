"""What a sweep reads from and writes to the MLflow store: its parent run, finished cells, results."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tle.store.status import ERROR_TAG, PRUNED_TAG, RunStatus
from tle.store.stored_run import SPEC_KEY
from tle.store.tracking import Tracker, quiet_signals, tracked_run

__all__ = ["CELL", "PARENT_TAG", "ROLE", "CellRun", "described", "end_orphans", "finished_by_key", "parent_run",
           "quiet_signals", "read_runs", "record_failure"]

PARENT_TAG = "mlflow.parentRunId"
SWEEP_KEY = "tle.sweep.key"
ROLE = "tle.role"
CELL = "tle.sweep.cell"
RESULT_METRICS = ("test_acc", "best_val_acc", "test_loss", "test_f1_macro", "wall_seconds", "train_seconds",
                  "onnx_max_abs_diff", "trainable_params", "total_params", "seconds_evaluate")


@dataclass
class CellRun:
    """A cell's run as read back from the store."""

    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> str:
        return self.tags.get(ERROR_TAG, "")


@contextmanager
def parent_run(mlflow, experiment_id: str, name: str, key: str, tags: dict[str, str]) -> Iterator[tuple[Tracker, bool]]:
    """The sweep's parent run, reopened when this sweep ran before (same key), else new; yields it and whether it
    was reopened. Opened and closed by :func:`tle.store.tracking.tracked_run`: FINISHED, FAILED (any error, or
    :meth:`Tracker.end_as`) or KILLED (Ctrl-C, SIGTERM), and the cells still RUNNING when an error ends it (their
    workers were stopped) end the same way, each with ``tle.error``."""
    client = mlflow.MlflowClient()
    found = client.search_runs([experiment_id],
                               filter_string=f"tags.`{SWEEP_KEY}` = '{key}' and tags.`{ROLE}` = 'sweep'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found and ERROR_TAG in found[0].data.tags:  # how it ended last time
        client.delete_tag(found[0].info.run_id, ERROR_TAG)
    reopened = found[0].info.run_id if found else None
    with tracked_run(mlflow, name=name, tags=None if reopened else {**tags, SWEEP_KEY: key, ROLE: "sweep"},
                     run_id=reopened) as parent:
        try:
            yield parent, reopened is not None
        except BaseException as exc:
            status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
            with quiet_signals():
                end_orphans(client, experiment_id, parent.run_id, status)
            raise


def finished_by_key(client, experiment_id: str) -> dict[str, list[Any]]:
    """FINISHED runs of the experiment grouped by their spec key, newest first; a run a search's pruner stopped
    (``tle.pruned``) trained less than its spec says and is left out."""
    found: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get(SPEC_KEY)
            if key and PRUNED_TAG not in run.data.tags:
                found.setdefault(key, []).append(run)
        token = page.token
        if not token:
            return found


def read_runs(client, run_ids: list[str], experiment_id: str) -> dict[str, CellRun]:
    out: dict[str, CellRun] = {}
    ids = sorted(set(r for r in run_ids if r))
    for i in range(0, len(ids), 100):
        chunk = ", ".join(f"'{r}'" for r in ids[i:i + 100])
        for run in client.search_runs([experiment_id], filter_string=f"attributes.run_id IN ({chunk})",
                                      max_results=1000):
            out[run.info.run_id] = CellRun(run.info.run_id, run.info.status, dict(run.data.metrics),
                                           dict(run.data.params), dict(run.data.tags))
    return out


def end_orphans(client, experiment_id: str, parent_id: str, status: str) -> int:
    """End child runs still RUNNING (their worker was killed) with ``status``; returns how many."""
    running = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                                 "attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        client.set_tag(run.info.run_id, ERROR_TAG, "interrupted: the sweep stopped its worker")
        client.set_terminated(run.info.run_id, status=status)
    return len(running)


def end_left_run(client, experiment_id: str, parent_id: str, cell: int, status: str, error: str) -> str | None:
    """The run a worker that died (killed, out of memory) left RUNNING for ``cell``, ended ``status`` with ``error``
    as ``tle.error``; its id, or None when the worker died before it started one."""
    left = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                              f"tags.`{CELL}` = '{cell}' and attributes.status = 'RUNNING'",
                              order_by=["attributes.start_time DESC"], max_results=10)
    for run in left:
        client.set_tag(run.info.run_id, ERROR_TAG, error[:5000])
        client.set_terminated(run.info.run_id, status=status)
    return left[0].info.run_id if left else None


def described(spec: dict | None) -> dict[str, str]:
    """The tags that say what a cell was (``spec``, as a task carries it), as a run's tags say it."""
    if not spec:
        return {}
    dataset = spec.get("dataset")
    described = {"backend": spec.get("backend"), "model": spec.get("model"), "strategy": spec.get("strategy"),
                 "weights": spec.get("weights"),
                 "dataset": dataset.get("source") if isinstance(dataset, dict) else dataset}
    return {k: str(v) for k, v in described.items() if v is not None}


def record_failure(mlflow, parent_id: str, name: str, tags: dict[str, str], error: str,
                   status: str = RunStatus.FAILED) -> str:
    """A child run of the sweep for a cell that failed (or was killed, ``status``) before its run existed (e.g. a
    data error), ended with ``error`` as ``tle.error``; ``tags`` say what the cell was (:func:`described`), so that
    it reads like a run in the UI and in compare."""
    with tracked_run(mlflow, name=name, tags=tags, parent_id=parent_id) as run:
        run.end_as(status, error)
        return run.run_id
