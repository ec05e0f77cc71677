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

from tle.store.status import RunStatus


def export_finished_run(run_id: str, tracking_uri: str | None = None, load_data=None) -> float:
    """Export run ``run_id``'s model, check parity, log it to the run; returns the max |diff|."""
    from tle.run.outputs import export_and_check
    from tle.run.rebuild import rebuild
    from tle.store.tracking import Tracker, configure

    mlflow = configure(tracking_uri)
    workdir = Path(tempfile.mkdtemp(prefix="tle-export-"))
    try:
        stored = rebuild(run_id, mlflow, workdir, load_data, doing="export")
        spec, backend, data, model = stored.spec, stored.backend, stored.data, stored.model
        run = mlflow.start_run(run_id=run_id)
        try:
            return export_and_check(spec, backend.hook, model, data, Tracker(mlflow, run), workdir)
        except BaseException as exc:
            mlflow.set_tag("tle.export_error", f"{type(exc).__name__}: {exc}"[:5000])
            raise
        finally:
            mlflow.end_run(RunStatus.FINISHED)  # the training it records did finish
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def export_in_worker(run_id: str, backend: str, tracking_uri: str, timeout: float = 1800.0) -> float:
    """:func:`export_finished_run` in a worker process of ``backend`` (``python -m tle.run.worker``, as a sweep's
    ``export.onnx: best`` runs it), so the framework is imported there and TensorFlow never meets torch's exporter
    in one process. Returns the max |diff| of the parity check; a UserError with the worker's reason otherwise."""
    from tle.workers.task import in_worker

    outcome = in_worker(backend, "export", run_id, tracking_uri, {}, timeout=timeout,
                        failed=f"cannot build run {run_id}'s ONNX model from its weights", fix="run it again with --export")
    return float(outcome["onnx_max_abs_diff"])
