"""A search trial's side in the process that trains it: report the metric to the Optuna study every epoch and ask
the pruner whether to stop.

A sweep with a ``search:`` section (:mod:`tle.studies.search`) asks Optuna for a trial in the sweep's process and
hands it to a warm worker (a local process or a Ray actor) as a cell whose task names the study's storage, the
study and the trial (:class:`TrialRef`). The worker opens that storage itself, so the trial's intermediate values
are written where the study lives and the pruner decides in the worker, at the end of each epoch, from what every
other worker reported: nothing is relayed through the sweep. The sweep then tells the study how the trial ended
(complete with its value, pruned, or failed).

Optuna is imported only here and in the sweep, when a search runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tle.contract.loop import EpochRecord

PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class TrialRef:
    """Where a trial lives: the study ``study`` in ``storage`` (an RDB URL, or a journal file's path), trial id
    ``trial_id``; the metric it is scored on per epoch and in which ``direction``; the study's ``pruner`` (its name
    and Optuna's keyword arguments), rebuilt in the worker because Optuna's pruners live in the process that asks."""

    storage: str
    study: str
    trial_id: int
    number: int
    metric: str
    direction: str = "maximize"
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none", "kwargs": {}})

    def message(self) -> dict[str, Any]:
        return {"storage": self.storage, "study": self.study, "trial_id": self.trial_id, "number": self.number,
                "metric": self.metric, "direction": self.direction, "pruner": dict(self.pruner)}

    @classmethod
    def of(cls, message: dict[str, Any]) -> TrialRef:
        return cls(**message)


def quiet_optuna():
    """Optuna, with its INFO lines (one per trial) off: tle prints its own."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(where: str):
    """The study's storage: an RDB URL (``sqlite:///``, ``postgresql://``, ``mysql://``) as Optuna's RDBStorage, or
    else a journal file (Optuna's JournalFileBackend: an append-only log under a file lock, which many processes on
    one host, or on a shared file system, write at once)."""
    optuna = quiet_optuna()
    if "://" in where:
        return optuna.storages.RDBStorage(where)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(where))


def make_pruner(spec: dict[str, Any]):
    """Optuna's pruner ``spec['name']`` (none, median, hyperband) built with ``spec['kwargs']``."""
    optuna = quiet_optuna()
    kinds = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
             "hyperband": optuna.pruners.HyperbandPruner}
    return kinds[spec["name"]](**spec.get("kwargs", {}))


class Reporter:
    """The per-epoch report of one trial (:class:`tle.run.runner.RunOptions` ``report``): each epoch's value of the
    metric goes to the study at the run's step; True when the pruner says stop."""

    def __init__(self, ref: TrialRef):
        optuna = quiet_optuna()
        self.ref = ref
        study = optuna.load_study(study_name=ref.study, storage=open_storage(ref.storage),
                                  pruner=make_pruner(ref.pruner))
        self.trial = optuna.trial.Trial(study, ref.trial_id)
        self.values: list[float] = []
        self.pruned_at: int | None = None  # the step (epoch of the run, counted over its stages) it stopped at

    def __call__(self, record: EpochRecord) -> bool:
        value = record.metrics.get(self.ref.metric)
        if value is None or not math.isfinite(value):
            return False
        self.values.append(value)
        self.trial.report(value, record.step)
        if self.trial.should_prune():
            self.pruned_at = record.step
            return True
        return False

    @property
    def value(self) -> float | None:
        """The trial's score: its best epoch in the study's direction (as ``best_val_acc`` is the best epoch's)."""
        if not self.values:
            return None
        return max(self.values) if self.ref.direction == "maximize" else min(self.values)

    def outcome(self) -> dict[str, Any]:
        """What the worker adds to the cell's outcome for the sweep to tell the study."""
        return {"trial": self.ref.number, "value": self.value, "pruned": self.pruned_at is not None,
                "pruned_at": self.pruned_at, "reported": len(self.values)}
