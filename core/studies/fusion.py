"""Knowledge fusion across finished runs (``tle fuse``, seed S2), for any backend that implements ``fuse``.

Each parent run is rebuilt from the store exactly as ``--weights runs:/ID``
would rebuild it on its own classes (spec.yaml, class_names.json, weights/),
and its test split is reloaded from its spec (checked against the logged data
fingerprint). The backend's ``fuse`` hook merges the models; the core then
scores on every parent's task and on the union of the tasks:

* each parent alone;
* bagging — every parent votes: per output, the largest logit among the
  parents that have it (a spiking net's decision over both nets);
* the full concatenation — every head unit of every parent in one model (twice
  the head), asked of backends that list the ``fuse-concatenate`` capability;
* the fused model.

How the parents' outputs meet (``align``):

* ``index`` — S2's protocol: the parents have as many classes, and class k of
  every parent shares output k (output 0 is digit 0 on a digit image, letter a
  on a letter image). Each parent's task is scored on its own labels over these
  outputs, so a parent alone answers the other's images with its own indices
  (S2's B: ~8 % on digits). The fused outputs are named after the parents'
  classes k joined by ``/`` (``0/a``), one name where they agree.
* ``names`` — the union of the class names: each parent's classes stay apart
  (twice the outputs for disjoint tasks), every image competes with all of
  them, and a class two runs share counts once. A parent alone cannot name the
  other's classes. This is not what S2 measured.

``rank``: what orders each parent's head units before the top ``keep`` are
kept. ``activity`` hands the backend each parent's own training images, so it
can count how often each unit decides (S2 measured that frequency first and
ranked by the weight sum that predicted it; spyketorch counts it, torch and
keras rank by weights and say so); ``weights`` is S2's sum of a unit's largest
``ratio`` incoming weights.

``normalise``: how the parents' scores are put on one scale (a spiking net's
potentials grow with its synapses' mass, and with shared features the margin
between two nets is about 1 % of their potentials, so a net a few percent
heavier answers every image). ``validation`` (the default): one factor per
parent measured on the parents' validation splits (:mod:`tle.studies.calibration`);
``weights``: the backend's factor from the weights alone (spyketorch: the mean
synapse); ``none``: S2's raw scores. Bagging applies the factors the fused
model applied. The result is a new MLflow run tagged with its parents and
its alignment: metrics per model and task, what every run that holds weights
holds (:func:`tle.store.stored_run.record_inputs`: ``spec.yaml``, the first
run's spec with the fused head; the fused classes; the first run's data
fingerprint), the fused model's weights (usable as ``--weights runs:/ID``;
checked to rebuild the fused model from the spec, so ``tle export`` /
``predict`` / ``convert`` of a ``--no-export`` fusion work), its ONNX model
after the parity check, and the backend's extra exports. A task that bagging or the fused model loses against
its own run (:func:`lost_tasks`) is a warning and the ``tle.warning`` tag.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tle.backends.manager import load_backend
from tle.contract.head_fusion import merged_spec
from tle.run.assembly import assemble
from tle.run.outputs import Output, export_extras, export_onnx, log_extras, save_weights
from tle.store.tracking import configure, environment_tags, tracked_run
from tle.contract.records import ExportMetadata, Fused, FuseOptions, ResolvedWeights
from tle.contract.spec import ExperimentSpec
from tle.studies.calibration import calibrate
from tle.errors import UserError
from tle.studies.vote import bagging_accuracy, named_accuracy
from tle.store.status import RunStatus, warning_tags
from tle.progress import print_warning
from tle.store.stored_run import CLASS_NAMES_ARTIFACT, FUSED_FROM, REBUILD_ERROR, WEIGHTS_ARTIFACT, StoredRun, record_inputs

if TYPE_CHECKING:
    from rich.console import Console

    from tle.data import Dataset
    from tle.store.tracking import Tracker

FUSED, BAGGING, CONCATENATION = "fused", "bagging", "concatenation"
ALIGNS = ("index", "names")
NORMALISE = ("validation", "weights", "none")
RANKS = ("activity", "weights")
# Bagging or the fused model losing more than this share of what a task's own run knows above chance is a warning.
# S2's fused net lost a twelfth and a fifth (A 94 -> 87 %, B 90 -> 75 %), bagging of the digits 0-4 / 5-9 pair a
# fifth; pairs whose scores are on different scales, one run outvoting the other on its images, lost a half to all
# of it (README, S2: digits -> printed letters; the CNN pair of tests/test_cnn_fusion.py).
LOST = 1 / 3


@dataclass
class Parent:
    run_id: str
    spec: ExperimentSpec
    class_names: list[str]
    data: Dataset
    model: Any = None  # the backend's native model
    size: int = 0
    names: list[str] = field(default_factory=list)  # its classes as the fusion names them (per ``align``)


@dataclass
class FusionResult:
    run_id: str
    classes: list[str]
    tasks: list[str]  # task labels: each parent's dataset, then "union"
    accuracy: dict[str, list[float]]  # A, B..., bagging, [concatenation,] fused -> accuracy per task
    sizes: dict[str, int]  # model label -> parameters
    onnx_max_abs_diff: float | None = None
    parents: list[str] = field(default_factory=list)
    align: str = "index"
    scales: list[float] = field(default_factory=list)  # the factor each parent's scores were put on one scale by
    normalise: str = "validation"
    calibration: dict = field(default_factory=dict)  # --normalise validation: what the factors were chosen on
    ranked_by: str = "weights"  # what ordered the units the fused model kept (the backend's word)
    warnings: list[str] = field(default_factory=list)  # see lost_tasks

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "parents": self.parents, "align": self.align, "classes": self.classes,
                "tasks": self.tasks, "accuracy": self.accuracy, "sizes": self.sizes, "scales": self.scales,
                "normalise": self.normalise, "calibration": self.calibration,
                "ranked_by": self.ranked_by, "onnx_max_abs_diff": self.onnx_max_abs_diff, "warnings": self.warnings}


def lost_tasks(result: FusionResult, class_counts: list[int]) -> list[str]:
    """One line per parent's task that bagging or the fused model answer far worse than the parent alone (more
    than :data:`LOST` of its accuracy above chance, ``1 / class_counts[i]``): the run did what was asked, but its
    answer is not S2's fusion of two nets that each keep their task."""
    lines = []
    for i, count in enumerate(class_counts):
        own, chance = result.accuracy[parent_label(i)][i], 1 / count
        lost = [k for k in (BAGGING, FUSED) if own - result.accuracy[k][i] > LOST * (own - chance)]
        if own > chance and lost:
            figures = " and ".join(f"{k} {result.accuracy[k][i]:.3f}" for k in lost)
            lines.append(f"on {result.tasks[i]} {figures} against {parent_label(i)} alone {own:.3f}: on "
                         f"{parent_label(i)}'s own images another run answers with larger scores (the runs' scores "
                         "are not on one scale, or no factor per run tells their images apart; README, S2)")
    return lines


