"""What a run leaves behind besides its metrics: its weights, the backend's other exports, the ONNX model (after
the parity check) and what the backend observed beside the logits.

``tle run``, ``tle export`` of a finished run, ``tle convert`` and ``tle fuse`` all write them here, so that every
run holds them under the same names (:mod:`tle.store.stored_run`) and every ONNX model passed the same check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tle.contract.records import ExportMetadata
from tle.store.stored_run import EXPORT_ARTIFACT, WEIGHTS_ARTIFACT


@dataclass(frozen=True)
class Output:
    """Where a trained model's outputs go: the backend's hooks and its native model, the run that logs them, a
    folder to write them in first, and where to say that the ONNX parity held (None: say nothing)."""

    hook: Any  # the backend's hook relay (tle.backends.manager.Backend.hook)
    model: Any  # the backend's native model
    run: Any  # the open run (tle.store.tracking.Tracker)
    workdir: Path
    console: Any = None  # rich Console


class ParityError(RuntimeError):
    """The ONNX model disagrees with the framework beyond the tolerance."""


def save_weights(out: Output) -> None:
    """The model's native weights as the run's ``weights/`` artifact (what ``--weights runs:/ID`` reads)."""
    folder = out.workdir / WEIGHTS_ARTIFACT
    folder.mkdir(parents=True)
    out.hook.save_weights(model=out.model, directory=folder)
    out.run.artifact(folder, WEIGHTS_ARTIFACT)


def export_extras(out: Output) -> None:
    """Other exported forms a backend offers (a spiking net's NIR graph), logged under ``export/``."""
    folder = out.workdir / EXPORT_ARTIFACT
    folder.mkdir(parents=True, exist_ok=True)
    if out.hook.export_extras(model=out.model, directory=folder) and any(folder.iterdir()):
        out.run.artifact(folder, EXPORT_ARTIFACT)


def export_onnx(out: Output, sample: np.ndarray, metadata: ExportMetadata, export,
                registered_model: str | None = None, differs: str = "ONNX output differs") -> float:
    """Export ``out.model`` to ONNX, check its logits on ``sample`` against the framework's and log it to
    ``out.run``.

    ``export``: the spec's :class:`tle.contract.spec.ExportSpec` (tolerances). The difference is logged either way
    (``onnx_max_abs_diff``); beyond the tolerances a :class:`ParityError` beginning with ``differs`` is raised
    and no model is logged. Returns the max |difference|.
    """
    from tle.interop.serving import check_parity, open_model

    hook, model, run, console = out.hook, out.model, out.run, out.console
    path = Path(hook.export_onnx(model=model, path=out.workdir / "model.onnx", sample=sample, metadata=metadata))
    reference = hook.evaluate(model=model, images=sample, labels=None, batch_size=len(sample)).logits
    parity = check_parity(open_model(path), sample, reference, export.atol, export.rtol)
    run.metrics({"onnx_max_abs_diff": parity.max_abs_diff})
    run.tags({"onnx.providers": ",".join(parity.providers)})
    if not parity.ok:
        raise ParityError(f"{differs} by {parity.max_abs_diff:.3g} (atol {export.atol}, rtol {export.rtol})")
    run.onnx_model(path, sample, reference, registered_model)
    if console is not None:
        console.print(f"ONNX parity ok: max |diff| {parity.max_abs_diff:.2e} on {len(sample)} images "
                      f"({', '.join(parity.providers)})")
    return parity.max_abs_diff


def export_and_check(spec, data, out: Output) -> float:
    """The ONNX model of a run of ``spec`` on ``data``, checked on its first test images (train images when the
    test split is empty) and logged to ``out.run``; returns the max |difference| (see :func:`export_onnx`)."""
    h, w, c = data.input_shape
    sample = np.ascontiguousarray(data.x_test[: spec.export.parity_batch])
    if len(sample) == 0:
        sample = np.ascontiguousarray(data.x_train[: spec.export.parity_batch])
    meta = ExportMetadata(class_names=list(data.class_names), image_size=(h, w), channels=c,
                          backend=spec.backend, model=spec.model, extra={"run_id": out.run.run_id})
    return export_onnx(out, sample, meta, spec.export, spec.tracking.registered_model,
                       differs=f"ONNX output differs from {spec.backend}")


def log_extras(run, extras: dict | None, prefix: str, artifact: str | None = None) -> None:
    """What a backend observed beside the logits: numbers as ``{prefix}_NAME`` metrics, the rest as JSON
    (``artifact``, default ``{prefix}_extras.json``)."""
    if not extras:
        return
    numbers = {f"{prefix}_{k}": float(v) for k, v in extras.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run.metrics(numbers)
    rest = {k: v for k, v in extras.items() if f"{prefix}_{k}" not in numbers}
    if rest:
        run.json(rest, artifact or f"{prefix}_extras.json")
