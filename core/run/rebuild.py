"""A stored run's model, rebuilt in this process with its own weights and head (for export, convert, serve)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tle.backends.manager import load_backend
from tle.contract.spec import ExperimentSpec
from tle.data import load_dataset
from tle.run.assembly import assemble
from tle.store.stored_run import read_spec


@dataclass
class StoredModel:
    run_id: str
    spec: ExperimentSpec
    backend: Any  # tle.backends.manager.Backend
    data: Any  # tle.data.Dataset
    model: Any  # the backend's native model, weights and head of the run


def rebuild(run_id: str, mlflow, workdir: Path, load_data=None, doing: str = "use") -> StoredModel:
    """The run's model in this process, with its own weights and head (the class names match)."""
    spec = read_spec(mlflow, run_id, doing)
    backend = load_backend(spec.backend)
    data = (load_data or load_dataset)(spec.dataset, seed=spec.train.seed, extra_sources=backend.dataset_sources())
    model = assemble(backend.hook, spec, data, workdir, weights=f"runs:/{run_id}")
    return StoredModel(run_id, spec, backend, data, model)