def parent_label(index: int) -> str:
    """A, B, C...: the parents in the order the user named them."""
    return chr(ord("A") + index) if index < 26 else f"run{index + 1}"


def ordered_union(class_names: list[list[str]]) -> list[str]:
    out: list[str] = []
    for names in class_names:
        out += [str(c) for c in names if str(c) not in out]
    return out


def aligned_names(class_names: list[list[str]], align: str) -> list[list[str]]:
    """Each parent's classes as the fusion names them: their own (``names``), or per index k one name shared by
    every parent, its classes k joined by ``/`` (``index``). ``index`` needs as many classes in every parent, and
    a class two parents share at the same index (else it would mean two outputs)."""
    if align not in ALIGNS:
        raise UserError(f"--align {align!r} is not one of {', '.join(ALIGNS)}",
                        "--align index (S2: class k of every run shares output k) or names (the union of names)")
    names = [[str(c) for c in n] for n in class_names]
    if align == "names":
        return names
    counts = [len(n) for n in names]
    if len(set(counts)) != 1:
        sizes = ", ".join(f"{parent_label(i)} {c}" for i, c in enumerate(counts))
        raise UserError(f"--align index needs runs with as many classes, these have {sizes}",
                        "fuse them with --align names (the union of the class names)")
    where: dict[str, tuple[int, int]] = {}
    for i, n in enumerate(names):
        for k, c in enumerate(n):
            if c in where and where[c][1] != k:
                j, other = where[c]
                raise UserError(f"class {c!r} is class {other} of run {parent_label(j)} and class {k} of run "
                                f"{parent_label(i)}, so --align index would give it two outputs",
                                "fuse them with --align names (the union of the class names)")
            where.setdefault(c, (i, k))
    shared = ["/".join(dict.fromkeys(n[k] for n in names)) for k in range(counts[0])]
    return [list(shared) for _ in names]


