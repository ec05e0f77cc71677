"""A run as the store holds it: the names of what it holds, writing a new run's inputs, reading a run back.

A run made by ``tle run``, ``tle convert`` or ``tle fuse`` holds its spec
(``spec.yaml``), its classes (``class_names.json``), the data's fingerprint
(a parameter), its weights (``weights/``) and tags naming its backend and
model, all written by :func:`record_inputs`. Whatever reads a run back
(``--weights runs:/``, ``--resume``, ``tle export`` / ``tle predict`` of a
``--no-export`` run, a sweep's ``export.onnx: best``, the portable weights
another framework asks for, ``tle convert``, ``tle fuse``) opens it once as a
:class:`StoredRun`, which fetches each part when first asked and says in one
line what is missing, and a stored run is rebuilt one way
(:func:`tle.run.rebuild.rebuild`).

A fused run (``tle fuse``) holds the same: its spec is the first parent's with
the fused model's head, its data is the first parent's (the fingerprint is
that split's) under the fused classes (the first parent's classes come first
among them, at their own indices), and it is tagged :data:`FUSED_FROM`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

from tle.backends.manager import load_backend
from tle.contract.records import ResolvedWeights
from tle.contract.spec import ExperimentSpec, build_spec
from tle.data import Dataset, load_dataset
from tle.errors import UserError

SPEC_ARTIFACT = "spec.yaml"
CLASS_NAMES_ARTIFACT = "class_names.json"
WEIGHTS_ARTIFACT = "weights"  # a folder holding the one file the backend's save_weights wrote
EXPORT_ARTIFACT = "export"  # other exported forms (a spiking net's NIR graph)
FINGERPRINT_PARAM = "data.fingerprint"  # of the split the run saw: resume and fusion refuse data that changed
BACKEND_TAG, MODEL_TAG = "backend", "model"  # what --weights runs:/ of another backend and tle convert read
SPEC_KEY = "tle.spec_key"  # tag: ExperimentSpec.key() of the spec as given (a sweep's resume matches on it)
FUSED_FROM = "tle.parents"  # tag of a fused run (and of a run converted from one): its parents' ids, comma-separated
REBUILD_ERROR = "tle.rebuild_error"  # tag: why the run's spec and weights do not rebuild its model (a fusion)
ONNX_ARTIFACT = "model"  # the ONNX model (MLflow's onnx flavour), logged after the parity check


# -- writing --------------------------------------------------------------------


def run_tags(spec: ExperimentSpec, backend, strategy: str, device: str | None = None,
             extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tags every run of a model carries (``backend``, ``model``... the UI's columns, and what
    ``--weights runs:/`` of another backend reads); ``device`` when the run trained somewhere."""
    tags = {BACKEND_TAG: spec.backend, MODEL_TAG: spec.model, "dataset": spec.dataset.source, "strategy": strategy,
            "init": str(spec.init), "weights": spec.weights, "device": device, "framework": backend.info.framework,
            "framework_version": backend.info.framework_version, **(extra or {})}
    return {k: v for k, v in tags.items() if v is not None}


def record_inputs(run, spec: ExperimentSpec, data) -> None:
    """What a new run is made from, in the layout its readers expect: the spec's and the data's parameters (the
    fingerprint among them), ``spec.yaml``, ``class_names.json`` and the splits as MLflow datasets."""
    h, w, c = data.input_shape
    run.params(spec.flat())
    run.params({FINGERPRINT_PARAM: data.fingerprint(), "data.num_classes": data.num_classes,
                **{f"data.{k}_size": v for k, v in data.sizes().items()}, "data.skipped": data.skipped,
                "data.input_shape": f"{h}x{w}x{c}"})
    run.text(spec.to_yaml(), SPEC_ARTIFACT)
    run.json(data.class_names, CLASS_NAMES_ARTIFACT)
    run.datasets(data)


# -- reading --------------------------------------------------------------------


def run_id_of(ref: str) -> str:
    """The run id in ``ref``: ``ID``, ``runs:/ID`` or ``runs:/ID/path``."""
    return ref[len("runs:/"):].strip("/").split("/")[0] if ref.startswith("runs:/") else ref


