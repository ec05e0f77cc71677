"""A warm sweep worker: one backend per process, many cells.

The framework, MLflow's store connection and the data of earlier cells stay
loaded between cells, so a cell pays for its training, not for imports.
TensorFlow and torch's exporter never share a process because a worker only
ever runs cells of the backend it was started for.

Protocol (``python -m tle.run.worker BACKEND``): one JSON task per line on
stdin, one JSON outcome per line on the original stdout; everything else the
process prints goes to stderr. EOF on stdin ends the worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from typing import Any

from tle.errors import UserError
from tle.store.status import RunStatus
from tle.store.tracking import deferred_signals

DATA_CACHE = 4  # datasets kept per worker (a sweep's cells usually share one or two)
REUSE_MODELS = "TLE_REUSE_MODELS"  # set while a cell runs (see execute)


class DataCache:
    """``load_dataset`` with the last few results kept: the same source and seed decode once per worker."""

    def __init__(self, size: int = DATA_CACHE):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def __call__(self, spec, seed, extra_sources=None, progress=None):
        from tle.data import load_dataset

        key = json.dumps([spec.model_dump(mode="json"), seed, sorted(extra_sources or {})], sort_keys=True)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        data = load_dataset(spec, seed=seed, extra_sources=extra_sources, progress=progress)
        self._items[key] = data
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return data


def handle(task: dict[str, Any], cache: DataCache) -> dict[str, Any]:
    """One message: run a cell, export a finished run's model (a sweep's ``export.onnx: best``), convert weights or
    extract a candidate's features (``tle rank``)."""
    if task.get("kind") == "export":
        return export(task, cache)
    if task.get("kind") in ("portable", "convert"):
        from tle.run.convert import handle_task

        return handle_task(task, cache)
    if task.get("kind") == "features":  # tle rank: a candidate's frozen features
        from tle.run.features import handle_task as features

        return features(task, cache)
    return execute(task, cache)


def export(task: dict[str, Any], cache: DataCache) -> dict[str, Any]:
    from tle.run.export import export_finished_run

    outcome: dict[str, Any] = {"cell": task["cell"], "run_id": task["run_id"]}
    started = time.perf_counter()
    try:
        outcome.update(status=RunStatus.FINISHED, onnx_max_abs_diff=export_finished_run(
            task["run_id"], task["spec"]["tracking"].get("uri"), load_data=cache))
    except KeyboardInterrupt:
        raise _Interrupted({**outcome, "status": RunStatus.KILLED, "error": "interrupted"}) from None
    except Exception as exc:
        outcome.update(status=RunStatus.FAILED, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    outcome["seconds"] = time.perf_counter() - started
    return outcome


def execute(task: dict[str, Any], cache: DataCache) -> dict[str, Any]:
    """Run one cell; the outcome says how it ended. Ctrl-C/SIGTERM propagate after the run is ended KILLED.

    A search's trial (``options.trial``, a :class:`tle.run.trial.TrialRef`) reports its metric to its Optuna study
    every epoch and stops when the study's pruner says so; the outcome adds the trial's value and whether it was
    pruned. ``options.export`` overrides the spec's ``export.onnx`` (a search's trials export nothing)."""
    from rich.console import Console

    from tle.run.runner import RunOptions, run_experiment
    from tle.contract.spec import ExperimentSpec

    started = time.perf_counter()
    outcome: dict[str, Any] = {"cell": task["cell"], "pid": os.getpid()}
    options = task.get("options") or {}
    reporter = None
    try:
        spec = ExperimentSpec.model_validate(task["spec"])
        if options.get("trial"):
            from tle.run.trial import Reporter, TrialRef

            reporter = Reporter(TrialRef.of(options["trial"]))
        # "best" means the sweep exports the best cells afterwards.
        tags = {**(task.get("tags") or {}), "tle.worker": f"{socket.gethostname()}:{os.getpid()}"}
        # Cells run one after another and none keeps its model: a backend may hand this cell the model it
        # built for an earlier cell of the same architecture, reset to a new build's state (REUSE_MODELS;
        # TLE_REUSE_MODELS=0 in the worker's environment turns it off).
        reuse = os.environ.get(REUSE_MODELS) != "0"
        if reuse:
            os.environ[REUSE_MODELS] = "1"
        try:
            result = run_experiment(spec, RunOptions(console=Console(stderr=True), quiet=True, tags=tags, load_data=cache,
                                                     export=options.get("export", spec.export.onnx is True),
                                                     report=reporter))
        finally:
            if reuse:
                os.environ.pop(REUSE_MODELS, None)
    except KeyboardInterrupt as exc:
        outcome.update(status=RunStatus.KILLED, run_id=getattr(exc, "tle_run_id", None), error="interrupted")
        raise _Interrupted(outcome) from None
    except UserError as exc:
        outcome.update(status=RunStatus.FAILED, run_id=getattr(exc, "tle_run_id", None), error=str(exc), user_error=True)
    except Exception as exc:  # a cell's failure is recorded and the sweep goes on
        first = str(exc).splitlines()[0] if str(exc) else ""
        outcome.update(status=RunStatus.FAILED, run_id=getattr(exc, "tle_run_id", None),
                       error=f"{type(exc).__name__}: {first}"[:1000])
    else:
        assert result is not None  # only a node other than 0 of a distributed run returns None, never a cell
        compute = sum(r.metrics.get("epoch_seconds", 0.0) for r in result.history.records)
        outcome.update(status=RunStatus.FINISHED, run_id=result.run_id, timings=result.timings,
                       compute_seconds=compute + result.timings.get("evaluate", 0.0),
                       run_seconds=result.wall_seconds)
    if reporter is not None:
        outcome.update(reporter.outcome())
    outcome["seconds"] = time.perf_counter() - started
    return outcome


class _Interrupted(Exception):
    def __init__(self, outcome: dict[str, Any]):
        super().__init__("interrupted")
        self.outcome = outcome


def warm_up(backend: str) -> None:
    """Import the framework before the first cell, so no cell's time includes it."""
    from tle.backends.manager import load_backend

    try:
        load_backend(backend).hook.resolve_device(device="auto")
    except Exception:  # the first cell reports the same problem as its own failure
        pass


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    backend = argv[0] if argv else "?"
    # The protocol owns the real stdout; stray prints from frameworks must not corrupt it.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigterm)
    cache = DataCache()
    try:
        warm_up(backend)
        for line in sys.stdin:
            if not line.strip():
                continue
            task = json.loads(line)
            if task["spec"].get("backend") != backend:
                outcome = {"cell": task["cell"], "status": RunStatus.FAILED,
                           "error": f"worker for {backend} got another backend"}
            else:
                try:
                    outcome = handle(task, cache)
                except _Interrupted as stop:
                    # Ignore further signals while reporting: the run is already ended KILLED.
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    channel.write(json.dumps(stop.outcome) + "\n")
                    return 130
            with deferred_signals():  # a cell that ended is reported whole, whatever signal comes meanwhile
                channel.write(json.dumps(outcome) + "\n")
    except KeyboardInterrupt:  # stopped while idle (or warming up): no run is open, nothing to report
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