def _load_parent(stored: StoredRun, backend_name: str | None) -> ExperimentSpec:
    """A parent's spec, once it is known to be a finished run of the first parent's backend with its files."""
    stored.require(RunStatus.FINISHED, fix="fuse finished runs only")
    spec = stored.spec()
    if backend_name is not None and spec.backend != backend_name:
        raise UserError(f"run {stored.run_id} was trained with backend {spec.backend!r}, the first with "
                        f"{backend_name!r}", "fuse runs of one backend")
    if stored.class_names is None:
        raise UserError(f"run {stored.run_id} lacks {CLASS_NAMES_ARTIFACT}", "fuse runs made by tle run")
    stored.weights()
    return spec


@dataclass(frozen=True)
class FusionRequest:
    """How runs are fused (``tle fuse``'s options). ``keep``: fraction of each run's head units kept per class;
    ``ratio``: fraction of a unit's largest incoming weights that rank it; ``align``: ``index`` (S2: class k of
    every run shares output k) or ``names`` (the union of the class names); ``normalise``: ``validation``,
    ``weights`` or ``none`` (see the module); ``rank``: ``activity`` (the backend gets each run's own training
    images to count how often each unit decides) or ``weights`` (S2's sum); ``export``: ONNX-export the fused
    model (None: as the first run did)."""

    keep: float = 0.5
    ratio: float = 0.1
    align: str = "index"
    normalise: str = "validation"
    rank: str = "activity"
    export: bool | None = None


@dataclass(frozen=True)
class Destination:
    """Where a fusion run is logged (``tracking_uri``, ``experiment`` — default the first parent's —, ``run_name``)
    and shown (``console``, ``quiet``)."""

    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    console: Console | None = None
    quiet: bool = False


