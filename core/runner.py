"""One experiment: spec -> data -> model -> stages -> evaluate -> export -> parity -> track."""

from __future__ import annotations

import shutil
from contextlib import nullcontext
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from tle import distributed, plots
from tle.contracts import BlockCount, ExportMetadata
from tle.errors import UserError
from tle.loop import History, TrainLoop
from tle.progress import make_progress
from tle.metrics import Report, classification_report
from tle.resume import CHECKPOINT_ARTIFACT, Resume
from tle.plugins import Backend, load_backend
from tle.spec import ExperimentSpec
from tle.strategy import HEAD, Plan, Stage, build_plan
from tle.weights import CLASS_NAMES_ARTIFACT, WEIGHTS_ARTIFACT, resolve_weights

SPEC_KEY = "tle.spec_key"  # tag: ExperimentSpec.key() of the spec as given (a sweep's resume matches on it)


class ParityError(RuntimeError):
    """The ONNX model disagrees with the framework beyond the tolerance."""


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


def run_tags(spec: ExperimentSpec, backend: Backend, plan: Plan, device: str, extra: dict[str, str]) -> dict[str, str]:
    return {"backend": spec.backend, "model": spec.model, "dataset": spec.dataset.source,
            "strategy": str(plan.strategy), "init": str(spec.init), "weights": spec.weights,
            "device": device, "framework": backend.info.framework,
            "framework_version": backend.info.framework_version, **extra}


def default_run_name(spec: ExperimentSpec) -> str:
    return f"{spec.backend}-{spec.model}-{spec.strategy}-{spec.dataset.source.split('/')[-1]}"


def check_counts(plan_stage: Stage, counts: list[BlockCount], backend: str) -> None:
    """The backend's freeze state must be exactly what the plan says; anything else is a backend bug."""
    for c in counts:
        want = plan_stage.trainable.get(c.name)
        if want is None:
            continue
        if (want and c.trainable != c.total) or (not want and c.trainable != 0):
            raise RuntimeError(f"backend {backend!r} left block {c.name!r} with {c.trainable}/{c.total} trainable "
                               f"parameters in stage {plan_stage.index}; the plan says "
                               f"{'trainable' if want else 'frozen'}")


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
    t = spec.train
    plan = build_plan(spec.strategy, info.blocks, epochs=t.epochs, lr=t.lr, finetune_epochs=t.finetune_epochs,
                      finetune_lr=t.finetune_lr, batchnorm=t.batchnorm, model=f"{spec.backend}/{spec.model}")
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


