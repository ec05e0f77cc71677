"""A finished run read back from the store: its spec, its data, and its model rebuilt from its weights.

``tle export`` of a ``--no-export`` run, a sweep's ``export.onnx: best``, the
portable weights another framework asks for and ``tle convert`` all start
here, so a stored run is rebuilt one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tle.errors import UserError
from tle.spec import ExperimentSpec, build_spec

SPEC_ARTIFACT = "spec.yaml"


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


@dataclass
class StoredModel:
    run_id: str
    spec: ExperimentSpec
    backend: Any  # tle.plugins.Backend
    data: Any  # tle.data.Dataset
    model: Any  # the backend's native model, weights and head of the run


def rebuild(run_id: str, mlflow, workdir: Path, load_data=None, doing: str = "use") -> StoredModel:
    """The run's model in this process, with its own weights and head (the class names match)."""
    from tle.data import load_dataset
    from tle.plugins import load_backend
    from tle.weights import resolve_weights

    spec = read_spec(mlflow, run_id, doing)
    backend = load_backend(spec.backend)
    data = (load_data or load_dataset)(spec.dataset, seed=spec.train.seed, extra_sources=backend.dataset_sources())
    weights = resolve_weights(f"runs:/{run_id}", spec.backend, workdir)
    model = backend.hook.load_backbone(model=spec.model, num_classes=data.num_classes,
                                       class_names=list(data.class_names), input_shape=data.input_shape,
                                       head=spec.head, weights=weights, device=spec.train.device,
                                       precision=spec.train.precision, seed=spec.train.seed)
    return StoredModel(run_id, spec, backend, data, model)