def run_fusion(run_ids: list[str], request: FusionRequest = FusionRequest(),
               destination: Destination = Destination()) -> FusionResult:
    """Fuse the finished runs ``run_ids`` as ``request`` says, logged as ``destination`` says. Every refusal comes
    before a run is created."""
    keep, ratio, align, normalise, rank = request.keep, request.ratio, request.align, request.normalise, request.rank
    tracking_uri, experiment, run_name = destination.tracking_uri, destination.experiment, destination.run_name
    console, quiet, export = destination.console, destination.quiet, request.export

    if len(run_ids) < 2:
        raise UserError("tle fuse needs at least two runs", "pass RUN_A RUN_B")
    if len(set(run_ids)) != len(run_ids):
        raise UserError("the same run is named twice", "fuse different runs")
    if not (0 < keep <= 1 and 0 < ratio <= 1):
        raise UserError(f"--keep {keep} and --ratio {ratio} must lie in (0, 1]", "e.g. --keep 0.5 --ratio 0.1")
    aligned_names([["x"], ["y"]], align)  # an unknown --align fails before the store is opened
    if rank not in RANKS:
        raise UserError(f"--rank {rank!r} is not one of {', '.join(RANKS)}",
                        "--rank activity (how often a unit decides on its run's training images) or weights (S2)")
    if normalise not in NORMALISE:
        raise UserError(f"--normalise {normalise!r} is not one of {', '.join(NORMALISE)}",
                        "--normalise validation (factors measured on the runs' validation images), weights (from "
                        "the weights alone) or none (S2's raw scores)")
    mlflow = configure(tracking_uri)
    workdir = Path(tempfile.mkdtemp(prefix="tle-fuse-"))
    try:
        parents: list[Parent] = []
        backend = None
        for run_id in run_ids:
            stored = StoredRun(run_id, workdir=workdir / run_id, doing="fuse")
            spec = _load_parent(stored, backend.name if backend else None)
            backend = backend or load_backend(spec.backend)
            data = stored.data(check=True, backend=backend)  # its own classes: the head is kept
            parent = Parent(run_id, spec, list(data.class_names), data)
            parent.model = assemble(backend.hook, spec, data, stored.resolved_weights())
            parent.size = sum(c.total for c in backend.hook.count_parameters(model=parent.model))
            parents.append(parent)
        assert backend is not None  # loaded for the first run (there are two or more)
        shapes = {p.data.input_shape for p in parents}
        if len(shapes) != 1:
            raise UserError(f"the runs saw images of different shapes {sorted(shapes)}", "fuse runs on one image size")
        for parent, names in zip(parents, aligned_names([p.class_names for p in parents], align)):
            parent.names = names
        hook = backend.hook
        calibration = _calibrate(hook, parents) if normalise == "validation" else None
        options = FuseOptions(keep=keep, ratio=ratio, normalise=normalise == "weights", rank=rank,
                              scales=tuple(calibration.factors) if calibration else ())
        models, names = [p.model for p in parents], [p.names for p in parents]
        images = [p.data.x_train for p in parents] if rank == "activity" else None
        fused, scales, ranked_by = _unwrap(hook.fuse(models=models, class_names=names, options=options,
                                                     images=images), len(parents))
        if fused is None:
            raise UserError(f"backend {backend.name!r} cannot fuse models", "fusion needs a backend with a fuse hook "
                            "(spyketorch, torch, keras)")
        concatenated = None
        if "fuse-concatenate" in backend.info.capabilities:
            concatenated = _unwrap(hook.fuse(models=models, class_names=names, images=None,
                                             options=FuseOptions(keep, ratio, True, options.normalise,
                                                                 "weights", options.scales)),
                                   len(parents))[0]
        classes = ordered_union(names)
        result = _score(hook, parents, fused, classes, concatenated, scales)
        result.parents, result.align, result.scales, result.ranked_by = list(run_ids), align, scales, ranked_by
        result.normalise = normalise
        if calibration is not None:
            # A backend that cannot rescale its fused model (torch, keras) returns no factors: then bagging used
            # none either, and the measured ones are only reported.
            ratio_given = [f / calibration.factors[0] for f in calibration.factors]
            applied = bool(np.allclose([f / scales[0] for f in scales], ratio_given, rtol=1e-6))
            result.calibration = {"factors": calibration.factors, "val_shares": calibration.shares,
                                  "val_bagging_acc": calibration.bagging, "applied": applied}
        result.warnings = lost_tasks(result, [len(p.names) for p in parents])
        first = parents[0].spec
        mlflow_experiment = experiment or first.tracking.experiment
        configure(tracking_uri, mlflow_experiment)
        tags = {"backend": backend.name, "model": first.model, "strategy": "fusion",
                "dataset": " + ".join(p.spec.dataset.source for p in parents), FUSED_FROM: ",".join(run_ids),
                "tle.fusion.align": align,
                **{f"tle.parent.{i}": r for i, r in enumerate(run_ids)}, "framework": backend.info.framework,
                "framework_version": backend.info.framework_version, **environment_tags()}
        name = run_name or f"{backend.name}-{first.model}-fusion"
        exported = bool(first.export.onnx if export is None else export)
        # What rebuilds the fused model from its weights (tle export / predict / convert of the run): the first
        # parent's model and data, the fused head, the fused classes.
        spec = first.model_copy(update={
            "head": merged_spec([p.spec.head for p in parents], keep),
            "export": first.export.model_copy(update={"onnx": exported}),
            "tracking": first.tracking.model_copy(update={"experiment": mlflow_experiment, "run_name": name})})
        with tracked_run(mlflow, name=name, tags=tags) as run:
            result.run_id = run.run_id
            _track(FusionRun(run=run, hook=hook, parents=parents, fused=fused, classes=classes, result=result,
                             options=options, workdir=workdir / "out", console=console, quiet=quiet,
                             export=exported, spec=spec))
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _calibrate(hook, parents: list[Parent]):
    """The factors :mod:`tle.studies.calibration` measures on every parent's validation images."""

    logits = [[hook.evaluate(model=p.model, images=q.data.x_val, labels=None, batch_size=p.spec.train.batch_size).logits
               for q in parents] for p in parents]
    truths = [[p.names[int(y)] for y in p.data.y_val] for p in parents]
    return calibrate(logits, [p.names for p in parents], ordered_union([p.names for p in parents]), truths)


