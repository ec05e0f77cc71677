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

import yaml
from rich.console import Console

from tle.errors import UserError
from tle.plugins import load_backend
from tle.spec import build_spec


def export_finished_run(run_id: str, tracking_uri: str | None = None, load_data=None) -> float:
    """Export run ``run_id``'s model, check parity, log it to the run; returns the max |diff|."""
    from tle.data import load_dataset
    from tle.runner import export_and_check
    from tle.tracking import Tracker, configure
    from tle.weights import resolve_weights

    mlflow = configure(tracking_uri)
    try:
        spec = build_spec(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/spec.yaml")))
    except UserError:
        raise
    except Exception:
        raise UserError(f"run {run_id} has no spec.yaml in {mlflow.get_tracking_uri()}",
                        "export runs made by tle run or tle sweep") from None
    backend = load_backend(spec.backend)
    data = (load_data or load_dataset)(spec.dataset, seed=spec.train.seed, extra_sources=backend.dataset_sources())
    workdir = Path(tempfile.mkdtemp(prefix="tle-export-"))
    try:
        weights = resolve_weights(f"runs:/{run_id}", spec.backend, workdir)
        model = backend.hook.load_backbone(model=spec.model, num_classes=data.num_classes,
                                           class_names=list(data.class_names), input_shape=data.input_shape,
                                           head=spec.head, weights=weights, device=spec.train.device,
                                           precision=spec.train.precision, seed=spec.train.seed)
        run = mlflow.start_run(run_id=run_id)
        try:
            return export_and_check(spec, backend.hook, model, data, Tracker(mlflow, run), workdir,
                                    Console(stderr=True), quiet=True)
        except BaseException as exc:
            mlflow.set_tag("tle.export_error", f"{type(exc).__name__}: {exc}"[:5000])
            raise
        finally:
            mlflow.end_run("FINISHED")  # the training it records did finish
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def export_in_worker(run_id: str, backend: str, tracking_uri: str, timeout: float = 1800.0) -> float:
    """:func:`export_finished_run` in a worker process of ``backend`` (``python -m tle.study.worker``, as a sweep's
    ``export.onnx: best`` runs it), so the framework is imported there and TensorFlow never meets torch's exporter
    in one process. Returns the max |diff| of the parity check; a UserError with the worker's reason otherwise."""
    import time

    from tle.study.local import LocalPool
    from tle.study.schedule import Task

    pool = LocalPool(1)
    worker = pool.start(backend)
    try:
        pool.submit(worker, Task(0, backend, {"backend": backend, "tracking": {"uri": tracking_uri}},
                                 kind="export", run_id=run_id))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, outcome in pool.wait(timeout=1.0):
                if outcome.get("status") == "FINISHED":
                    return float(outcome["onnx_max_abs_diff"])
                if outcome.get("status") == "KILLED":
                    raise KeyboardInterrupt
                raise UserError(f"cannot build run {run_id}'s ONNX model from its weights: {outcome.get('error', '')}",
                                "run it again with --export")
        raise UserError(f"building run {run_id}'s ONNX model took over {timeout:.0f}s", "run it again with --export")
    except KeyboardInterrupt:
        pool.interrupt({worker: None}, grace=10.0)
        raise
    finally:
        pool.stop(worker)
