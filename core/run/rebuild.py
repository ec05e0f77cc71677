"""A stored run's model, rebuilt in this process with its own weights and head (for export, convert, serve)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tle.backends.manager import load_backend
from tle.contract.spec import ExperimentSpec
from tle.run.assembly import assemble
from tle.store.stored_run import StoredRun


@dataclass
class StoredModel:
    run_id: str
    spec: ExperimentSpec
    backend: Any  # tle.backends.manager.Backend
    data: Any  # tle.data.Dataset, under the run's class names
    model: Any  # the backend's native model, weights and head of the run


def rebuild(stored: StoredRun, workdir: Path, load_data=None) -> StoredModel:
    """The run's model in this process, from its spec and its own weights, head kept (the class names are the
    run's): a fused run's too."""
    spec = stored.spec()
    stored.check_rebuilds()
    backend = load_backend(spec.backend)
    data = stored.data(load_data, backend=backend)
    model = assemble(backend.hook, spec, data, stored.resolved_weights())
    return StoredModel(stored.run_id, spec, backend, data, model)