def _unwrap(answer, parents: int) -> tuple[object, list[float], str]:
    """A ``fuse`` hook's answer as (model, the factor per parent its scores were scaled by, what ranked units)."""
    if isinstance(answer, Fused):
        scales = [float(s) for s in answer.scales] or [1.0] * parents
        if len(scales) != parents or not all(np.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"the fuse hook gave scales {scales} for {parents} models (one positive each)")
        if answer.ranked_by not in RANKS:
            raise ValueError(f"the fuse hook says it ranked by {answer.ranked_by!r}, not one of {RANKS}")
        return answer.model, scales, answer.ranked_by
    return answer, [1.0] * parents, "weights"


def _score(hook, parents, fused, classes, concatenated=None, scales=None) -> FusionResult:
    tasks = [p.spec.dataset.source for p in parents] + ["union"]
    images = [p.data.x_test for p in parents]
    truths = [[p.names[int(y)] for y in p.data.y_test] for p in parents]
    images.append(np.concatenate(images))
    truths.append([t for truth in truths for t in truth])
    accuracy: dict[str, list[float]] = {}
    per_parent: list[list[np.ndarray]] = []
    for i, p in enumerate(parents):
        bs = p.spec.train.batch_size
        logits = [hook.evaluate(model=p.model, images=x, labels=None, batch_size=bs).logits for x in images]
        per_parent.append(logits)
        accuracy[parent_label(i)] = [named_accuracy(s, p.names, t) for s, t in zip(logits, truths)]
    names = [p.names for p in parents]
    accuracy[BAGGING] = bagging_accuracy(per_parent, scales or [1.0] * len(parents), names, classes, truths)
    bs = parents[0].spec.train.batch_size
    combined = {CONCATENATION: concatenated} if concatenated is not None else {}
    for label, model in {**combined, FUSED: fused}.items():
        logits = [hook.evaluate(model=model, images=x, labels=None, batch_size=bs).logits for x in images]
        accuracy[label] = [named_accuracy(s, classes, t) for s, t in zip(logits, truths)]
    sizes = {parent_label(i): p.size for i, p in enumerate(parents)}
    sizes[BAGGING] = sum(p.size for p in parents)
    if concatenated is not None:
        sizes[CONCATENATION] = sum(c.total for c in hook.count_parameters(model=concatenated))
    sizes[FUSED] = sum(c.total for c in hook.count_parameters(model=fused))
    return FusionResult("", classes, tasks, accuracy, sizes)


@dataclass
class FusionRun:
    """A fused model on its way into its MLflow run."""

    run: Tracker
    hook: Any  # the backend's hooks (tle.backends.manager.Backend.hook)
    parents: list[Parent]
    fused: Any  # the backend's native fused model
    classes: list[str]
    result: FusionResult
    options: FuseOptions
    workdir: Path
    console: Console | None
    quiet: bool
    export: bool
    spec: ExperimentSpec  # the fused run's: the first parent's with the fused head


def fused_data(parents: list[Parent], classes: list[str]):
    """The fused run's data as its spec reloads it: the first parent's, under the fused classes (the first
    parent's classes come first among them, at their own indices, so its labels stay what they were)."""
    first = parents[0]
    if classes[:len(first.names)] != first.names:
        raise RuntimeError(f"the fused classes {classes} do not begin with the first run's {first.names}")
    return replace(first.data, class_names=list(classes))


