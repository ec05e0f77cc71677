"""One experiment: spec -> data -> model -> stages -> evaluate -> export -> parity -> track."""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from tle.run import distributed
from tle.run import plots
from tle.run.assembly import assemble, check_input
from tle.contract.distributed import RankContext
from tle.contract.records import BlockCount, Trained
from tle.errors import UserError
from tle.contract.loop import Checkpointing, EpochRecord, History, Listeners, TrainLoop
from tle.progress import make_progress, print_warning
from tle.run.metrics import Report, classification_report
from tle.run.outputs import Output, export_and_check, export_extras, log_extras, save_weights
from tle.run.resume import CHECKPOINT_ARTIFACT, Resume
from tle.run.weights import resolve_weights
from tle.backends.manager import Backend, load_backend
from tle.contract.spec import ExperimentSpec
from tle.store.status import PRUNED_TAG, warning_tags
from tle.store.stored_run import SPEC_KEY, record_inputs, run_tags
from tle.contract.strategy import HEAD, Plan, Stage, Rates, Tuning, build_plan
from tle.contract.tuning import needs, selected

if TYPE_CHECKING:
    from tle.data import Dataset
    from tle.store.tracking import Tracker

__all__ = ["RunOptions", "RunResult", "SPEC_KEY", "rank_main", "check_capabilities", "check_counts", "default_run_name",
           "export_and_check", "export_extras", "freeze", "log_extras", "prepare", "run_experiment"]


@dataclass
class RunResult:
    run_id: str
    spec: ExperimentSpec
    plan: Plan
    history: History
    test: Report
    counts: list[list[BlockCount]] = field(default_factory=list)  # per stage
    onnx_max_abs_diff: float | None = None
    wall_seconds: float = 0.0
    device: str = "cpu"
    world_size: int = 1  # processes or replicas that trained it (train.distributed)
    # Seconds per part of the run (data, model, train, evaluate, report, weights, export, tracking):
    # what a sweep pays per cell beyond training is read from these.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best_val_acc(self) -> float:
        return self.history.best("val_acc")


def default_run_name(spec: ExperimentSpec) -> str:
    return f"{spec.backend}-{spec.model}-{spec.strategy}-{spec.dataset.source.split('/')[-1]}"


def check_counts(plan_stage: Stage, counts: list[BlockCount], backend: str) -> None:
    """The backend's freeze state must be exactly what the plan says; anything else is a backend bug. With
    ``train.params`` other than ``all``, a trainable block trains exactly its biases and/or normalisation
    parameters as the backend counts them; the head trains whole."""
    for c in counts:
        want = plan_stage.trainable.get(c.name)
        if want is None:
            continue
        expected = 0
        if want:
            expected = c.total if c.name == HEAD else selected(c.total, c.bias, c.norm, plan_stage.params)
        if c.trainable != expected:
            what = "frozen" if not want else "trainable" if plan_stage.params == "all" or c.name == HEAD else \
                f"training its {plan_stage.params} parameters ({expected})"
            raise RuntimeError(f"backend {backend!r} left block {c.name!r} with {c.trainable}/{c.total} trainable "
                               f"parameters in stage {plan_stage.index}; the plan says {what}")


def check_capabilities(spec: ExperimentSpec, backend: Backend) -> None:
    """Every ``train`` field the spec sets beyond its default is one the backend applies (``BackendInfo.
    capabilities``, see :mod:`tle.contract.tuning`): one line before anything runs otherwise."""
    missing = {cap: what for cap, what in needs(spec.train).items() if cap not in backend.info.capabilities}
    if missing:
        fields = ", ".join(missing.values())
        raise UserError(f"backend {spec.backend!r} cannot apply {fields} (it does not list "
                        f"{', '.join(missing)} among its capabilities)",
                        "leave those train fields at their defaults for this backend, or use --backend torch or keras")


def freeze(backend: Backend, model, stage: Stage) -> list[BlockCount]:
    """The backend's freeze state for ``stage``, checked against the plan: its parameter counts per block."""
    backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats,
                               params=stage.params)
    counts = list(backend.hook.count_parameters(model=model))
    check_counts(stage, counts, backend.info.name)
    return counts


