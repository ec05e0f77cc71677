"""The core's side of every backend's training loop.

Backends call ``epoch_start`` / ``batch_end`` / ``epoch_end``; the core turns
those calls into progress bars, timings, tracked metrics with one continuous
step across stages, and early stopping — identically for every framework.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rich.progress import Progress

from tle.progress import track
from tle.contract.strategy import Stage

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
T = TypeVar("T")


@dataclass
class EpochRecord:
    step: int
    stage: int
    stage_name: str
    epoch: int
    metrics: dict[str, float]


@dataclass
class History:
    records: list[EpochRecord] = field(default_factory=list)

    def series(self, metric: str) -> list[float]:
        return [r.metrics.get(metric, math.nan) for r in self.records]

    def best(self, metric: str = "val_acc") -> float:
        values = [v for v in self.series(metric) if not math.isnan(v)]
        return max(values) if values else math.nan


@dataclass(frozen=True)
class Checkpointing:
    """Where a stage's native checkpoint lives. The backend writes its checkpoint (model + optimiser + stage +
    epoch) to ``path``, adding a suffix if its format needs one, before each ``epoch_end``; with ``resume_from``
    it loads that checkpoint first and trains from ``start_epoch``."""

    path: Path | None = None
    resume_from: Path | None = None
    start_epoch: int = 0


@dataclass(frozen=True)
class Listeners:
    """Who hears of a stage's progress: each epoch's record, the warnings, the progress display. ``on_epoch`` may
    answer True to stop the run after that epoch (its owner's decision, e.g. a search's pruner): the loop is then
    ``halted`` and ``should_stop``, the backend ends the stage as for early stopping, and no later stage trains."""

    on_epoch: Callable[[EpochRecord], bool | None] = lambda record: None
    on_warning: Callable[[str, dict[str, str]], None] | None = None
    progress: Progress | None = None


class TrainLoop:
    """Handed to the backend's ``train`` hook for one stage."""

    def __init__(self, stage: Stage, history: History | None = None, *, step_offset: int = 0,
                 listeners: Listeners = Listeners(), patience: int | None = None,
                 checkpointing: Checkpointing = Checkpointing()):
        self.stage = stage
        self.step_offset = step_offset
        self.history = history if history is not None else History()
        self.start_epoch = checkpointing.start_epoch
        self.checkpoint_path = checkpointing.path
        self.resume_from = checkpointing.resume_from
        self._on_epoch = listeners.on_epoch
        self._on_warning = listeners.on_warning
        self.warnings: list[str] = []
        self._progress = progress = listeners.progress
        self._patience = patience
        self._best = -math.inf
        self._since_best = 0
        self._t0 = 0.0
        self.should_stop = False
        self.halted = False  # on_epoch answered True
        self.epochs_done = self.start_epoch
        self._epoch_task = None
        self._batch_task = None
        if progress is not None:
            self._epoch_task = progress.add_task(f"stage {stage.index} {stage.name}", total=stage.epochs,
                                                 completed=self.start_epoch, info="")

    def epoch_start(self, epoch: int, batches: int | None = None) -> None:
        self._t0 = time.perf_counter()
        if self._progress is not None:
            if self._batch_task is None:
                self._batch_task = self._progress.add_task("  batches", total=batches, info="")
            else:
                self._progress.reset(self._batch_task, total=batches)

    def batch_end(self, n: int = 1, loss: float | None = None) -> None:
        if self._batch_task is not None and self._progress is not None:
            info = f"loss {loss:.4f}" if loss is not None else ""
            self._progress.update(self._batch_task, advance=n, info=info)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        seconds = time.perf_counter() - self._t0 if self._t0 else math.nan
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        clean["epoch_seconds"] = seconds
        record = EpochRecord(self.step_offset + epoch, self.stage.index, self.stage.name, epoch, clean)
        self.history.records.append(record)
        self.epochs_done = epoch + 1
        if self._on_epoch(record):
            self.halted = self.should_stop = True
        if self._epoch_task is not None and self._progress is not None:
            shown = "  ".join(f"{k} {clean[k]:.4f}" for k in EPOCH_METRICS if k in clean)
            self._progress.update(self._epoch_task, completed=epoch + 1, info=shown)
        self._check_early_stop(clean.get("val_acc"))

    def _check_early_stop(self, val_acc: float | None) -> None:
        if self._patience is None or val_acc is None:
            return
        if val_acc > self._best:
            self._best, self._since_best = val_acc, 0
        else:
            self._since_best += 1
            self.should_stop = self.halted or self._since_best >= self._patience

    def warn(self, message: str, tags: dict[str, str] | None = None) -> None:
        """A finding the user must see although the run goes on (e.g. a layer that did not converge): printed,
        and logged as the run's ``tle.warning`` tag (every warning of the run, one per line) with ``tags``."""
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message, dict(tags or {}))

    def track(self, iterable: Iterable[T], total: int | None = None, description: str = "working") -> Iterator[T]:
        """Iterate with a progress bar: for a backend's one-off passes, e.g. computing cached features."""
        yield from track(iterable, self._progress, total, description)

    def close(self) -> None:
        if self._progress is not None and self._batch_task is not None:
            self._progress.remove_task(self._batch_task)
