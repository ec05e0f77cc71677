"""Handing cells to warm workers, whatever runs them (local processes or Ray actors).

A worker serves one backend for its whole life, so a framework is imported once
per worker and TensorFlow never meets torch's exporter. With ``jobs`` slots,
a slot keeps its worker while cells of that backend remain and only then
starts a worker for another backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tle.errors import UserError
from tle.store.status import RunStatus
from tle.store.tracking import deferred_signals


@dataclass
class Task:
    cell: int
    backend: str
    spec: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    label: str = ""
    gpus: float = 0.0
    kind: str = "run"  # "export": a finished run's model (``run_id``) to ONNX; "portable"/"convert": tle.run.convert;
    # "features": a candidate backbone's frozen features for tle rank (tle.run.features)
    run_id: str | None = None
    after: tuple[int, ...] = ()  # cells (a pretraining run; an export's group) that must end first
    strict: bool = True  # fail without running when one of ``after`` did not finish
    cell_of: int | None = None  # for an export: the cell whose run it exports
    options: dict[str, Any] = field(default_factory=dict)  # what a task other than a cell needs (tle.run.convert)

    def message(self) -> dict[str, Any]:
        return {"cell": self.cell, "spec": self.spec, "tags": self.tags, "kind": self.kind, "run_id": self.run_id,
                "options": self.options}


def outcome_of(work: Callable[[], dict[str, Any]], outcome: dict[str, Any],
               failed: Callable[[Exception], dict[str, Any]] | None = None) -> dict[str, Any]:
    """A worker's answer to a task that is not a cell (an export, a conversion, a candidate's features): ``outcome``
    (the task's ``cell``...) with ``status`` FINISHED and what ``work()`` returned; FAILED with a
    :class:`UserError`'s line (``user_error``, the caller shows it as the user's) or any other error's type and
    first line, plus ``failed(error)``'s fields; and ``seconds``. Ctrl-C and SIGTERM pass through."""
    started = time.perf_counter()
    try:
        outcome.update(status=RunStatus.FINISHED, **work())
    except KeyboardInterrupt:
        raise
    except UserError as exc:
        outcome.update(status=RunStatus.FAILED, error=str(exc), user_error=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        outcome.update(status=RunStatus.FAILED, error=f"{type(exc).__name__}: {first}"[:1000],
                       **(failed(exc) if failed is not None else {}))
    outcome["seconds"] = time.perf_counter() - started
    return outcome


class Pool(Protocol):
    """What an executor provides: workers bound to one backend each."""

    def start(self, backend: str, gpus: float) -> Any: ...

    def submit(self, worker: Any, task: Task) -> None: ...

    def wait(self, timeout: float) -> list[tuple[Any, dict[str, Any]]]:
        """Outcomes of finished tasks as ``(worker, outcome)``; a dead worker's outcome says so."""
        ...

    def alive(self, worker: Any) -> bool: ...

    def stop(self, worker: Any) -> None: ...

    def interrupt(self, busy: dict[Any, Task], grace: float) -> list[tuple[Any, dict[str, Any]]]:
        """Stop every busy worker (their runs end KILLED) and return what they reported."""
        ...


class Scheduler:
    """Runs batches of tasks on at most ``jobs`` workers; idle workers stay warm between batches."""

    def __init__(self, pool: Pool, jobs: int):
        self.pool, self.jobs = pool, jobs
        self.idle: list[tuple[Any, str]] = []
        self.owner: dict[Any, str] = {}

    def run(self, tasks: list[Task], *, on_start: Callable[[Task], None],
            on_done: Callable[[Task, dict[str, Any]], None],
            resolve: Callable[[Task], dict[str, Any] | None] | None = None,
            supply: Callable[[int], list[Task]] | None = None) -> None:
        """Run ``tasks``; ``on_done`` sees every outcome (also on Ctrl-C, with the KILLED ones).

        A task with ``after`` waits until those cells ended (and, when ``strict``, fails without
        running if one did not finish); ``resolve`` is called when a task becomes ready and may
        complete it without running (returning its outcome), e.g. when an earlier run already
        computed it. Tasks others wait for go first, so every backend's pretraining starts at once.
        ``supply(free)`` is asked for up to ``free`` more tasks whenever fewer than ``jobs`` are ready
        or running (a search asks its sampler then, so each trial sees the outcomes before it); the
        run ends when nothing is left and it supplies none.
        """
        order = {b: i for i, b in reversed(list(enumerate(t.backend for t in tasks)))}
        awaited = {c for t in tasks for c in t.after}
        pending = sorted(tasks, key=lambda t: (t.cell not in awaited, order[t.backend], t.cell))
        status: dict[int, str] = {}
        busy: dict[Any, Task] = {}

        def finish(task: Task, outcome: dict[str, Any]) -> None:
            status[task.cell] = outcome.get("status", RunStatus.FAILED)
            on_done(task, outcome)

        known = {t.cell for t in tasks}
        ready: list[Task] = []
        try:
            while True:
                free = self.jobs - len(ready) - len(busy)
                if supply is not None and free > 0 and not pending:
                    more = supply(free)
                    known.update(t.cell for t in more)
                    pending.extend(more)
                if not (pending or ready or busy):
                    break
                for task in list(pending):
                    deps = {c: status.get(c) for c in task.after if c in known}
                    if any(v is None for v in deps.values()):
                        continue
                    pending.remove(task)
                    bad = {c: v for c, v in deps.items() if v != RunStatus.FINISHED}
                    if bad and task.strict:
                        cell, how = next(iter(bad.items()))
                        finish(task, {"cell": task.cell, "status": RunStatus.FAILED,
                                      "error": f"cell {cell}, which it starts from, ended {how}"})
                        continue
                    skipped = resolve(task) if resolve is not None else None
                    if skipped is not None:
                        finish(task, skipped)
                    else:
                        ready.append(task)
                while ready and len(busy) < self.jobs:
                    worker, task = self._assign(ready, busy)
                    on_start(task)
                    self.pool.submit(worker, task)
                    busy[worker] = task
                if not busy:
                    continue
                # A signal waits until the outcomes read are handed on: one read but not yet told (a search's trial
                # that finished) would be lost, and its worker, idle by then, would be counted as interrupted.
                with deferred_signals():
                    for worker, outcome in self.pool.wait(timeout=0.5):
                        task = busy.pop(worker, None)
                        if task is None:  # a worker that ended after it reported
                            continue
                        finish(task, outcome)
                        if self.pool.alive(worker):
                            self.idle.append((worker, self.owner[worker]))
                        else:
                            self.owner.pop(worker, None)
        except KeyboardInterrupt:
            for worker, outcome in self.pool.interrupt(busy, grace=30.0):
                task = busy.pop(worker, None)
                if task is not None:
                    on_done(task, outcome)
            for task in busy.values():
                on_done(task, {"cell": task.cell, "status": RunStatus.KILLED, "error": "interrupted"})
            raise

    def close(self) -> None:
        for worker, _ in self.idle:
            self.pool.stop(worker)
        self.idle.clear()

    def _assign(self, pending: list[Task], busy: dict) -> tuple[Any, Task]:
        for i, (worker, backend) in enumerate(self.idle):
            match = next((t for t in pending if t.backend == backend), None)
            if match is not None:
                self.idle.pop(i)
                pending.remove(match)
                return worker, match
        task = pending.pop(0)
        if len(self.idle) + len(busy) >= self.jobs and self.idle:
            # Every slot has a worker: retire an idle one of another backend (it holds memory, maybe a GPU).
            old, _ = self.idle.pop(0)
            self.pool.stop(old)
            self.owner.pop(old, None)
        worker = self.pool.start(task.backend, task.gpus)
        self.owner[worker] = task.backend
        return worker, task
