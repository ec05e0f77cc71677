"""Weights across frameworks: a run's portable weights, and ``tle convert RUN --to BACKEND``.

Each framework works in a worker process of its own (``python -m
tle.run.worker BACKEND``): TensorFlow and torch's exporter must never share
a process. The source backend rebuilds the run's model and writes its
portable file (:mod:`tle.contract.portable`) with its logits on the run's test images;
the target backend builds the same architecture from that file, checks its
own logits against them, and stores the result as a new run of its own (native
weights, ONNX model, parity) tagged with the run it came from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tle.backends.manager import load_backend
from tle.contract.portable import PortableWeights, read, write
from tle.contract.records import ResolvedWeights
from tle.contract.spec import HeadSpec
from tle.errors import UserError
from tle.run import weights
from tle.run.assembly import Blueprint, assemble, build
from tle.run.outputs import Output, export_and_check, save_weights
from tle.run.rebuild import rebuild
from tle.run.runner import default_run_name
from tle.store.stored_run import FUSED_FROM, StoredRun, record_inputs, run_tags
from tle.store.tracking import configure, environment_tags, tracked_run
from tle.workers.schedule import outcome_of
from tle.workers.task import OnFailure, WorkerRequest, in_worker

TOLERANCE = 1e-4  # max |logit difference| a conversion may show; the ONNX parity check's atol
CONVERTED_FROM = "tle.converted_from"
CONVERTED_FROM_BACKEND = "tle.converted_from_backend"
DIFF_METRIC = "convert_max_abs_diff"


class ConversionMismatch(RuntimeError):
    """The converted model's logits differ from the source's beyond the tolerance (exit 1: a bug, not a user's)."""


# -- in a worker of one backend -------------------------------------------------


def handle_task(task: dict[str, Any], cache) -> dict[str, Any]:
    uri = task["spec"]["tracking"].get("uri")

    def work() -> dict[str, Any]:
        if task["kind"] == "portable" and task.get("run_id"):
            return write_portable(task["run_id"], uri, Path(task["options"]["out"]),
                                  logits=task["options"].get("logits", False), load_data=cache)
        if task["kind"] == "portable":
            return write_portable_of_weights(task["spec"]["backend"], task["options"])
        return convert_here(task["run_id"], task["options"], uri, load_data=cache)

    return outcome_of(work, {"cell": task["cell"], "run_id": task.get("run_id")},
                      lambda exc: {"mismatch": isinstance(exc, ConversionMismatch),
                                   "new_run_id": getattr(exc, "tle_run_id", None)})


def write_portable(run_id: str, tracking_uri: str | None, out: Path, logits: bool = False,
                   load_data=None) -> dict[str, Any]:
    """The run's weights as a portable file in ``out`` (and its test logits when asked): in the run's backend."""
    configure(tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stored = rebuild(StoredRun(run_id, workdir=out / "stored", doing="convert"), out, load_data)
    arrays = _portable_arrays(stored.backend, stored.model, stored.spec.model)
    path = write(out / f"{run_id}.tle.npz", PortableWeights(
        model=stored.spec.model, arrays=arrays, head=stored.spec.head.kind,
        class_names=tuple(stored.data.class_names), backend=stored.spec.backend))
    result: dict[str, Any] = {"path": str(path), "model": stored.spec.model, "source_backend": stored.spec.backend,
                              "export_seconds": time.perf_counter() - started}
    if logits:
        evaluation = stored.backend.hook.evaluate(model=stored.model, images=stored.data.x_test, labels=None,
                                                  batch_size=stored.spec.train.batch_size)
        np.save(out / "source_logits.npy", np.asarray(evaluation.logits, dtype=np.float32))
        result["logits"] = str(out / "source_logits.npy")
    return result


def _portable_arrays(backend, model, name: str):
    arrays = backend.hook.portable_weights(model=model)
    if arrays is None:
        raise UserError(f"backend {backend.name!r} cannot give the weights of {name} to another framework",
                        f"use a run of the same backend ({backend.name})")
    return arrays


def write_portable_of_weights(backend_name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Weights this backend reads natively (``imagenet`` from its hub cache, a file of its own format) as a portable
    file, for a model of ``options["model"]`` with the asking run's head and input shape: in this backend."""
    backend = load_backend(backend_name)
    backend.model(options["model"])
    text = options["weights"]
    weights = ResolvedWeights(kind="imagenet", source=text) if text == "imagenet" else ResolvedWeights(
        kind="file", source=options.get("source", text), path=Path(text))
    # No run asks: placeholder classes (the head is not what the asking backend takes from it), the CPU, seed 0.
    names = tuple(str(i) for i in range(int(options["num_classes"])))
    model = build(backend.hook, Blueprint(options["model"], names, tuple(options["input_shape"]),
                                          HeadSpec.model_validate(options["head"])), weights)
    arrays = _portable_arrays(backend, model, options["model"])
    out = Path(options["out"])
    out.mkdir(parents=True, exist_ok=True)
    path = write(out / f"{options['model']}-{'imagenet' if text == 'imagenet' else Path(text).stem}.tle.npz",
                 PortableWeights(model=options["model"], arrays=arrays, head=options["head"].get("kind", "dense"),
                                 class_names=None, backend=backend_name, extra={"from": text}))
    return {"path": str(path)}


def convert_here(run_id: str, options: dict[str, Any], tracking_uri: str | None, load_data=None) -> dict[str, Any]:
    """In the target backend: build the model from the portable file, check logits, store it as a new run."""
    mlflow = configure(tracking_uri)
    portable = read(options["path"])
    workdir = Path(tempfile.mkdtemp(prefix="tle-convert-"))
    try:
        source = StoredRun(run_id, workdir=workdir / "stored", doing="convert")
        source_spec = source.spec()
        spec = source_spec.model_copy(update={"backend": options["to"], "weights": f"runs:/{run_id}"})
        backend = load_backend(spec.backend)
        backend.model(spec.model)
        data = source.data(load_data, backend=backend)  # under the run's classes: a fused run's too
        started = time.perf_counter()
        model = assemble(backend.hook, spec, data, ResolvedWeights(
            kind="file", source=f"runs:/{run_id}", path=Path(options["path"]), class_names=portable.class_names))
        import_seconds = time.perf_counter() - started
        evaluation = backend.hook.evaluate(model=model, images=data.x_test, labels=data.y_test,
                                           batch_size=spec.train.batch_size)
        reference = np.load(options["logits"])
        ours = np.asarray(evaluation.logits, dtype=np.float32)
        diff = float(np.max(np.abs(ours - reference))) if ours.shape == reference.shape else float("inf")
        accuracy = float(np.mean(np.argmax(ours, axis=1) == data.y_test)) if len(ours) else float("nan")

        # A fused run's conversion holds the fused classes over the first parent's data, as the fused run does.
        lineage = {FUSED_FROM: ",".join(source.parents)} if source.parents else {}
        tags = run_tags(spec, backend, spec.strategy, extra={CONVERTED_FROM: run_id,
                                                             CONVERTED_FROM_BACKEND: source_spec.backend,
                                                             **lineage, **environment_tags()})
        with tracked_run(mlflow, name=f"{default_run_name(spec)}-from-{source_spec.backend}", tags=tags) as run:
            record_inputs(run, spec, data)
            run.metrics({DIFF_METRIC: diff, "test_acc": accuracy, "convert_import_seconds": import_seconds,
                         "convert_export_seconds": float(options.get("export_seconds", 0.0))})
            if not diff <= TOLERANCE:
                raise ConversionMismatch(f"{spec.backend}'s {spec.model} differs from run {run_id}'s "
                                         f"{source_spec.backend} model by {diff:.3g} on {len(ours)} test images "
                                         f"(tolerance {TOLERANCE:g})")
            out = Output(backend.hook, model, run, workdir)
            save_weights(out)
            onnx_diff = export_and_check(spec, data, out)
            return {"new_run_id": run.run_id, "max_abs_diff": diff, "onnx_max_abs_diff": onnx_diff,
                    "test_acc": accuracy, "images": int(len(ours)), "import_seconds": import_seconds}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- from the caller's process --------------------------------------------------


def convert_run(run_id: str, to: str, tracking_uri: str, on_start=None) -> dict[str, Any]:
    """``tle convert``: the run's model in backend ``to``, checked and stored; returns what the command prints.
    ``on_start(source_backend, model)`` is called once the request is known to be valid, before the workers start."""
    with StoredRun(run_id, tracking_uri, doing="convert") as stored:
        source, model = stored.backend, stored.model
    if not source or not model:
        raise UserError(f"run {run_id} was not made by tle run (no backend/model tags)", "convert a tle run")
    if source == to:
        raise UserError(f"run {run_id} is already a {to} run", "choose another --to backend")
    load_backend(to).model(model)  # a UserError naming the models it has
    if on_start is not None:
        on_start(source, model)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="tle-convert-"))
    try:
        exported = weights.portable_of_run(run_id, source, tracking_uri, folder, logits=True)
        outcome = in_worker(WorkerRequest(to, "convert", run_id, tracking_uri,
                                          {"to": to, "path": exported["path"], "logits": exported["logits"],
                                           "export_seconds": exported.get("export_seconds", 0.0)}),
                            OnFailure(otherwise=_not_converted))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"run_id": outcome["new_run_id"], "source_run_id": run_id, "source_backend": source, "backend": to,
            "model": model, "max_abs_diff": outcome["max_abs_diff"], "onnx_max_abs_diff": outcome["onnx_max_abs_diff"],
            "test_acc": outcome["test_acc"], "images": outcome["images"],
            "export_seconds": exported.get("export_seconds"), "import_seconds": outcome.get("import_seconds"),
            "seconds": time.perf_counter() - started}


def _not_converted(outcome: dict[str, Any]) -> Exception:
    """A conversion that failed other than by the user's request is tle's bug: exit 1, not 2."""
    error = outcome.get("error", "")
    return ConversionMismatch(error.split(": ", 1)[-1]) if outcome.get("mismatch") else RuntimeError(error)


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result)