def check_splits(data) -> None:
    """Split sizes a run can use, checked before MLflow is touched.

    The result of a run is its test accuracy, so the test split must hold an image; training needs two
    (BatchNorm cannot train on one) and every class; an empty validation split is allowed (val metrics NaN).
    """
    sizes = data.sizes()
    shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
    fix = "raise --max-per-class or give dataset.train/val/test as counts per class (e.g. --set dataset.test=2)"
    if sizes["test"] == 0:
        raise UserError(f"the test split of {data.name} is empty ({shown} images)", fix)
    missing = sorted(set(range(data.num_classes)) - set(np.asarray(data.y_train).tolist()))
    if sizes["train"] < 2 or missing:
        what = f"{sizes['train']} image(s)" if sizes["train"] < 2 else \
            f"no image of class {', '.join(data.class_names[i] for i in missing[:5])}"
        raise UserError(f"the training split of {data.name} has {what} ({shown} images)", fix)


def prepare(spec: ExperimentSpec) -> tuple[Backend, Plan]:
    """Everything that can be checked without data or a framework."""
    backend = load_backend(spec.backend)
    info = backend.model(spec.model)
    check_capabilities(spec, backend)
    plan = build_plan(spec.strategy, info.blocks, Rates.of(spec.train), Tuning.of(spec.train),
                      model=f"{spec.backend}/{spec.model}")
    if plan.strategy.needs_pretrained and spec.weights == "none":
        raise UserError(f"strategy {plan.strategy} starts from pretrained blocks but --weights is none",
                        "pass --weights imagenet, a weights file, runs:/RUN_ID or models:/NAME/VERSION")
    return backend, plan


class Stopwatch:
    """Accumulates wall seconds per named part of a run."""

    def __init__(self):
        self.parts: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - self._last
        self._last = now


@dataclass
class RunState:
    """One run on its way, as its parts pass it along."""

    spec: ExperimentSpec
    backend: Backend
    plan: Plan
    console: Console
    progress: Progress | None  # None when quiet
    quiet: bool
    started: float  # perf_counter at the start
    resume: Resume | None
    tags: dict[str, str]  # added to the run's own
    export: bool
    report: Callable[[EpochRecord], bool] | None = None  # RunOptions.report
    clock: Stopwatch = field(default_factory=Stopwatch)
    workdir: Path | None = None
    data: Dataset | None = None
    model: Any = None  # the backend's native model (opaque: it goes back into the hooks)
    run: Tracker | distributed._Silent | None = None  # what a rank other than 0 tracks with: nothing


@dataclass(frozen=True)
class RunOptions:
    """How one experiment runs, beside its spec: where it prints, what it continues, what it adds.

    ``tags`` are added to the run (a sweep's parent id, its axes); ``load_data`` replaces
    :func:`tle.data.load_dataset` (a warm sweep worker keeps the data of earlier cells); ``export`` overrides
    ``spec.export.onnx`` (a sweep exporting only its best cells trains the others without export); ``report`` sees
    each epoch once it is tracked and answers True to stop the run there (a search's pruner, :mod:`tle.run.trial`):
    the stage ends as for early stopping, no later stage trains, and the run is evaluated and ends FINISHED with what
    it trained, tagged ``tle.pruned``."""

    console: Console | None = None
    quiet: bool = False
    resume: Resume | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    load_data: Callable[..., Dataset] | None = None
    export: bool | None = None
    report: Callable[[EpochRecord], bool] | None = None


def run_experiment(spec: ExperimentSpec, options: RunOptions | None = None) -> RunResult | None:
    """Run one experiment.

    With ``train.distributed`` this process launches the ranks (see :mod:`tle.run.distributed`) and returns rank
    0's result; None on a node other than 0 and in ranks other than 0.
    """
    options = options or RunOptions()
    console, quiet, resume = options.console, options.quiet, options.resume
    console = console or Console(stderr=True)
    started = time.perf_counter()
    # Of the spec as given: a sweep matches its cells by it before any backend is loaded.
    key = (resume.spec_key if resume is not None else None) or spec.key()
    backend, plan = prepare(spec)
    spec = spec.with_defaults(backend.info.default_init)
    if resume is not None and "resume" not in backend.info.capabilities:
        raise UserError(f"backend {spec.backend!r} cannot resume runs", "start a new run instead")
    tags = {**options.tags, SPEC_KEY: key}
    export = bool(spec.export.onnx) if options.export is None else options.export
    if spec.train.distributed.active and distributed.current() is None:
        dplan = distributed.plan_for(spec, backend)
        if not dplan.in_process:
            from tle.store.tracking import environment_tags

            how = distributed.Launch(spec, backend, dplan, spec.tracking.run_name or default_run_name(spec),
                                     run_tags(spec, backend, str(plan.strategy), ",".join(dplan.devices),
                                              {**environment_tags(), **tags, **dplan.tags()}), console)
            job = distributed.RankJob(spec_data=spec.model_dump(mode="json"), run_id=None, resume=resume, tags=tags,
                                      export=export, quiet=quiet)
            return distributed.launch(how, job, rank_main)
        tags.update(dplan.tags())
    progress = make_progress(console, quiet)
    with progress if progress is not None else nullcontext():
        return _run(RunState(spec=spec, backend=backend, plan=plan, console=console, progress=progress, quiet=quiet,
                             started=started, resume=resume, tags=tags, export=export, report=options.report),
                    options.load_data)


