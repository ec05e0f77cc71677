"""One task (an export, a portable file, a conversion) in a fresh worker process of one backend.

The worker is the sweep's (``python -m tle.run.worker BACKEND``): the
framework is imported there, never in the caller, so a Keras process can ask
torch for something and TensorFlow never meets torch's exporter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tle.errors import UserError
from tle.store.status import RunStatus


def in_worker(backend: str, kind: str, run_id: str, tracking_uri: str, options: dict[str, Any], *, failed: str = "",
              fix: str = "", timeout: float = 1800.0,
              otherwise: Callable[[dict[str, Any]], Exception] | None = None) -> dict[str, Any]:
    """One task in a fresh worker process of ``backend``; the outcome of a task that finished.

    A task that failed raises here: the worker's UserError as it was (already 'what; what to do'), any other
    failure as ``UserError("{failed}: {its error}", fix)``, or as the exception ``otherwise(outcome)`` gives.
    A worker ended KILLED (Ctrl-C, SIGTERM) raises KeyboardInterrupt; the caller was interrupted too.
    """
    outcome = _outcome(backend, kind, run_id, tracking_uri, options, timeout)
    if outcome.get("status") == RunStatus.FINISHED:
        return outcome
    error = outcome.get("error", "")
    if outcome.get("user_error"):
        raise UserError(error)
    if otherwise is not None:
        raise otherwise(outcome)
    raise UserError(f"{failed}: {error}", fix)


def _outcome(backend: str, kind: str, run_id: str, tracking_uri: str, options: dict[str, Any],
             timeout: float) -> dict[str, Any]:
    from tle.workers.local import LocalPool
    from tle.workers.schedule import Task

    pool = LocalPool(1)
    worker = pool.start(backend)
    try:
        pool.submit(worker, Task(0, backend, {"backend": backend, "tracking": {"uri": tracking_uri}},
                                 kind=kind, run_id=run_id, options=options))
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
