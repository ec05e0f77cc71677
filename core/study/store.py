"""What a sweep reads from and writes to the MLflow store: its parent run, finished cells, results."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tle.stored_run import SPEC_KEY
from tle.status import ERROR_TAG, RunStatus

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


def open_parent(client, experiment_id: str, name: str, key: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The sweep's parent run: reopened when this sweep ran before (same key), else new. Returns (id, reopened)."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_KEY}` = '{key}' and tags.`{ROLE}` = 'sweep'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.RUNNING)
        if ERROR_TAG in found[0].data.tags:  # how it ended last time
            client.delete_tag(run_id, ERROR_TAG)
        return run_id, True
    run = client.create_run(experiment_id, run_name=name, tags={**tags, SWEEP_KEY: key, ROLE: "sweep"})
    return run.info.run_id, False


def finished_by_key(client, experiment_id: str) -> dict[str, list[Any]]:
    """FINISHED runs of the experiment grouped by their spec key, newest first."""
    found: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get(SPEC_KEY)
            if key:
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


def end_sweep(client, experiment_id: str, parent_id: str, exc: BaseException) -> None:
    """End a sweep that ``exc`` stopped: Ctrl-C/SIGTERM -> KILLED, anything else -> FAILED; its cells still
    RUNNING the same, each with ``tle.error``."""
    killed = isinstance(exc, KeyboardInterrupt)
    status = RunStatus.KILLED if killed else RunStatus.FAILED
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = "interrupted" if killed else f"{type(exc).__name__}: {first}".rstrip(": ")
    end_orphans(client, experiment_id, parent_id, status)
    client.set_tag(parent_id, ERROR_TAG, reason[:5000])
    client.set_terminated(parent_id, status=status)


@contextmanager
def quiet_signals():
    """Hold off Ctrl-C and SIGTERM while a sweep writes how it ended (a second signal would leave runs RUNNING)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def record_failure(client, experiment_id: str, name: str, tags: dict[str, str], error: str,
                   spec: dict | None = None) -> str:
    """A FAILED child run for a cell that failed before its run existed (e.g. a data error).

    Tagged with what the cell was (``spec``), as a run is, so that it reads like one in the UI and in compare.
    """
    described = {}
    if spec:
        dataset = spec.get("dataset")
        described = {"backend": spec.get("backend"), "model": spec.get("model"), "strategy": spec.get("strategy"),
                     "weights": spec.get("weights"),
                     "dataset": dataset.get("source") if isinstance(dataset, dict) else dataset}
    run = client.create_run(experiment_id, run_name=name, tags={
        **{k: str(v) for k, v in described.items() if v is not None}, **tags, ERROR_TAG: error[:5000]})
    client.set_terminated(run.info.run_id, status=RunStatus.FAILED)
    return run.info.run_id