class StoredRun:
    """One run of the store, opened once: its status, tags and params at once; its spec, class names, weights and
    data when first asked (each fetched once, into a folder of its own). What is missing is a one-line
    :class:`UserError` naming the run and what to do. A context manager: leaving it removes the fetched files
    (unless the caller gave the folder).

    ``doing`` (``export``, ``convert``, ``fuse``...) words those errors: ``run X has no spec.yaml ... export runs
    made by tle run, tle fuse or tle convert``.
    """

    def __init__(self, ref: str, tracking_uri: str | None = None, workdir: Path | None = None, doing: str = "use"):
        import mlflow

        self.run_id = run_id_of(ref)
        self.uri = tracking_uri or mlflow.get_tracking_uri()
        self.doing = doing
        self.client = mlflow.MlflowClient(self.uri)
        try:
            self.run = self.client.get_run(self.run_id)
        except Exception:
            raise UserError(f"run {self.run_id!r} not found in the tracking store {self.uri}",
                            "check the run id, or point --tracking-uri at the store that holds it") from None
        self._own_folder = workdir is None
        self.folder = Path(tempfile.mkdtemp(prefix="tle-stored-")) if workdir is None else Path(workdir)
        self._fetched: dict[str, list[Path] | None] = {}
        self._spec: ExperimentSpec | None = None

    def __enter__(self) -> StoredRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- what the run record holds ------------------------------------------------

    @property
    def status(self) -> str:
        return self.run.info.status

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.run.data.tags)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.run.data.params)

    @property
    def backend(self) -> str | None:
        return self.run.data.tags.get(BACKEND_TAG) or self.run.data.params.get("backend")

    @property
    def model(self) -> str | None:
        return self.run.data.tags.get(MODEL_TAG) or self.run.data.params.get("model")

    @property
    def fingerprint(self) -> str | None:
        """Of the data split the run saw (:data:`FINGERPRINT_PARAM`)."""
        return self.run.data.params.get(FINGERPRINT_PARAM)

    @property
    def parents(self) -> list[str]:
        """The runs a fused run was fused from (none for another run)."""
        return [r for r in self.run.data.tags.get(FUSED_FROM, "").split(",") if r]

    def require(self, *statuses: str, fix: str) -> None:
        """A UserError unless the run ended (or stands) in one of ``statuses``."""
        if self.status not in statuses:
            names = [str(s) for s in statuses]
            wanted = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
            raise UserError(f"run {self.run_id} is {self.status}, not {wanted}", fix)

    def check_rebuilds(self) -> None:
        """A UserError when the run's spec and weights do not rebuild its model (:data:`REBUILD_ERROR`)."""
        reason = self.run.data.tags.get(REBUILD_ERROR)
        if reason:
            raise UserError(f"run {self.run_id} cannot be rebuilt from its spec: {reason}",
                            "export its model when it is made (tle fuse --export)")

    # -- its artifacts, each fetched once -------------------------------------------

    def artifact(self, path: str) -> list[Path] | None:
        """One artifact (a file or a folder) of the run: its files, sorted, or None if it is absent."""
        if path not in self._fetched:
            import mlflow
            import mlflow.artifacts

            try:
                local = Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=path,
                                                                 dst_path=str(self.folder / path.replace("/", "_")),
                                                                 tracking_uri=self.uri))
            except Exception:
                self._fetched[path] = None
            else:
                self._fetched[path] = (sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir()
                                       else [local])
        return self._fetched[path]

    def spec(self) -> ExperimentSpec:
        """The resolved spec the run was made from (``spec.yaml``)."""
        if self._spec is None:
            files = self.artifact(SPEC_ARTIFACT)
            if not files:
                raise UserError(f"run {self.run_id} has no {SPEC_ARTIFACT} in {self.uri}",
                                f"{self.doing} runs made by tle run, tle fuse or tle convert")
            try:
                raw = yaml.safe_load(files[0].read_text())
            except Exception:
                raise UserError(f"run {self.run_id}'s {SPEC_ARTIFACT} is not YAML",
                                f"{self.doing} runs made by tle run, tle fuse or tle convert") from None
            self._spec = build_spec(raw)
        return self._spec

    @property
    def class_names(self) -> list[str] | None:
        """The classes its head was trained on, in label order (``class_names.json``); None when absent."""
        files = self.artifact(CLASS_NAMES_ARTIFACT)
        try:
            return [str(c) for c in json.loads(files[0].read_text())] if files else None
        except ValueError:
            return None

    def weights(self) -> Path:
        """The one file the backend's ``save_weights`` wrote (``weights/``)."""
        files = self.artifact(WEIGHTS_ARTIFACT)
        if files is None:
            raise UserError(f"run {self.run_id} has no {WEIGHTS_ARTIFACT}/ artifact",
                            f"it did not finish; check its status ({self.status}) or use another run")
        if len(files) != 1:
            raise UserError(f"run {self.run_id} holds {len(files)} weight files, expected one",
                            "use a run made by tle run")
        return files[0]

    def resolved_weights(self, source: str | None = None) -> ResolvedWeights:
        """Its weights as a backend loads them: the file, with the class names that decide whether the head is kept."""
        names = self.class_names
        return ResolvedWeights(kind="file", source=source or f"runs:/{self.run_id}", path=self.weights(),
                               class_names=tuple(names) if names is not None else None)

    def onnx_model(self) -> Path | None:
        """The ONNX model logged after the parity check, or None."""
        return next((f for f in self.artifact(ONNX_ARTIFACT) or [] if f.suffix == ".onnx"), None)

    # -- its data ---------------------------------------------------------------------

    def data(self, load_data=None, check: bool = False, backend=None) -> Dataset:
        """The data the run saw, reloaded from its spec (``load_data``: a warm worker's cache of
        :func:`tle.data.load_dataset`), under the run's class names: a fused run's first parent's data under the
        fused classes. ``check``: refuse data whose split changed since (the fingerprint differs). Data whose
        classes changed is refused either way: the run's head would not answer it. ``backend``: the loaded
        backend whose data sources read it (default: the run's)."""
        spec = self.spec()
        backend = backend or load_backend(spec.backend)
        data = (load_data or load_dataset)(spec.dataset, seed=spec.train.seed, extra_sources=backend.dataset_sources())
        if check and self.fingerprint and data.fingerprint() != self.fingerprint:
            raise UserError(f"the data of run {self.run_id} changed since it ran (other split or files)",
                            f"{self.doing} runs whose data is still where it was")
        names = self.class_names
        if names is None or names == [str(c) for c in data.class_names]:
            return data
        if self.parents and len(names) >= data.num_classes:
            return replace(data, class_names=list(names))
        raise UserError(f"run {self.run_id}'s data now has classes {list(data.class_names)}, the run had {names}",
                        f"{self.doing} runs whose data is unchanged")
