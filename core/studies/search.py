"""``tle sweep`` with a ``search:`` section: one Optuna study per cell of the axes, its trials run as the sweep's cells
on the same warm workers (or Ray), nested under one parent run, and the answer confirmed over seeds.

The sweep's process asks and tells (Optuna's ask-and-tell interface); workers train:

1. **Pretraining**, as a grid's: one backbone per study, built from the study's cell before any field is searched.
2. **Trials**: whenever a worker is free the sweep asks the study with the fewest trials so far for one (its sampler
   sees every trial told until then) and hands it to the worker as a cell: a nested run of the parent with the
   sampled values in its spec (its params), as ``search.<field>`` tags and ``tle.trial`` (Optuna's trial number).
   The worker reports the metric to the study every epoch and asks the study's pruner (:mod:`tle.run.trial`); a
   pruned trial ends its run FINISHED with the epochs it trained, tagged ``tle.pruned``. The sweep then tells the
   study: complete with the trial's best epoch, pruned, or failed.
3. **Confirm**: the ``top`` best completed configurations of each study, and the baseline (``against``), run over
   the confirm seeds (a run that already exists for a spec, such as the trial itself at its seed, is reused).
4. **The answer** (:mod:`tle.studies.search_answer`): the best trials, the confirmed configurations as mean ± sd
   with the ▲/▼ rule against the baseline, Optuna's parameter importances and plots on the parent run.

**Storage.** The studies live in one Optuna storage that the sweep and every worker open: by default a journal
file beside a SQLite tracking store (``mlflow.db`` -> ``mlflow.optuna.journal``; Optuna's JournalFileBackend, an
append-only log under a file lock, safe for many processes on one host), or ``./tle-search.optuna.journal`` with
a tracking server. ``search.storage`` names another: a journal file's path, or an RDB URL (``postgresql://``,
``mysql://``) that every node of a Ray cluster reaches; a search on a Ray cluster (``--address``) must name one.

**Resume.** Running the sweep again reopens its parent run and its studies: finished and pruned trials stay, a trial
left running by an interrupted sweep is marked failed (``tle.interrupted``) and its configuration enqueued to run
again first, and the studies go on until each holds ``trials`` finished, pruned or failed trials (raise
``trials`` to search further). One sweep at a time may run a study (a lock beside a journal file).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tle.analysis.axes import PRETRAIN, SEED_AXIS
from tle.contract.spec import build_spec, set_dotted
from tle.errors import UserError
from tle.run.trial import TrialRef, make_pruner, open_storage, quiet_optuna
from tle.store.status import RunStatus
from tle.studies.grid import Cell, Grid
from tle.studies.search_answer import SearchAnswer, answer, best_trials, log_answer, short_value
from tle.studies.search_spec import SearchSpec
from tle.studies.sweep import CellResult, Executor, Phase, Session, Sweep, SweepResult, TableLayout, check_cells
from tle.studies.sweep_store import finished_by_key
from tle.workers.schedule import Scheduler, Task

INTERRUPTED = "tle.interrupted"  # user attr of a trial an interrupted sweep left running (marked failed, re-run)
RERUN_OF = "tle.rerun_of"  # user attr of the trial that re-runs it
RUN_ID = "tle.run_id"  # user attr: the trial's MLflow run
TRIAL_TAG, STUDY_TAG = "tle.trial", "tle.study"
# Cell ids: a trial's (from its study and number) is unique for good, so a run a dead worker left RUNNING is its own.
TRIAL_BASE, CONFIRM_BASE = 1_000_000, 900_000_000


@dataclass
class StudyRun:
    """One study: a cell of the axes (``cell``, its spec before any field is searched), searched."""

    index: int
    cell: Cell
    name: str
    study: Any  # optuna.Study
    pretrain: Cell | None = None
    running: int = 0
    blocked: str = ""  # why it cannot run trials (its pretraining failed)

    @property
    def label(self) -> str:
        return self.cell.label if self.cell.axes else "all"

    def counted(self) -> int:
        """Trials that spent the budget: finished, pruned, or failed other than by an interruption."""
        from optuna.trial import TrialState

        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        return sum(not t.user_attrs.get(INTERRUPTED) for t in done)


class Search(Sweep):
    """A sweep whose cells are searched (see the module's docstring)."""

    def __init__(self, grid: Grid, executor: Executor = Executor(), layout: TableLayout = TableLayout(), *,
                 tracking_uri: str | None = None, console=None, quiet: bool = False):
        assert grid.search is not None, "a Search needs a search: section"
        super().__init__(grid, executor, layout, tracking_uri=tracking_uri, console=console, quiet=quiet)
        self.search: SearchSpec = grid.search
        self.bases = [c for c in self.cells if c.role != PRETRAIN]  # one study each
        self.probes = {c.index: grid.search_probes(c) for c in self.bases}
        check_cells([p for probes in self.probes.values() for p in probes])
        self.storage = self._storage_location()
        self.pruner = self._pruner_spec()
        self.studies: list[StudyRun] = []  # opened before the parent run (_before_parent)
        self._run: _Run | None = None
        self._sampler(0)  # Optuna's arguments checked now, before any run
        make_pruner(self.pruner)

    # -- set-up, checked before the parent run exists ---------------------------

    def _storage_location(self) -> str:
        from tle.store.lock import sqlite_path

        given = self.search.storage
        if given:
            return given if "://" in given else str(Path(given).expanduser().resolve())
        if self.executor == "ray" and self.address:
            raise UserError(f"a search on the Ray cluster {self.address} needs a study storage every node reaches",
                            "set search.storage to a database URL (postgresql://...) or to a journal file on a file "
                            "system every node mounts")
        db = sqlite_path(self.uri)
        return str(db.parent / f"{db.stem}.optuna.journal") if db else str(Path.cwd() / "tle-search.optuna.journal")

    def _pruner_spec(self) -> dict[str, Any]:
        kwargs = dict(self.search.pruner_kwargs)
        if self.search.pruner == "hyperband" and "max_resource" not in kwargs:
            kwargs["max_resource"] = max(self._epochs(p) for probes in self.probes.values() for p in probes)
        return {"name": self.search.pruner, "kwargs": kwargs}

    @staticmethod
    def _epochs(cell: Cell) -> int:
        """Epochs a full trial of ``cell`` trains, over its stages: the pruner's resource."""
        from tle.run.runner import prepare

        spec = cell.spec if cell.spec.weights != PRETRAIN else cell.spec.model_copy(update={"weights": "runs:/x"})
        return sum(stage.epochs for stage in prepare(spec)[1].stages)

    def _sampler(self, offset: int):
        """Optuna's sampler, seeded ``seed + offset`` (the trials a resumed study holds: it draws on, not again)."""
        optuna = quiet_optuna()
        s = self.search
        kwargs = dict(s.sampler_kwargs)
        kwargs.setdefault("seed", s.seed + offset)
        if s.sampler == "tpe" and self.jobs > 1:
            kwargs.setdefault("constant_liar", True)  # trials running in parallel count as bad while they run
        kinds = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                 "cmaes": optuna.samplers.CmaEsSampler, "grid": optuna.samplers.GridSampler}
        if s.sampler == "grid":
            kwargs.setdefault("search_space", s.grid_points())
        try:
            return kinds[s.sampler](**kwargs)
        except (TypeError, ValueError, ImportError) as exc:
            raise UserError(f"search.sampler {s.sampler}: {str(exc).splitlines()[0]}",
                            "give Optuna's arguments of that sampler") from None

    def _study_name(self, cell: Cell) -> str:
        body = json.dumps([self.grid.name, self.search.key_text(), cell.spec.key(), self.grid.pretrain],
                          sort_keys=True, default=str)
        return f"{self.grid.name} [{cell.label if cell.axes else 'all'}] {hashlib.sha256(body.encode()).hexdigest()[:10]}"

    @contextmanager
    def _only_sweep(self) -> Iterator[None]:
        """One sweep at a time on a journal file's studies: on resume the sweep fails the trials left running, which
        would be another sweep's running ones."""
        if "://" in self.storage:
            yield
            return
        from filelock import FileLock, Timeout

        Path(self.storage).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.storage + ".sweep.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"another tle sweep is running the studies in {self.storage}",
                            "wait for it to end, or stop it (its trials continue when you run this sweep again)") from None
        try:
            yield
        finally:
            lock.release()

    def _open_studies(self) -> list[StudyRun]:
        """Create or load each study; a trial an interrupted sweep left running is failed and enqueued again."""
        optuna = quiet_optuna()
        from optuna.trial import TrialState

        try:
            storage = open_storage(self.storage)
        except Exception as exc:
            raise UserError(f"cannot open the search's storage {self.storage}: {str(exc).splitlines()[0]}",
                            "check search.storage (a journal file's path or a database URL)") from None
        studies = []
        for i, cell in enumerate(self.bases):
            study = optuna.create_study(study_name=self._study_name(cell), storage=storage,
                                        direction=self.search.direction, pruner=make_pruner(self.pruner),
                                        load_if_exists=True)
            trials = study.get_trials(deepcopy=False)
            study.sampler = self._sampler(len(trials))
            run = StudyRun(i, cell, study.study_name, study)
            for left in (t for t in trials if t.state == TrialState.RUNNING):
                self._requeue(run, left)
            if not trials:
                for config in self.search.enqueue:
                    study.enqueue_trial(config)
            studies.append(run)
        return studies

    @staticmethod
    def _requeue(run: StudyRun, trial) -> None:
        """``trial`` (frozen or live) was interrupted: failed, marked, and its configuration enqueued to run again."""
        from optuna.trial import TrialState

        storage, trial_id = run.study._storage, trial._trial_id
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        run.study.enqueue_trial(dict(trial.params), user_attrs={RERUN_OF: trial.number})

    # -- running (Sweep's parent run around these) ---------------------------------

    units = "runs"

    @contextmanager
    def _before_parent(self) -> Iterator[None]:
        with self._only_sweep():
            self.studies = self._open_studies()
            yield

    def _parent_tags(self) -> dict[str, str]:
        return {"tle.search": self.search.sampler, "tle.search.storage": self.storage,
                "tle.search.studies": "\n".join(s.name for s in self.studies)[:5000]}

    def _parent_params(self) -> dict[str, str]:
        s = self.search
        return {**super()._parent_params(), "search.metric": s.metric, "search.direction": s.direction,
                "search.sampler": s.sampler, "search.pruner": s.pruner,
                **{f"search.space.{k}": d.text() for k, d in s.space.items()}}

    def _schedule(self, session: Session) -> list[CellResult]:
        self._run = run = _Run(self, session, self.studies, {})
        run.pretrain()
        run.trials()
        run.confirm()
        return [run.results[i] for i in sorted(run.results)]

    def _conclude(self, sweep: SweepResult, client, exp_id: str) -> SearchAnswer:
        assert self._run is not None, "_schedule ran"
        table = answer(self, self.studies, self._run.confirmed, sweep, client, exp_id)
        log_answer(sweep, table, self.studies)
        return table

    def trial_cell(self, study: StudyRun, params: dict[str, Any], index: int, role: str,
                   axes: dict[str, Any]) -> Cell:
        """The study's cell with ``params`` set (and ``train.seed`` when ``axes`` has it), starting from the study's
        pretraining run when its strategy needs one."""
        tree = copy.deepcopy(study.cell.tree or {})
        for key, value in params.items():
            set_dotted(tree, key, value)
        if SEED_AXIS in axes:
            set_dotted(tree, SEED_AXIS, axes[SEED_AXIS])
        cell = Cell(index, {**study.cell.axes, **axes}, build_spec(tree), role=role, tree=tree)
        cell = self.grid.attach_pretrain(cell, study.cell.tree or {}, {})
        if cell.pretrain is not None:
            cell.pretrain = study.pretrain
        return cell