def run_experiment(spec: ExperimentSpec, console: Console | None = None, quiet: bool = False,
                   resume: Resume | None = None, tags: dict[str, str] | None = None,
                   load_data=None, export: bool | None = None) -> RunResult:
    """Run one experiment.

    ``tags`` are added to the run (a sweep's parent id, its axes); ``load_data``
    replaces :func:`tle.data.load_dataset` (a warm sweep worker keeps the data of
    earlier cells); ``export`` overrides ``spec.export.onnx`` (a sweep exporting
    only its best cells trains the others without export). With
    ``train.distributed`` this process launches the ranks (see :mod:`tle.distributed`)
    and returns rank 0's result; None on a node other than 0 and in ranks other than 0.
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    # Of the spec as given: a sweep matches its cells by it before any backend is loaded.
    key = (resume.spec_key if resume is not None else None) or spec.key()
    backend, plan = prepare(spec)
    spec = spec.with_defaults(backend.info.default_init)
    if resume is not None and "resume" not in backend.info.capabilities:
        raise UserError(f"backend {spec.backend!r} cannot resume runs", "start a new run instead")
    tags = {**(tags or {}), SPEC_KEY: key}
    export = bool(spec.export.onnx) if export is None else export
    if spec.train.distributed.active and distributed.current() is None:
        dplan = distributed.plan_for(spec, backend)
        if not dplan.in_process:
            from tle.tracking import environment_tags

            return distributed.launch(spec, backend, dplan, run_tags(spec, backend, plan, ",".join(dplan.devices),
                                                                     {**environment_tags(), **tags, **dplan.tags()}),
                                      spec.tracking.run_name or default_run_name(spec), quiet, resume, tags, export,
                                      console)
        tags.update(dplan.tags())
    progress = make_progress(console, quiet)
    with progress if progress is not None else nullcontext():
        return _run(spec, backend, plan, console, progress, quiet, started, resume, tags, load_data, export)


def _run(spec, backend, plan, console, progress, quiet, started, resume, extra_tags, load_data,
         export) -> RunResult:
    from tle.data import load_dataset
    from tle.tracking import configure, environment_tags, tracked_run

    clock = Stopwatch()
    info = backend.model(spec.model)
    # Data errors surface before MLflow is touched, so a typo never creates an experiment or a run.
    data = (load_data or load_dataset)(spec.dataset, seed=spec.train.seed, extra_sources=backend.dataset_sources(),
                                       progress=progress)
    clock.lap("data")
    check_splits(data)
    h, w, c = data.input_shape
    if min(h, w) < info.min_size:
        raise UserError(f"{spec.model} needs images of at least {info.min_size}px, the data is {h}x{w}",
                        f"set --image-size {max(info.min_size, info.default_size or 0)}")
    if resume is not None and resume.fingerprint != data.fingerprint():
        raise UserError(f"the data of run {resume.run_id} changed since it started (other split or files)",
                        "start a new run")
    # A rank other than 0 tracks nothing; it needs the store only to fetch weights of an earlier run.
    needs_store = distributed.writes(distributed.current()) or spec.weights.startswith(("runs:/", "models:/"))
    mlflow = configure(spec.tracking.uri, spec.tracking.experiment) if needs_store else None
    clock.lap("tracking")
    workdir = Path(tempfile.mkdtemp(prefix="tle-run-"))
    try:
        weights = resolve_weights(spec.weights, spec.backend, workdir, model=spec.model)
        hook = backend.hook
        rank = distributed.current()
        asked = rank.device if rank is not None else spec.train.device  # a rank's device is its launcher's choice
        device = hook.resolve_device(device=asked) or "cpu"
        model = hook.load_backbone(model=spec.model, num_classes=data.num_classes,
                                   class_names=list(data.class_names), input_shape=data.input_shape,
                                   head=spec.head, weights=weights, device=asked,
                                   precision=spec.train.precision, seed=spec.train.seed)
        # The head was drawn (or kept) by load_backbone; only backbone blocks are re-initialised here.
        hook.apply_init(model=model, blocks=[b for b in plan.reinit if b != HEAD], init=spec.init,
                        seed=spec.train.seed)
        clock.lap("model")

        tags = run_tags(spec, backend, plan, device, {**environment_tags(), **extra_tags})
        name = spec.tracking.run_name or default_run_name(spec)
        with distributed.tracked(tracked_run, mlflow, rank, name=name, tags=tags,
                                 run_id=resume and resume.run_id) as run:
            if not quiet:
                console.print(f"[bold]run[/] {run.run_id}  {default_run_name(spec)}  on {device}  "
                              f"data {data.sizes()} {h}x{w}x{c}" + (f", {data.skipped} files skipped"
                                                                     if data.skipped else ""))
            if resume is None:
                run.params(spec.flat())
                run.params({"data.fingerprint": data.fingerprint(), "data.num_classes": data.num_classes,
                            **{f"data.{k}_size": v for k, v in data.sizes().items()}, "data.skipped": data.skipped,
                            "data.input_shape": f"{h}x{w}x{c}"})
                run.text(spec.to_yaml(), "spec.yaml")
                run.json(data.class_names, CLASS_NAMES_ARTIFACT)
                run.datasets(data)
            clock.lap("tracking")
            result = _train_and_report(spec, backend, plan, data, model, run, console, progress, quiet, workdir,
                                       resume, clock, export)
            if result is None:  # a rank other than 0: rank 0 reports
                return None
            result.device = device
            result.world_size = rank.world_size if rank is not None else int(tags.get("distributed.world_size", 1))
            result.wall_seconds = time.perf_counter() - started
            result.timings = dict(clock.parts)
            run.metrics({"wall_seconds": result.wall_seconds,
                         **{f"seconds_{k}": v for k, v in result.timings.items()}})
            return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _train_and_report(spec, backend, plan, data, model, run, console, progress, quiet, workdir,
                      resume, clock: Stopwatch, export: bool) -> RunResult:
    hook = backend.hook
    history = History(list(resume.history.records)) if resume else History()
    checkpoint = _checkpoint_path(spec, backend, workdir)
    resume_from = resume.checkpoint if resume else None

    def on_epoch(record):
        run.epoch(record)
        if checkpoint is not None and checkpoint.parent.is_dir():
            run.artifact(checkpoint.parent, CHECKPOINT_ARTIFACT)

    warnings: list[str] = []

    def on_warning(message: str, tags: dict[str, str]) -> None:
        # Shown even with --quiet: the run goes on, but its result is not what the user asked for.
        from rich.markup import escape

        console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
        warnings.append(message)
        run.tags({**tags, "tle.warning": "\n".join(warnings)[:5000]})

    all_counts: list[list[BlockCount]] = []
    step = 0
    train_started = time.perf_counter()
    for stage in plan.stages:
        hook.freeze_policy(model=model, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
        counts = list(hook.count_parameters(model=model))
        check_counts(stage, counts, spec.backend)
        all_counts.append(counts)
        total = sum(c.total for c in counts)
        trainable = sum(c.trainable for c in counts)
        run.metrics({f"trainable_params_stage{stage.index}": trainable, "total_params": total})
        done = resume.done(stage.index) if resume else 0
        if done >= stage.epochs:
            step += done
            continue
        loop = TrainLoop(stage, step_offset=step, history=history, on_epoch=on_epoch, progress=progress,
                         patience=spec.train.early_stopping, start_epoch=done, checkpoint_path=checkpoint,
                         resume_from=resume_from, on_warning=on_warning)
        hook.train(model=model, data=data, stage=stage, train=spec.train, loop=loop)
        loop.close()
        resume_from = None  # only the first stage trained after an interruption starts from the checkpoint
        step += loop.epochs_done
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

    weights_dir = workdir / WEIGHTS_ARTIFACT
    weights_dir.mkdir()
    hook.save_weights(model=model, directory=weights_dir)
    run.artifact(weights_dir, WEIGHTS_ARTIFACT)
    clock.lap("weights")

    result = RunResult(run.run_id, spec, plan, history, report, all_counts)
    if export:
        result.onnx_max_abs_diff = export_and_check(spec, hook, model, data, run, workdir, console, quiet)
        export_extras(hook, model, run, workdir)
        clock.lap("export")
    return result


def log_extras(run, extras: dict | None, prefix: str) -> None:
    """What a backend observed beside the logits: numbers as ``{prefix}_NAME`` metrics, the rest as JSON."""
    if not extras:
        return
    numbers = {f"{prefix}_{k}": float(v) for k, v in extras.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run.metrics(numbers)
    rest = {k: v for k, v in extras.items() if f"{prefix}_{k}" not in numbers}
    if rest:
        run.json(rest, f"{prefix}_extras.json")


def export_extras(hook, model, run, workdir: Path) -> None:
    """Other exported forms a backend offers (a spiking net's NIR graph), logged under ``export/``."""
    folder = workdir / "export"
    folder.mkdir(exist_ok=True)
    if hook.export_extras(model=model, directory=folder) and any(folder.iterdir()):
        run.artifact(folder, "export")


def _checkpoint_path(spec, backend, workdir: Path) -> Path | None:
    """Where the backend writes its per-epoch checkpoint (it may add a suffix); None when off."""
    if not spec.train.checkpoint or "resume" not in backend.info.capabilities:
        return None
    folder = workdir / CHECKPOINT_ARTIFACT
    folder.mkdir(exist_ok=True)
    return folder / "last"


def export_and_check(spec, hook, model, data, run, workdir, console, quiet) -> float:
    from tle.serving import check_parity, open_model

    h, w, c = data.input_shape
    sample = np.ascontiguousarray(data.x_test[: spec.export.parity_batch])
    if len(sample) == 0:
        sample = np.ascontiguousarray(data.x_train[: spec.export.parity_batch])
    meta = ExportMetadata(class_names=list(data.class_names), image_size=(h, w), channels=c,
                          backend=spec.backend, model=spec.model, extra={"run_id": run.run_id})
    path = Path(hook.export_onnx(model=model, path=workdir / "model.onnx", sample=sample, metadata=meta))
    reference = hook.evaluate(model=model, images=sample, labels=None, batch_size=len(sample)).logits
    onnx_model = open_model(path)
    parity = check_parity(onnx_model, sample, reference, spec.export.atol, spec.export.rtol)
    run.metrics({"onnx_max_abs_diff": parity.max_abs_diff})
    run.tags({"onnx.providers": ",".join(parity.providers)})
    if not parity.ok:
        raise ParityError(f"ONNX output differs from {spec.backend} by {parity.max_abs_diff:.3g} "
                          f"(atol {spec.export.atol}, rtol {spec.export.rtol})")
    run.onnx_model(path, sample, reference, spec.tracking.registered_model)
    if not quiet:
        console.print(f"ONNX parity ok: max |diff| {parity.max_abs_diff:.2e} on {len(sample)} images "
                      f"({', '.join(parity.providers)})")
    return parity.max_abs_diff
