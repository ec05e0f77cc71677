"""Exporting a finished run's model to ONNX afterwards, into the same run.

A sweep with ``export.onnx: best`` trains every cell without exporting and then
exports only each group's best cell; this rebuilds that cell's model from its
``weights/`` artifact (the head is kept: the class names match) and runs the
same export and parity check as ``tle run``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tle.run.outputs import Output, export_and_check
from tle.run.rebuild import rebuild
from tle.store.status import RunStatus
from tle.store.stored_run import StoredRun
from tle.store.tracking import configure, tracked_run
from tle.workers.task import OnFailure, WorkerRequest, in_worker


def export_finished_run(run_id: str, tracking_uri: str | None = None, load_data=None) -> float:
    """Export run ``run_id``'s model, check parity, log it to the run; returns the max |diff|. The run stays
    FINISHED (its training did finish); an export that fails is its ``tle.export_error`` tag."""
    mlflow = configure(tracking_uri)
    workdir = Path(tempfile.mkdtemp(prefix="tle-export-"))
    try:
        with StoredRun(run_id, workdir=workdir / "stored", doing="export") as stored:
            stored.require(RunStatus.FINISHED, fix=f"resume it (tle run --resume {run_id}) or run it again")
            built = rebuild(stored, workdir, load_data)
        with tracked_run(mlflow, run_id=run_id, adding="export") as run:
            return export_and_check(built.spec, built.data, Output(built.backend.hook, built.model, run, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def export_in_worker(run_id: str, backend: str, tracking_uri: str, timeout: float = 1800.0) -> float:
    """:func:`export_finished_run` in a worker process of ``backend`` (``python -m tle.run.worker``, as a sweep's
    ``export.onnx: best`` runs it), so the framework is imported there and TensorFlow never meets torch's exporter
    in one process. Returns the max |diff| of the parity check; a UserError with the worker's reason otherwise."""
    outcome = in_worker(WorkerRequest(backend, "export", run_id, tracking_uri),
                        OnFailure(f"cannot build run {run_id}'s ONNX model from its weights", "run it again with --export"),
                        timeout=timeout)
    return float(outcome["onnx_max_abs_diff"])