@dataclass
class _Run:
    """One search's phases on one scheduler (the workers stay warm between them)."""

    search: Search
    session: Session
    studies: list[StudyRun]
    results: dict[int, CellResult]
    confirmed: dict[int, list[tuple[str, Cell]]] = field(default_factory=dict)  # study -> (config, cell)

    @property
    def parent_id(self) -> str:
        return self.session.parent_id

    @property
    def scheduler(self) -> Scheduler:
        return self.session.scheduler

    def _phase(self, what: str, total: int) -> Phase:
        session = self.session
        phase = Phase(self.search, session, self.results,
                      finished_by_key(session.mlflow.MlflowClient(), session.exp_id))
        phase.bar(what, total)
        return phase

    def pretrain(self) -> None:
        """Each study's backbone, when a configuration it may sample starts from pretrained blocks."""
        s = self.search
        pretrains: dict[str, Cell] = {}
        for study in self.studies:
            if any(p.pretrain is not None for p in s.probes[study.cell.index]) or study.cell.pretrain is not None:
                study.pretrain = s.grid.pretrain_cell(study.cell.tree or {}, pretrains)
        cells = list(pretrains.values())
        if not cells:
            return
        for i, cell in enumerate(cells):
            cell.index = i
            self.results[i] = CellResult(cell)
        if not s.quiet:
            s.console.print(f"search {s.grid.name}: {len(cells)} pretraining run(s)", highlight=False)
        phase = self._phase("pretraining", len(cells))
        self.scheduler.run([s._task(c, self.parent_id) for c in cells], on_start=phase.on_start,
                           on_done=phase.on_done, resolve=phase.resolve)
        for study in self.studies:
            if study.pretrain is not None and self.results[study.pretrain.index].status != RunStatus.FINISHED:
                study.blocked = f"its pretraining run ended {self.results[study.pretrain.index].status}"

    def trials(self) -> None:
        s, search = self.search, self.search.search
        left = {st.index: max(0, search.trials - st.counted()) for st in self.studies if not st.blocked}
        total = sum(left.values())
        if not s.quiet:
            done = sum(search.trials - n for n in left.values())
            s.console.print(f"search {s.grid.name}: {len(self.studies)} stud{'y' if len(self.studies) == 1 else 'ies'}"
                            f" × {search.trials} trials ({done} done before, {total} to run; sampler {search.sampler}, "
                            f"pruner {search.pruner} on {search.metric}) on up to {s.jobs} {s.executor} worker(s)",
                            highlight=False)
        phase = self._phase("trials", total)
        running: dict[int, tuple[StudyRun, Any]] = {}
        distributions = search.distributions()

        def supply(free: int) -> list[Task]:
            tasks = []
            for _ in range(free):
                open_ = [st for st in self.studies if left.get(st.index, 0) > 0]
                if not open_:
                    break
                study = min(open_, key=lambda st: (search.trials - left[st.index], st.index))
                left[study.index] -= 1
                trial = study.study.ask(distributions)
                index = TRIAL_BASE + study.index * 100_000 + trial.number
                cell = s.trial_cell(study, trial.params, index, "trial", {"trial": trial.number})
                self.results[index] = CellResult(cell)
                running[index] = (study, trial)
                task = s._task(cell, self.parent_id)
                task.tags.update({TRIAL_TAG: str(trial.number), STUDY_TAG: study.name,
                                  **{f"search.{k}": str(v) for k, v in trial.params.items()}})
                if RERUN_OF in trial.user_attrs:
                    task.tags[f"{TRIAL_TAG}.rerun_of"] = str(trial.user_attrs[RERUN_OF])
                task.label = f"{cell.label} " + " ".join(f"{k}={short_value(v)}" for k, v in trial.params.items())
                ref = TrialRef(s.storage, study.name, trial._trial_id, trial.number, search.metric, search.direction,
                               s.pruner)
                task.options = {"trial": ref.message(), "export": False}
                tasks.append(task)
            return tasks

        def on_done(task: Task, outcome: dict[str, Any]) -> None:
            study, trial = running.pop(task.cell)
            value = outcome.get("value")
            if outcome.get("status") == RunStatus.FINISHED and value is not None:
                outcome["note"] = f"  {search.metric} {value:.4f}" + (
                    f" (pruned after {outcome.get('reported')} epochs)" if outcome.get("pruned") else "")
            phase.on_done(task, outcome)
            self._tell(study, trial, outcome, self.results[task.cell])

        self.scheduler.run([], on_start=phase.on_start, on_done=on_done, resolve=phase.resolve, supply=supply)

    @staticmethod
    def _tell(study: StudyRun, trial, outcome: dict[str, Any], result: CellResult) -> None:
        from optuna.trial import TrialState

        if result.run_id:
            trial.set_user_attr(RUN_ID, result.run_id)
        trial.set_user_attr("tle.epochs", int(outcome.get("reported") or 0))
        status = outcome.get("status")
        if status == RunStatus.KILLED:
            Search._requeue(study, trial)
        elif status != RunStatus.FINISHED or outcome.get("value") is None:
            trial.set_user_attr("tle.error", str(result.error or "no value of the metric was reported")[:1000])
            study.study.tell(trial, state=TrialState.FAIL)
        elif outcome.get("pruned"):
            study.study.tell(trial, state=TrialState.PRUNED)
        else:
            study.study.tell(trial, float(outcome["value"]))

    def confirm(self) -> None:
        """The best configurations of each study, and its baseline, over the confirm seeds; then the ONNX export of
        each configuration's best seed when the spec asks for one."""
        s, confirm = self.search, self.search.search.confirm
        if confirm is None:
            return
        cells: list[Cell] = []
        index = CONFIRM_BASE
        for study in self.studies:
            if study.blocked:
                continue
            configs = [(f"#{rank} (trial {t.number})", dict(t.params), "confirm")
                       for rank, t in enumerate(best_trials(study.study, confirm.top), start=1)]
            if configs and confirm.against in ("base", "scratch"):
                configs.append((confirm.against, {"strategy": "scratch", "weights": "none"}
                                if confirm.against == "scratch" else {}, "baseline"))
            for config, params, role in configs:
                for seed in confirm.seeds:
                    cell = s.trial_cell(study, params, index, role, {"config": config, SEED_AXIS: seed})
                    self.confirmed.setdefault(study.index, []).append((config, cell))
                    cells.append(cell)
                    self.results[index] = CellResult(cell)
                    index += 1
        if not cells:
            return
        exports = s._export_tasks([c for c in cells if c.role == "confirm"], index, kinds=(True, "best"))
        if not s.quiet:
            s.console.print(f"search {s.grid.name}: confirm {len(cells)} run(s) over seeds "
                            f"{', '.join(map(str, confirm.seeds))}" + (f"; then ONNX export of the best seed of "
                                                                       f"{len(exports)} configuration(s)" if exports
                                                                       else ""), highlight=False)
        phase = self._phase("confirm", len(cells) + len(exports))
        tasks = []
        for cell in cells:
            task = s._task(cell, self.parent_id)
            task.options = {"export": False}
            tasks.append(task)
        self.scheduler.run(tasks + exports, on_start=phase.on_start, on_done=phase.on_done, resolve=phase.resolve)