def _run(state: RunState, load_data) -> RunResult | None:
    from tle.data import load_dataset
    from tle.store.tracking import configure, environment_tags, tracked_run

    spec, backend, plan, clock, resume = state.spec, state.backend, state.plan, state.clock, state.resume
    # Data errors surface before MLflow is touched, so a typo never creates an experiment or a run.
    data = state.data = (load_data or load_dataset)(spec.dataset, seed=spec.train.seed,
                                                    extra_sources=backend.dataset_sources(), progress=state.progress)
    clock.lap("data")
    check_splits(data)
    h, w, c = data.input_shape
    check_input(backend.model(spec.model), data.input_shape)
    if resume is not None and resume.fingerprint != data.fingerprint():
        raise UserError(f"the data of run {resume.run_id} changed since it started (other split or files)",
                        "start a new run")
    # A rank other than 0 tracks nothing; it needs the store only to fetch weights of an earlier run.
    needs_store = distributed.writes(distributed.current()) or spec.weights.startswith(("runs:/", "models:/"))
    mlflow = configure(spec.tracking.uri, spec.tracking.experiment) if needs_store else None
    clock.lap("tracking")
    workdir = state.workdir = Path(tempfile.mkdtemp(prefix="tle-run-"))
    try:
        rank = distributed.current()
        asked = rank.device if rank is not None else spec.train.device  # a rank's device is its launcher's choice
        device = backend.hook.resolve_device(device=asked) or "cpu"
        weights = resolve_weights(spec.weights, spec.backend, workdir, model=spec.model)
        state.model = assemble(backend.hook, spec, data, weights, reinit=plan.reinit, device=asked)
        clock.lap("model")

        tags = run_tags(spec, backend, str(plan.strategy), device, {**environment_tags(), **state.tags})
        name = spec.tracking.run_name or default_run_name(spec)
        with distributed.tracked(tracked_run, mlflow, rank, name=name, tags=tags,
                                 run_id=resume and resume.run_id) as run:
            state.run = run
            if not state.quiet:
                state.console.print(f"[bold]run[/] {run.run_id}  {default_run_name(spec)}  on {device}  "
                                    f"data {data.sizes()} {h}x{w}x{c}" + (f", {data.skipped} files skipped"
                                                                           if data.skipped else ""))
            if resume is None:
                record_inputs(run, spec, data)
            clock.lap("tracking")
            result = _train_and_report(state)
            if result is None:  # a rank other than 0: rank 0 reports
                return None
            result.device = device
            result.world_size = rank.world_size if rank is not None else int(tags.get("distributed.world_size", 1))
            result.wall_seconds = time.perf_counter() - state.started
            result.timings = dict(clock.parts)
            run.metrics({"wall_seconds": result.wall_seconds,
                         **{f"seconds_{k}": v for k, v in result.timings.items()}})
            return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _train_and_report(state: RunState) -> RunResult | None:
    spec, backend, plan, data, model, run = state.spec, state.backend, state.plan, state.data, state.model, state.run
    resume, clock, workdir, hook = state.resume, state.clock, state.workdir, state.backend.hook
    assert data is not None and run is not None and workdir is not None, "_run sets them before it trains"
    history = History(list(resume.history.records)) if resume else History()
    checkpoint = _checkpoint_path(spec, backend, workdir)
    resume_from = resume.checkpoint if resume else None

    def on_epoch(record) -> bool:
        run.epoch(record)
        if checkpoint is not None and checkpoint.parent.is_dir():
            run.artifact(checkpoint.parent, CHECKPOINT_ARTIFACT)
        return state.report is not None and state.report(record)

    warnings: list[str] = []

    def on_warning(message: str, tags: dict[str, str]) -> None:
        # Shown even with --quiet: the run goes on, but its result is not what the user asked for.
        print_warning(state.console, message)
        warnings.append(message)
        run.tags({**tags, **warning_tags(warnings)})

    all_counts: list[list[BlockCount]] = []
    step = 0
    train_started = time.perf_counter()
    for stage in plan.stages:
        counts = freeze(backend, model, stage)
        all_counts.append(counts)
        total = sum(c.total for c in counts)
        trainable = sum(c.trainable for c in counts)
        run.metrics({f"trainable_params_stage{stage.index}": trainable, "total_params": total})
        done = resume.done(stage.index) if resume else 0
        if done >= stage.epochs:
            step += done
            continue
        loop = TrainLoop(stage, history, step_offset=step, patience=spec.train.early_stopping,
                         listeners=Listeners(on_epoch, on_warning, state.progress),
                         checkpointing=Checkpointing(checkpoint, resume_from, done))
        trained = hook.train(model=model, data=data, stage=stage, train=spec.train, loop=loop)
        loop.close()
        if isinstance(trained, Trained) and trained.metrics:  # a backend not yet returning Trained logs nothing more
            run.metrics({f"stage{stage.index}_{k}": v for k, v in trained.metrics.items()})
        resume_from = None  # only the first stage trained after an interruption starts from the checkpoint
        step += loop.epochs_done
        if loop.halted:
            run.tags({PRUNED_TAG: f"after epoch {loop.epochs_done} of stage {stage.index} ({stage.name})"})
            break
    clock.lap("train")
    run.metrics({"train_seconds": time.perf_counter() - train_started,
                 "trainable_params": sum(c.trainable for c in all_counts[0]),
                 "frozen_params": sum(c.total - c.trainable for c in all_counts[0])})
    if not distributed.writes(distributed.current()):
        return None  # the replicas are equal: rank 0 alone evaluates, reports and exports

    evaluation = hook.evaluate(model=model, images=data.x_test, labels=data.y_test, batch_size=spec.train.batch_size)
    report = classification_report(data.y_test, evaluation.logits, evaluation.loss, data.class_names)
    clock.lap("evaluate")
    run.metrics({"test_acc": report.accuracy, "test_loss": report.loss, "test_f1_macro": report.macro_f1,
                 "best_val_acc": history.best("val_acc"), "epochs_trained": len(history.records)})
    run.json(report.as_dict(), "test_report.json")
    log_extras(run, evaluation.extras, "test")
    title = default_run_name(spec)
    plots.learning_curves(history, workdir / "learning_curves.png", title)
    plots.confusion_matrix(report.confusion, data.class_names, workdir / "confusion_matrix.png", title)
    run.artifact(workdir / "learning_curves.png", "plots")
    run.artifact(workdir / "confusion_matrix.png", "plots")
    clock.lap("report")

    out = Output(hook, model, run, workdir, console=None if state.quiet else state.console)
    save_weights(out)
    clock.lap("weights")

    result = RunResult(run.run_id, spec, plan, history, report, all_counts)
    if state.export:
        result.onnx_max_abs_diff = export_and_check(spec, data, out)
        export_extras(out)
        clock.lap("export")
    return result


def _checkpoint_path(spec, backend, workdir: Path) -> Path | None:
    """Where the backend writes its per-epoch checkpoint (it may add a suffix); None when off."""
    if not spec.train.checkpoint or "resume" not in backend.info.capabilities:
        return None
    folder = workdir / CHECKPOINT_ARTIFACT
    folder.mkdir(exist_ok=True)
    return folder / "last"


def rank_main(context: RankContext, job: distributed.RankJob) -> RunResult | None:
    """One rank of a distributed run: the whole experiment, tracked by rank 0 into ``job.run_id``. Fired by the
    backend's launcher in each process it starts, with the process group up; a failure is recorded for the
    launcher as one line (:func:`tle.run.distributed.fail`)."""
    distributed.enter(context, job.run_id)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        spec = ExperimentSpec.model_validate(job.spec_data)
        result = run_experiment(spec, RunOptions(console=Console(stderr=True), quiet=job.quiet or context.rank != 0,
                                                 resume=job.resume, tags=job.tags, export=job.export))
        return result if context.rank == 0 else None
    except BaseException as exc:
        raise distributed.fail(job, context, exc) from None
