"""``tle sweep``: run a grid's cells on warm workers, one parent run, nested cell runs, resumable.

Resume: a cell whose spec key (:meth:`ExperimentSpec.key`) and data
fingerprint already have a FINISHED run in the experiment is not run again; its
run is reused in the table. Failed and killed cells run again. Rerunning the
same sweep reopens its parent run, so all its cells stay nested under one
parent however many times it was interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from tle.errors import UserError
from tle.run import worker as worker_program
from tle.studies.grid import PRETRAIN, Cell, Grid
from tle.workers.local import LocalPool
from tle.workers.ray import RayPool, join_timeout
from tle.workers.schedule import Scheduler, Task
from tle.studies.sweep_store import (CELL, PARENT_TAG, ROLE, CellRun, described, end_left_run, finished_by_key,
                                     parent_run, quiet_signals, read_runs, record_failure)
from tle.store.status import RunStatus

EXECUTORS = ("local", "ray")


@dataclass
class CellResult:
    cell: Cell
    status: str = RunStatus.PENDING  # FINISHED, FAILED, KILLED, PENDING (never started)
    run_id: str | None = None
    reused: bool = False  # finished by an earlier run of the same spec and data
    error: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepResult:
    grid: Grid
    parent_id: str
    experiment: str
    uri: str
    results: list[CellResult]
    runs: dict[str, CellRun] = field(default_factory=dict)
    wall_seconds: float = 0.0
    interrupted: bool = False
    table: Any = None  # tle.analysis.table.Table, logged on the parent when the sweep ended

    @property
    def cells(self) -> list[CellResult]:
        return [r for r in self.results if r.cell.role != PRETRAIN]

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status == RunStatus.FINISHED for r in self.results)

    def run_of(self, result: CellResult) -> CellRun | None:
        return self.runs.get(result.run_id or "")


def check_cells(cells: list[Cell]) -> None:
    """Every backend, model and strategy of the grid exists: user errors before any run starts."""
    from tle.run.runner import prepare

    seen: set[tuple] = set()
    for cell in cells:
        t = cell.spec.train  # what prepare() reads: a cell differing in any of it is checked on its own
        sig = (cell.spec.backend, cell.spec.model, cell.spec.strategy, cell.spec.weights == "none", t.epochs, t.lr,
               t.finetune_epochs, t.finetune_lr, t.batchnorm)
        if sig in seen:
            continue
        seen.add(sig)
        spec = cell.spec
        if spec.weights == PRETRAIN:  # resolved to runs:/ID once its pretraining cell finished
            spec = spec.model_copy(update={"weights": "runs:/pretrain"})
        try:
            prepare(spec)
        except UserError as exc:
            raise UserError(f"sweep cell {cell.label}: {exc}") from None


def make_pool(executor: str, address: str | None, jobs: int):
    if executor == "local":
        return LocalPool(jobs)
    if executor == "ray":
        return RayPool(worker_program, address, num_cpus=None)  # imports Ray itself when it starts
    raise UserError(f"unknown executor {executor!r}", f"choose one of {', '.join(EXECUTORS)}")


@dataclass(frozen=True)
class Executor:
    """Where a sweep's cells run: ``kind`` local (warm worker processes, ``jobs`` at once) or ray (the cluster at
    ``address``, or a Ray started on this machine); ``gpus_per_cell`` of a GPU per cell (None: the backend's)."""

    kind: str = "local"
    jobs: int = 1
    address: str | None = None
    gpus_per_cell: float | None = None


@dataclass(frozen=True)
class TableLayout:
    """The table logged on the parent run and printed (:func:`tle.analysis.table.build_table`)."""

    metric: str = "test_acc"
    rows: list[str] | None = None
    cols: list[str] | None = None


class Sweep:
    def __init__(self, grid: Grid, executor: Executor = Executor(), layout: TableLayout = TableLayout(), *,
                 tracking_uri: str | None = None, console: Console | None = None, quiet: bool = False):
        from tle.store.lock import absolute_uri, sqlite_path

        executor_kind, jobs, address = executor.kind, executor.jobs, executor.address
        if executor_kind not in EXECUTORS:
            raise UserError(f"unknown executor {executor_kind!r}", f"choose one of {', '.join(EXECUTORS)}")
        if jobs < 1:
            raise UserError(f"--jobs {jobs} must be at least 1", "use --jobs 1 or more")
        self.grid = grid
        self.cells = grid.cells()
        check_cells(self.cells)
        base = self.cells[0].spec
        import mlflow

        self.uri = absolute_uri(tracking_uri or base.tracking.uri or mlflow.get_tracking_uri())
        if executor_kind == "ray" and address and sqlite_path(self.uri) is not None:
            raise UserError(f"a sweep on the Ray cluster {address} cannot track into the local file {self.uri}",
                            "start an MLflow server reachable from every node and pass --tracking-uri http://HOST:5000")
        from tle.store.lock import prepare

        prepare(self.uri)  # a dead tracking server: one line now, not MLflow's retries after cells ran
        if executor_kind == "ray" and address:
            from tle.workers.ray import probe_address

            probe_address(address)  # nothing listening: one line in seconds, not Ray's minutes of retries
        self.experiment = base.tracking.experiment
        self.executor, self.jobs, self.address = executor_kind, jobs, address
        self.gpus = executor.gpus_per_cell
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.metric, self.rows, self.cols = layout.metric, layout.rows, layout.cols
        self._fingerprints: dict[str, str] = {}

    # -- the parts ------------------------------------------------------------

    def _spec_for(self, cell: Cell) -> dict[str, Any]:
        spec = cell.spec.model_copy(update={"tracking": cell.spec.tracking.model_copy(update={
            "uri": self.uri, "experiment": self.experiment,
            "run_name": cell.spec.tracking.run_name or f"{self.grid.name}: {cell.label}"})})
        return spec.model_dump(mode="json")

    def _tags(self, cell: Cell, parent_id: str) -> dict[str, str]:
        tags = {PARENT_TAG: parent_id, "tle.sweep": self.grid.name, CELL: str(cell.index), ROLE: cell.role}
        tags.update({f"axis.{k}": str(v) for k, v in cell.axes.items()})
        return tags

    def _fingerprint(self, cell: Cell) -> str | None:
        from tle.data.load import split_fingerprint
        from tle.backends.manager import load_backend

        spec = cell.spec
        key = json.dumps([spec.dataset.model_dump(mode="json"), spec.train.seed, spec.backend], sort_keys=True)
        if key not in self._fingerprints:
            try:
                extra = load_backend(spec.backend).dataset_sources()
                self._fingerprints[key] = split_fingerprint(spec.dataset, spec.train.seed, extra)
            except UserError:
                self._fingerprints[key] = ""  # the cell will fail with the same error, recorded as FAILED
        return self._fingerprints[key] or None

    def _reusable(self, cell: Cell, finished: dict[str, list[Any]]) -> Any | None:
        candidates = finished.get(cell.key) or []
        if not candidates:
            return None
        fp = self._fingerprint(cell)
        return next((r for r in candidates if fp and r.data.params.get("data.fingerprint") == fp), None)

    def _gpus(self, cell: Cell) -> float:
        if self.gpus is not None:
            return self.gpus
        device = cell.spec.train.device
        return 1.0 if device.startswith(("cuda", "gpu")) else 0.0

    # -- running --------------------------------------------------------------

    def run(self) -> SweepResult:
        """Run the cells. The executor is joined before the parent run exists (an unreachable cluster creates no
        run); from then on the parent and every cell end FINISHED, FAILED (with ``tle.error``) or KILLED
        (Ctrl-C, SIGTERM), whatever ends the sweep."""
        from tle.progress import make_progress

        started = time.perf_counter()
        if self.executor == "ray" and self.address:
            # Quiet or not: the sweep waits on another host and must say so.
            self.console.print(f"joining the Ray cluster at {self.address} (up to {join_timeout():g}s, "
                               "TLE_RAY_JOIN_TIMEOUT)", highlight=False, markup=False, soft_wrap=True)
        pool = make_pool(self.executor, self.address, self.jobs)
        try:
            return self._run_on(pool, started, make_progress(self.console, self.quiet))
        finally:
            if hasattr(pool, "close"):
                with quiet_signals():
                    pool.close()

    def _run_on(self, pool, started: float, progress) -> SweepResult:
        """The parent run around the schedule (:meth:`_schedule`) and the result (:meth:`_conclude`)."""
        from tle.store.tracking import configure

        mlflow = configure(self.uri, self.experiment)
        client = mlflow.MlflowClient()
        experiment = mlflow.get_experiment_by_name(self.experiment)
        assert experiment is not None  # configure() set it, creating it if new
        exp_id = experiment.experiment_id
        scheduler = None
        with self._before_parent():
            try:
                with parent_run(mlflow, exp_id, self.grid.name, self.grid.key(),
                                {"tle.sweep": self.grid.name, "tle.executor": self.executor,
                                 **self._parent_tags()}) as (parent, reopened):
                    if not reopened:
                        parent.text(self.grid.source, "sweep.yaml")
                        parent.params(self._parent_params())
                    sweep = SweepResult(self.grid, parent.run_id, self.experiment, self.uri, [])
                    if progress is not None:
                        progress.start()
                    scheduler = Scheduler(pool, self.jobs)
                    sweep.results = self._schedule(Session(mlflow, exp_id, parent.run_id, scheduler, progress))
                    scheduler.close()  # in the block: a signal while the idle workers stop still ends the parent
                    scheduler = None
                    sweep.runs = read_runs(client, [r.run_id for r in sweep.results if r.run_id], exp_id)
                    sweep.wall_seconds = time.perf_counter() - started
                    # The parent ends FINISHED with the table and counts, FAILED when a cell did not finish; KILLED or
                    # FAILED for whatever stops it before.
                    sweep.table = self._conclude(sweep, client, exp_id)
                    if not sweep.ok:
                        bad = sum(r.status != RunStatus.FINISHED for r in sweep.results)
                        parent.end_as(RunStatus.FAILED, f"{bad} of {len(sweep.results)} {self.units} did not finish")
            finally:
                if progress is not None:
                    progress.stop()
                if scheduler is not None:
                    scheduler.close()
        return sweep

    units = "cells"  # what the parent's reason counts

    @contextmanager
    def _before_parent(self) -> Iterator[None]:
        """What holds for the whole sweep and is checked before its parent run exists (a search's studies)."""
        yield

    def _parent_tags(self) -> dict[str, str]:
        return {}

    def _parent_params(self) -> dict[str, str]:
        return {"axes": json.dumps(self.grid.axes, default=str)[:6000]}

    def _schedule(self, session: Session) -> list[CellResult]:
        """Every cell in one schedule: a transfer cell becomes ready when its pretraining cell finished and
        a group's ONNX export when its cells ended, so workers go on with their own backend's work instead
        of being restarted between phases."""
        results = {c.index: CellResult(c) for c in self.cells}
        finished = finished_by_key(session.mlflow.MlflowClient(), session.exp_id)
        tasks = [self._task(c, session.parent_id) for c in self.cells]
        exports = self._export_tasks(self.cells, len(self.cells))
        if not self.quiet:
            pre = sum(c.role == PRETRAIN for c in self.cells)
            self.console.print(f"sweep {self.grid.name}: {len(tasks)} cells" + (f" ({pre} pretraining)" if pre else "")
                               + f" on up to {self.jobs} {self.executor} worker(s)"
                               + (f"; then ONNX export of the best cell of {len(exports)} group(s)" if exports else ""))
        phase = Phase(self, session, results, finished)
        phase.bar("cells", len(tasks) + len(exports))
        session.scheduler.run(tasks + exports, on_start=phase.on_start, on_done=phase.on_done, resolve=phase.resolve)
        return [results[c.index] for c in self.cells]

    def _conclude(self, sweep: SweepResult, client, exp_id: str) -> Any:
        """What the sweep answers (a table with ``rich``, ``markdown``, ``csv``, ``json``, ``notes``: a grid's
        :class:`tle.analysis.table.SweepTable`), logged on the parent (still open: the sweep ends it)."""
        from tle.analysis.report import record
        from tle.analysis.table import build_table

        table = build_table(sweep, metric=self.metric, rows=self.rows, cols=self.cols)
        record(sweep, table)
        return table

    def _task(self, cell: Cell, parent_id: str) -> Task:
        return Task(cell.index, cell.backend, self._spec_for(cell), self._tags(cell, parent_id), cell.label,
                    self._gpus(cell), after=(cell.pretrain.index,) if cell.pretrain is not None else ())

    # -- export.onnx: best ----------------------------------------------------

    def _export_tasks(self, cells: list[Cell], first_id: int, kinds: tuple[Any, ...] = ("best",)) -> list[Task]:
        """One export per group (cells differing only in seed) whose spec's ``export.onnx`` is one of ``kinds``."""
        from tle.analysis.stats import group_key

        groups: dict[str, list[Cell]] = {}
        for c in cells:
            if c.role != PRETRAIN and c.spec.export.onnx in kinds:
                groups.setdefault(group_key(c.axes), []).append(c)
        tasks = []
        for i, members in enumerate(groups.values()):
            head = members[0]
            label = " ".join(f"{k}={v}" for k, v in head.axes.items() if k != "train.seed") or "all"
            tasks.append(Task(first_id + i, head.backend, {}, {}, f"export best of {label}", self._gpus(head),
                              kind="export", after=tuple(c.index for c in members), strict=False))
        return tasks

    def _pick_best(self, task: Task, results, client, exp_id) -> dict[str, Any] | None:
        """The group's finished cell with the best best_val_acc; None runs the export, an outcome skips it."""
        done = [results[i] for i in task.after if results[i].status == RunStatus.FINISHED and results[i].run_id]
        runs = read_runs(client, [r.run_id for r in done], exp_id)
        done = [r for r in done if r.run_id in runs]
        if not done:
            return {"cell": task.cell, "status": RunStatus.FINISHED, "skipped": "no finished cell"}
        best = max(done, key=lambda r: runs[r.run_id].metrics.get("best_val_acc", -1.0))
        if "onnx_max_abs_diff" in runs[best.run_id].metrics:
            return {"cell": task.cell, "status": RunStatus.FINISHED, "run_id": best.run_id, "skipped": "exported earlier"}
        task.run_id, task.label = best.run_id, f"best of its group: {best.cell.label}"
        task.spec, task.cell_of = self._spec_for(best.cell), best.cell.index
        return None

    def _export_done(self, task: Task, outcome: dict[str, Any], results) -> None:
        if outcome.get("status") == RunStatus.FINISHED:
            if not self.quiet and not outcome.get("skipped"):
                diff = outcome.get("onnx_max_abs_diff")
                self.console.print(f"  [green]exported[/] {task.label} (max |diff| {diff:.1e}, "
                                   f"{outcome.get('seconds', 0):.1f}s)", highlight=False)
            return
        res = results.get(task.cell_of)
        if res is not None:  # the model trained, but the sweep did not deliver what it promised
            res.status, res.error = RunStatus.FAILED, f"ONNX export: {outcome.get('error', '')}"
        if not self.quiet:
            self.console.print(f"  [red]export failed[/] {task.label}: {outcome.get('error', '')}", highlight=False)


@dataclass(frozen=True)
class Session:
    """Where a sweep's runs go while its parent run is open: the store (``mlflow``, experiment ``exp_id``), the parent,
    the scheduler of its workers and the progress display (None when quiet)."""

    mlflow: Any
    exp_id: str
    parent_id: str
    scheduler: Scheduler
    progress: Any = None


@dataclass
class Phase:
    """One schedule of a sweep's cells (a grid's every cell; a search's pretraining, trials or confirm runs): what
    the scheduler calls when a task becomes ready (reuse a finished run), starts and ends (record its run, end a
    run its dead worker left RUNNING, say how it went), over the sweep's ``results`` by cell index."""

    sweep: Sweep
    session: Session
    results: dict[int, CellResult]
    finished: dict[str, list[Any]]
    _bar: Any = None

    def bar(self, what: str, total: int) -> None:
        if self.session.progress is not None:
            self._bar = self.session.progress.add_task(what, total=total, info="")

    def resolve(self, task: Task) -> dict[str, Any] | None:
        sweep, results = self.sweep, self.results
        if task.kind == "export":
            return sweep._pick_best(task, results, self.session.mlflow.MlflowClient(), self.session.exp_id)
        res = results[task.cell]
        if res.cell.pretrain is not None:
            source = results[res.cell.pretrain.index]
            res.cell = res.cell.with_weights(f"runs:/{source.run_id}")
            task.spec = sweep._spec_for(res.cell)
        if res.cell.role == "trial":  # a sample of the search: a run of its own, reported to the study
            return None
        reuse = sweep._reusable(res.cell, self.finished)
        if reuse is None:
            return None
        return {"cell": task.cell, "status": RunStatus.FINISHED, "run_id": reuse.info.run_id, "reused": True}

    def on_start(self, task: Task) -> None:
        if self.session.progress is not None and self._bar is not None:
            self.session.progress.update(self._bar, info=task.label)

    def on_done(self, task: Task, outcome: dict[str, Any]) -> None:
        sweep, results, session = self.sweep, self.results, self.session
        mlflow, exp_id, parent_id = session.mlflow, session.exp_id, session.parent_id
        client = mlflow.MlflowClient()
        if session.progress is not None and self._bar is not None:
            session.progress.advance(self._bar)
        if task.kind == "export":
            sweep._export_done(task, outcome, results)
            return
        res = results[task.cell]
        res.status = outcome.get("status", RunStatus.FAILED)
        res.run_id = outcome.get("run_id")
        res.error = outcome.get("error", "")
        res.reused = bool(outcome.get("reused"))
        res.outcome = outcome
        if res.status != RunStatus.FINISHED and res.run_id is None:
            # A worker that died leaves its cell's run RUNNING: that run ends, else one records the failure.
            ended = RunStatus.KILLED if res.status == RunStatus.KILLED else RunStatus.FAILED
            res.run_id = end_left_run(client, exp_id, parent_id, task.cell, ended, res.error or res.status) \
                or record_failure(mlflow, parent_id, task.spec["tracking"]["run_name"],
                                  {**described(task.spec), **task.tags}, res.error or res.status, ended)
        if not sweep.quiet:
            marks: dict[str, str] = {RunStatus.FINISHED: "[green]done[/]", RunStatus.KILLED: "[yellow]killed[/]"}
            mark = marks.get(res.status, "[red]failed[/]")
            if res.reused:
                mark = "[dim]reused[/]"
            elif outcome.get("pruned"):
                mark = "[yellow]pruned[/]"
            extra = f"  {res.error}" if res.error and res.status != RunStatus.FINISHED else outcome.get("note", "")
            took = "" if res.reused else f" ({outcome.get('seconds', 0):.1f}s)"
            sweep.console.print(f"  {mark} {task.label}{took}{extra}", highlight=False, markup=True)
