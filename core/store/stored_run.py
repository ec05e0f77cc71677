"""A run as the store holds it: the names of what it holds, writing a new run's inputs, reading a run back.

A run made by ``tle run``, ``tle convert`` or ``tle fuse`` holds its spec
(``spec.yaml``), its classes (``class_names.json``), the data's fingerprint
(a parameter), its weights (``weights/``) and tags naming its backend and
model. Whatever reads a run back (``--weights runs:/``, ``--resume``, ``tle
export`` of a ``--no-export`` run, a sweep's ``export.onnx: best``, the
portable weights another framework asks for, ``tle convert``, ``tle fuse``)
finds them under the names written here, and a stored run is rebuilt one way.
"""

from __future__ import annotations


import yaml

from tle.errors import UserError
from tle.contract.spec import ExperimentSpec, build_spec

SPEC_ARTIFACT = "spec.yaml"
CLASS_NAMES_ARTIFACT = "class_names.json"
WEIGHTS_ARTIFACT = "weights"  # a folder holding the one file the backend's save_weights wrote
EXPORT_ARTIFACT = "export"  # other exported forms (a spiking net's NIR graph)
FINGERPRINT_PARAM = "data.fingerprint"  # of the split the run saw: resume and fusion refuse data that changed
BACKEND_TAG, MODEL_TAG = "backend", "model"  # what --weights runs:/ of another backend and tle convert read
SPEC_KEY = "tle.spec_key"  # tag: ExperimentSpec.key() of the spec as given (a sweep's resume matches on it)


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


def get_run(run_id: str, tracking_uri: str | None = None):
    """The MLflow run ``run_id``, or the one-line error naming the store."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        return mlflow.MlflowClient(uri).get_run(run_id)
    except Exception:
        raise UserError(f"run {run_id!r} not found in the tracking store {uri}",
                        "check the run id, or point --tracking-uri at the store that holds it") from None


def read_spec(mlflow, run_id: str, doing: str = "use") -> ExperimentSpec:
    try:
        return build_spec(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/{SPEC_ARTIFACT}")))
    except UserError:
        raise
    except Exception:
        raise UserError(f"run {run_id} has no {SPEC_ARTIFACT} in {mlflow.get_tracking_uri()}",
                        f"{doing} runs made by tle run or tle sweep") from None
