"""Resolving ``--weights`` into something a backend can load without MLflow.

``none`` and ``imagenet`` pass through (the backend owns its hub and cache);
a path must exist; ``runs:/ID`` and ``models:/NAME/VERSION`` (or
``models:/NAME@ALIAS``) are looked up in the tracking store and the run's
``weights/`` artifact, saved by the backend's ``save_weights`` hook, is
downloaded to a local file. This is how a backbone trained by one experiment
feeds the next, offline. A run of another backend (same model name, so the
same architecture) is handed over as a portable file (``tle.contract.portable``) that
its own backend writes in a worker process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tle.contract.helpers import provide_foreign_reader
from tle.contract.records import ForeignWeights, ResolvedWeights
from tle.errors import UserError
from tle.store.stored_run import CLASS_NAMES_ARTIFACT, WEIGHTS_ARTIFACT, StoredRun, run_id_of
from tle.store.status import RunStatus
from tle.workers.task import OnFailure, WorkerRequest, in_worker

__all__ = ["CLASS_NAMES_ARTIFACT", "FORMS", "WEIGHTS_ARTIFACT", "resolve_weights"]
FORMS = "none, imagenet, a file path, runs:/RUN_ID or models:/NAME/VERSION"


def resolve_weights(text: str, backend: str, workdir: Path | None = None, model: str | None = None) -> ResolvedWeights:
    """``model``: the architecture the weights are for; a run of another backend must be of the same one."""
    if text in ("none", "imagenet"):
        return ResolvedWeights(kind=text, source=text)
    if text.startswith("runs:/"):
        return _from_run(run_id_of(text), text, backend, workdir, model)
    if text.startswith("models:/"):
        return _from_run(registered_run_id(text), text, backend, workdir, model)
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"weights file {text!r} does not exist", f"use one of: {FORMS}")
    return ResolvedWeights(kind="file", source=text, path=path.resolve())


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def registered_run_id(text: str) -> str:
    """The run that logged the registered model ``models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``)."""
    ref = text[len("models:/"):].strip("/")
    client = _client()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.partition("/")
            if not number.isdigit():
                raise UserError(f"{text!r} must name a version", "write models:/NAME/VERSION or models:/NAME@ALIAS")
            version = client.get_model_version(name, number)
    except UserError:
        raise
    except Exception:
        raise UserError(f"registered model {text!r} not found in the tracking store",
                        "check the name and version with the MLflow UI or --tracking-uri") from None
    if not version.run_id:
        raise UserError(f"registered model {text!r} has no source run", "register a model logged by tle run")
    return version.run_id


def _from_run(run_id: str, source: str, backend: str, workdir: Path | None, model: str | None) -> ResolvedWeights:
    target = Path(tempfile.mkdtemp(prefix="tle-weights-", dir=workdir))
    stored = StoredRun(run_id, workdir=target)
    if stored.backend and stored.backend != backend:
        return _from_other_backend(stored, source, model)
    return stored.resolved_weights(source)


def _from_other_backend(stored: StoredRun, source: str, model: str | None) -> ResolvedWeights:
    """A run of another framework: its backend writes the portable file (tle.contract.portable) in a process of its own."""
    run_backend, run_model = stored.backend, stored.model
    assert run_backend is not None  # _from_run comes here for a run of another backend only
    if model is not None and run_model and run_model != model:
        raise UserError(f"weights in {source} are a {run_backend} {run_model}, not a {model}",
                        f"use --model {run_model}: across frameworks weights fit the same architecture only")
    stored.require(RunStatus.FINISHED, fix="use a finished run: only finished runs give weights to another framework")
    key = (stored.uri, stored.run_id)
    if key not in _PORTABLE or not _PORTABLE[key].is_file():
        # A finished run's weights never change: a warm sweep worker converts a shared backbone once.
        folder = Path(tempfile.mkdtemp(prefix="tle-portable-"))
        atexit.register(shutil.rmtree, folder, True)
        _PORTABLE[key] = Path(portable_of_run(stored.run_id, run_backend, key[0], folder)["path"])
    names = stored.class_names
    return ResolvedWeights(kind="file", source=source, path=_PORTABLE[key],
                           class_names=tuple(names) if names is not None else None)


_PORTABLE: dict[tuple[str, str], Path] = {}  # (store, run id) -> its portable file, for this process's life


def portable_of_run(run_id: str, backend: str, tracking_uri: str, out: Path, logits: bool = False) -> dict[str, Any]:
    """The run's weights as a portable file, written in a worker of the run's own ``backend``
    (:func:`tle.run.convert.write_portable` there)."""
    return in_worker(WorkerRequest(backend, "portable", run_id, tracking_uri, {"out": str(out), "logits": logits}),
                     OnFailure(f"cannot read run {run_id}'s weights in {backend}", "check the run with tle show"))


def portable_from_backend(request: ForeignWeights) -> Path:
    """Weights that ``request.backend`` reads natively, as a portable file written by that backend in a worker of
    its own (the reader :func:`tle.contract.helpers.portable_from_backend` hands backends)."""
    import mlflow

    outcome = in_worker(WorkerRequest(request.backend, "portable", "", mlflow.get_tracking_uri(), request.options()),
                        OnFailure(f"{request.backend} could not read {request.source or request.weights} for "
                                  f"{request.model}",
                                  f"check that {request.backend} reads it (tle run --backend {request.backend} "
                                  "--weights ...)"))
    return Path(outcome["path"])


provide_foreign_reader(portable_from_backend)
