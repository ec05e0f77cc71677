"""One task (an export, a portable file, a conversion) in a fresh worker process of one backend.

The worker is the sweep's (``python -m tle.study.worker BACKEND``): the
framework is imported there, never in the caller, so a Keras process can ask
torch for something and TensorFlow never meets torch's exporter.
"""

from __future__ import annotations

import time
from typing import Any

from tle.errors import UserError
from tle.status import RunStatus


def in_worker(backend: str, kind: str, run_id: str, tracking_uri: str, options: dict[str, Any],
              timeout: float = 1800.0) -> dict[str, Any]:
    """One task in a fresh worker process of ``backend``: its outcome (``status`` FINISHED, or FAILED with ``error``).
    A worker ended KILLED (Ctrl-C, SIGTERM) raises KeyboardInterrupt here; the caller was interrupted too."""
    from tle.study.local import LocalPool
    from tle.study.schedule import Task

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
