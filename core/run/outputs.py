"""What a run leaves behind besides its metrics: its weights, the backend's other exports, the ONNX model (after
the parity check) and what the backend observed beside the logits.

``tle run``, ``tle export`` of a finished run, ``tle convert`` and ``tle fuse`` all write them here, so that every
run holds them under the same names (:mod:`tle.store.stored_run`) and every ONNX model passed the same check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle.contract.records import ExportMetadata
from tle.store.stored_run import EXPORT_ARTIFACT, WEIGHTS_ARTIFACT


class ParityError(RuntimeError):
    """The ONNX model disagrees with the framework beyond the tolerance."""


def save_weights(hook, model, run, workdir: Path) -> None:
    """The model's native weights as the run's ``weights/`` artifact (what ``--weights runs:/ID`` reads)."""
    folder = workdir / WEIGHTS_ARTIFACT
    folder.mkdir(parents=True)
    hook.save_weights(model=model, directory=folder)
    run.artifact(folder, WEIGHTS_ARTIFACT)


def export_extras(hook, model, run, workdir: Path) -> None:
    """Other exported forms a backend offers (a spiking net's NIR graph), logged under ``export/``."""
    folder = workdir / EXPORT_ARTIFACT
    folder.mkdir(parents=True, exist_ok=True)
    if hook.export_extras(model=model, directory=folder) and any(folder.iterdir()):
        run.artifact(folder, EXPORT_ARTIFACT)


def export_onnx(hook, model, run, workdir: Path, sample: np.ndarray, metadata: ExportMetadata, export,
                registered_model: str | None = None, differs: str = "ONNX output differs", console=None) -> float:
    """Export ``model`` to ONNX, check its logits on ``sample`` against the framework's and log it to ``run``.

    ``export``: the spec's :class:`tle.contract.spec.ExportSpec` (tolerances). The difference is logged either way
    (``onnx_max_abs_diff``); beyond the tolerances a :class:`ParityError` beginning with ``differs`` is raised
    and no model is logged. ``console``: where to say that parity held. Returns the max |difference|.
    """
    from tle.interop.serving import check_parity, open_model

    path = Path(hook.export_onnx(model=model, path=workdir / "model.onnx", sample=sample, metadata=metadata))
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


def export_and_check(spec, hook, model, data, run, workdir: Path, console=None, quiet: bool = True) -> float:
    """The ONNX model of a run of ``spec`` on ``data``, checked on its first test images (train images when the
    test split is empty) and logged to ``run``; returns the max |difference| (see :func:`export_onnx`)."""
    h, w, c = data.input_shape
    sample = np.ascontiguousarray(data.x_test[: spec.export.parity_batch])
    if len(sample) == 0:
        sample = np.ascontiguousarray(data.x_train[: spec.export.parity_batch])
    meta = ExportMetadata(class_names=list(data.class_names), image_size=(h, w), channels=c,
                          backend=spec.backend, model=spec.model, extra={"run_id": run.run_id})
    return export_onnx(hook, model, run, workdir, sample, meta, spec.export, spec.tracking.registered_model,
                       differs=f"ONNX output differs from {spec.backend}", console=None if quiet else console)


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
