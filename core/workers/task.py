"""One task (an export, a portable file, a conversion) in a fresh worker process of one backend.

The worker is the sweep's (``python -m tle.run.worker BACKEND``): the
framework is imported there, never in the caller, so a Keras process can ask
torch for something and TensorFlow never meets torch's exporter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tle.errors import UserError
from tle.store.status import RunStatus
from tle.workers.local import LocalPool
from tle.workers.schedule import Task


@dataclass(frozen=True)
class WorkerRequest:
    """One task for a fresh worker of ``backend``: ``kind`` (export, portable, convert) on run ``run_id`` in the
    store at ``tracking_uri``, with the task's ``options``."""

    backend: str
    kind: str
    run_id: str
    tracking_uri: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OnFailure:
    """What a failed task raises: the worker's UserError as it was; any other failure as
    ``UserError("{failed}: {its error}", fix)``, or as the exception ``otherwise(outcome)`` gives."""

    failed: str = ""
    fix: str = ""
    otherwise: Callable[[dict[str, Any]], Exception] | None = None


def in_worker(request: WorkerRequest, on_failure: OnFailure = OnFailure(), timeout: float = 1800.0) -> dict[str, Any]:
    """One task in a fresh worker process of ``request.backend``; the outcome of a task that finished.

    A task that failed raises as ``on_failure`` says. A worker ended KILLED (Ctrl-C, SIGTERM) raises
    KeyboardInterrupt; the caller was interrupted too.
    """
    outcome = _outcome(request, timeout)
    if outcome.get("status") == RunStatus.FINISHED:
        return outcome
    error = outcome.get("error", "")
    if outcome.get("user_error"):
        raise UserError(error)
    if on_failure.otherwise is not None:
        raise on_failure.otherwise(outcome)
    raise UserError(f"{on_failure.failed}: {error}", on_failure.fix)


def _outcome(request: WorkerRequest, timeout: float) -> dict[str, Any]:
    backend, run_id = request.backend, request.run_id
    pool = LocalPool(1)
    worker = pool.start(backend)
    try:
        pool.submit(worker, Task(0, backend, {"backend": backend, "tracking": {"uri": request.tracking_uri}},
                                 kind=request.kind, run_id=run_id, options=dict(request.options)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, outcome in pool.wait(timeout=1.0):
                if outcome.get("status") == RunStatus.KILLED:
                    raise KeyboardInterrupt
                return outcome
        raise UserError(f"the {backend} worker took over {timeout:.0f}s for run {run_id}", "try again")
    except KeyboardInterrupt:
        pool.interrupt({worker: None}, grace=10.0)
        raise
    finally:
        pool.stop(worker)