def _track(f: FusionRun) -> None:

    run, hook, parents, fused, classes, result = f.run, f.hook, f.parents, f.fused, f.classes, f.result
    first = parents[0].spec
    # The fused run's inputs as every run writes them: spec.yaml, class_names.json, the fingerprint.
    data = fused_data(parents, classes)
    record_inputs(run, f.spec, data)
    run.params({"fusion.keep": f.options.keep, "fusion.ratio": f.options.ratio,
                "fusion.parents": ",".join(result.parents), "fusion.align": result.align,
                "fusion.normalise": result.normalise, "fusion.rank": result.ranked_by,
                "fusion.classes": len(classes),
                **{f"fusion.task{i + 1}": t for i, t in enumerate(result.tasks[:-1])},
                **{f"fusion.scale.{parent_label(i)}": f"{s:.6g}" for i, s in enumerate(result.scales)}})
    metrics = {}
    for label, values in result.accuracy.items():
        for i, value in enumerate(values):
            task = "union" if i == len(values) - 1 else f"task{i + 1}"
            metrics[f"{label}_acc_{task}"] = value
    metrics.update({f"{label}_params": size for label, size in result.sizes.items()})
    union_x = np.concatenate([p.data.x_test for p in parents])
    union_y = np.asarray([classes.index(p.names[int(y)]) for p in parents for y in p.data.y_test])
    evaluation = hook.evaluate(model=fused, images=union_x, labels=union_y, batch_size=first.train.batch_size)
    for i, value in enumerate(result.calibration.get("val_bagging_acc", []) if result.calibration.get("applied")
                              else []):
        metrics[f"bagging_val_acc_task{i + 1}"] = value
    metrics["test_acc"] = result.accuracy[FUSED][-1]
    metrics["test_loss"] = evaluation.loss
    run.metrics(metrics)
    if result.warnings:
        run.tags(warning_tags(result.warnings))
    log_extras(run, evaluation.extras, FUSED, "evaluation_extras.json")
    run.json(result.as_dict(), "fusion_report.json")
    f.workdir.mkdir(parents=True, exist_ok=True)
    out = Output(hook, fused, run, f.workdir, console=None if f.quiet else f.console)
    save_weights(out)
    _check_rebuild(f, data, np.ascontiguousarray(union_x[: first.export.parity_batch]))
    export_extras(out)
    if not f.export:
        return
    h, w, c = parents[0].data.input_shape
    sample = np.ascontiguousarray(union_x[: first.export.parity_batch])
    meta = ExportMetadata(class_names=classes, image_size=(h, w), channels=c, backend=first.backend,
                          model=first.model, extra={"run_id": run.run_id, "parents": ",".join(result.parents)})
    result.onnx_max_abs_diff = export_onnx(out, sample, meta, first.export,
                                           differs="the fused model's ONNX output differs")


def _check_rebuild(f: FusionRun, data, sample: np.ndarray) -> None:
    """Whether the fused run's spec and saved weights rebuild the fused model (its logits on ``sample``), as
    ``tle export`` / ``predict`` / ``convert`` of the run will. If not (a backend whose fused model its spec cannot
    name), the run says why in :data:`REBUILD_ERROR` and those commands refuse it in one line."""

    files = sorted(p for p in (f.workdir / WEIGHTS_ARTIFACT).rglob("*") if p.is_file())
    weights = ResolvedWeights(kind="file", source=f"runs:/{f.run.run_id}", path=files[0],
                              class_names=tuple(data.class_names))
    batch = f.spec.train.batch_size
    try:
        again = assemble(f.hook, f.spec, data, weights)
        ours = np.asarray(f.hook.evaluate(model=again, images=sample, labels=None, batch_size=batch).logits)
    except UserError as exc:
        reason = str(exc).splitlines()[0]
    else:
        fused = np.asarray(f.hook.evaluate(model=f.fused, images=sample, labels=None, batch_size=batch).logits)
        if ours.shape == fused.shape and np.allclose(ours, fused, atol=f.spec.export.atol, rtol=f.spec.export.rtol):
            return
        diff = float(np.max(np.abs(ours - fused))) if ours.shape == fused.shape else float("inf")
        reason = f"the model its spec.yaml and weights build differs from the fused model by {diff:.3g}"
    f.run.tags({REBUILD_ERROR: reason})
    if not f.quiet and f.console is not None:
        print_warning(f.console, f"run {f.run.run_id}: {reason}; export it now with tle fuse --export")
