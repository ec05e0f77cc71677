"""The ``search:`` section of a sweep file: what an Optuna search of the sweep's cells looks for, and how.

    search:
      metric: val_acc              # a metric every cell logs per epoch: val_acc, val_loss, train_acc, train_loss
      direction: maximize          # default: minimize for a loss, else maximize
      trials: 20                   # per study (one study per combination of the axes)
      sampler: tpe                 # tpe | random | cmaes | grid, or {tpe: {n_startup_trials: 5}} (Optuna's arguments)
      pruner: median               # none | median | hyperband, or {median: {n_warmup_steps: 2}}
      seed: 0                      # the sampler's seed
      space:                       # spec fields by dotted key
        train.lr: {log: [1.0e-5, 1.0e-2]}
        train.finetune_lr: {float: [1.0e-6, 1.0e-3]}
        train.finetune_epochs: {int: [1, 4]}
        strategy: {choice: [feature-extractor, "finetune:block2"]}
      enqueue: [{train.lr: 1.0e-3}]    # optional: configurations to try first (Optuna's enqueue_trial)
      confirm: {seeds: [0, 1, 2], top: 2, against: base}   # the answer: the best configurations over seeds
      storage: PATH_OR_URL         # optional: where the studies live (default: a journal file beside the store)

Everything here is checked when the file is read, before anything is imported or run; the values each
distribution can take are checked against the spec by :mod:`tle.studies.grid` (its bounds and choices).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from tle.analysis.axes import SEED_AXIS
from tle.contract.loop import EPOCH_METRICS
from tle.contract.spec import ExperimentSpec
from tle.errors import UserError
from tle.run.trial import DIRECTIONS, PRUNERS

DISTRIBUTIONS = ("log", "float", "int", "choice")
SAMPLERS = ("tpe", "random", "cmaes", "grid")
AGAINST = ("base", "scratch", "none", "sweep:NAME")
KEYS = ("metric", "direction", "trials", "sampler", "pruner", "seed", "space", "enqueue", "confirm", "storage")
DEFAULT_TRIALS = 20


@dataclass(frozen=True)
class Dimension:
    """One searched spec field: ``kind`` log (log-uniform floats), float, int (``low``..``high`` inclusive, by
    ``step``) or choice (one of ``choices``)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def probes(self) -> list[Any]:
        """The values that bound what a trial may set: checked against the spec before the sweep runs."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def points(self) -> list[Any] | None:
        """Every value, for the grid sampler; None for a continuous range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            assert isinstance(self.low, int) and isinstance(self.high, int)
            return list(range(self.low, self.high + 1, int(self.step or 1)))
        return None

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            self.low is not None and self.high is not None and self.low <= value <= self.high

    def distribution(self):
        """Optuna's distribution for this field."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            assert isinstance(self.low, int) and isinstance(self.high, int)
            return IntDistribution(self.low, self.high, step=int(self.step or 1))
        assert self.low is not None and self.high is not None
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "log",
                                 step=None if self.step is None else float(self.step))

    def text(self) -> str:
        if self.kind == "choice":
            return "choice " + ", ".join(str(c) for c in self.choices)
        return f"{self.kind} [{self.low:g}, {self.high:g}]" + (f" step {self.step:g}" if self.step else "")

    def identity(self) -> list[Any]:
        return [self.kind, self.low, self.high, self.step, list(self.choices)]


@dataclass(frozen=True)
class Confirm:
    """Re-run the ``top`` best configurations of each study over ``seeds``, beside ``against`` over the same seeds:
    ``base`` (the spec as written, without the searched values), ``scratch`` (the same with strategy scratch),
    ``sweep:NAME`` (the best group of a finished grid sweep in the same experiment) or ``none``."""

    seeds: tuple[int, ...]
    top: int = 1
    against: str = "base"


@dataclass(frozen=True)
class SearchSpec:
    metric: str
    direction: Literal["maximize", "minimize"]
    trials: int
    space: dict[str, Dimension]
    sampler: str = "tpe"
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    enqueue: tuple[dict[str, Any], ...] = ()
    confirm: Confirm | None = None
    storage: str | None = None

    def identity(self) -> dict[str, Any]:
        """What a study computes: a sweep that changes only ``trials``, ``enqueue``, ``confirm`` or ``storage`` goes on
        with the same studies (more trials continue the study; another confirm re-reads it)."""
        return {"metric": self.metric, "direction": self.direction, "sampler": [self.sampler, self.sampler_kwargs],
                "pruner": [self.pruner, self.pruner_kwargs], "seed": self.seed,
                "space": {k: d.identity() for k, d in self.space.items()}}

    def key_text(self) -> str:
        return json.dumps(self.identity(), sort_keys=True, default=str)

    def distributions(self) -> dict[str, Any]:
        return {k: d.distribution() for k, d in self.space.items()}

    def grid_points(self) -> dict[str, list[Any]]:
        return {k: d.points() or [] for k, d in self.space.items()}


def parse_search(raw: Any, where: str, axes: dict[str, list[Any]]) -> SearchSpec:
    """The ``search:`` section of the sweep file ``where`` (one-line UserErrors naming the key); ``axes`` are the
    file's axes (a searched field cannot also be an axis)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: 'search' must be a mapping", "e.g. search: {metric: val_acc, trials: 20, space: "
                                                               "{train.lr: {log: [1.0e-5, 1.0e-2]}}}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} in 'search'", f"it takes {', '.join(KEYS)}")
    metric = str(raw.get("metric") or "val_acc")
    if metric not in EPOCH_METRICS:
        raise UserError(f"{where}: search.metric {metric!r} is not a metric every cell logs per epoch",
                        f"choose one of {', '.join(EPOCH_METRICS)} (the test metrics are measured once, at the end: "
                        "the confirm table shows them)")
    direction = str(raw.get("direction") or ("minimize" if metric.endswith("loss") else "maximize"))
    if direction != "maximize" and direction != "minimize":
        raise UserError(f"{where}: search.direction {direction!r}", f"choose {' or '.join(DIRECTIONS)}")
    space = _space(raw.get("space"), where, axes)
    sampler, sampler_kwargs = _named(raw.get("sampler", "tpe"), "sampler", SAMPLERS, where)
    pruner, pruner_kwargs = _named(raw.get("pruner", "none"), "pruner", PRUNERS, where)
    if pruner == "none" and pruner_kwargs:
        raise UserError(f"{where}: search.pruner none takes no arguments", "write pruner: none")
    trials = _trials(raw.get("trials"), sampler, space, where)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{where}: search.seed {seed!r} is not an integer", "e.g. seed: 0")
    storage = raw.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise UserError(f"{where}: search.storage must be a path or a database URL",
                        "e.g. storage: optuna.journal or postgresql://HOST/DB")
    return SearchSpec(metric=metric, direction=direction, trials=trials, space=space, sampler=sampler,
                      sampler_kwargs=sampler_kwargs, pruner=pruner, pruner_kwargs=pruner_kwargs, seed=seed,
                      enqueue=_enqueue(raw.get("enqueue"), space, where), confirm=_confirm(raw.get("confirm"), where),
                      storage=storage.strip() if storage else None)


def _space(raw: Any, where: str, axes: dict[str, list[Any]]) -> dict[str, Dimension]:
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}: search.space must map spec fields to distributions",
                        "e.g. space: {train.lr: {log: [1.0e-5, 1.0e-2]}, strategy: {choice: [scratch, lp-ft]}}")
    space = {}
    for key, value in raw.items():
        key = str(key)
        check_spec_field(key, where)
        if key in axes:
            raise UserError(f"{where}: {key} is both an axis and searched", "keep it in one of 'axes' or search.space")
        if key == SEED_AXIS or key.split(".")[0] == "tracking":
            raise UserError(f"{where}: search.space cannot vary {key}",
                            "trials run at the base spec's seed; give seeds to search.confirm.seeds" if key == SEED_AXIS
                            else "a sweep keeps its runs in one experiment; set tracking under 'base'")
        space[key] = _dimension(key, value, where)
    return space


def _dimension(key: str, raw: Any, where: str) -> Dimension:
    what = f"{where}: search.space.{key}"
    if not isinstance(raw, dict) or not set(raw) - {"step"}:
        raise UserError(f"{what} must be a distribution", "write {log: [LO, HI]}, {float: [LO, HI]}, "
                                                          "{int: [LO, HI]} or {choice: [A, B, ...]}")
    kinds = [k for k in raw if k != "step"]
    if len(kinds) != 1 or kinds[0] not in DISTRIBUTIONS:
        raise UserError(f"{what}: unknown distribution {', '.join(map(str, kinds))}",
                        f"use one of {', '.join(DISTRIBUTIONS)}, e.g. {{log: [1.0e-5, 1.0e-2]}}")
    kind, value, step = kinds[0], raw[kinds[0]], raw.get("step")
    if kind == "choice":
        if step is not None:
            raise UserError(f"{what}: a choice has no step", "drop 'step'")
        if not isinstance(value, list) or not value:
            raise UserError(f"{what}: choice must be a non-empty list", "e.g. {choice: [scratch, lp-ft]}")
        repeated = sorted({repr(v) for v in value if value.count(v) > 1})
        if repeated:
            raise UserError(f"{what}: choice lists {', '.join(repeated)} more than once", "give each value once")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
            raise UserError(f"{what}: a choice is a list of plain values", "numbers, strings, true/false or null")
        return Dimension(key, kind, choices=tuple(value))
    if not isinstance(value, list) or len(value) != 2:
        raise UserError(f"{what}: {kind} needs a range [LO, HI]", f"e.g. {{{kind}: [1, 4]}}")
    low, high = (_number(v, what) for v in value)
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise UserError(f"{what}: int needs whole numbers, got [{low}, {high}]", "e.g. {int: [1, 8]}")
    if not low < high:
        raise UserError(f"{what}: the range [{low:g}, {high:g}] is empty", "give LO < HI; a fixed value goes in 'base'")
    if kind == "log" and low <= 0:
        raise UserError(f"{what}: log needs a range above 0, got [{low:g}, {high:g}]", "e.g. {log: [1.0e-5, 1.0e-2]}")
    if step is not None:
        step = _number(step, what)
        if kind == "log" or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise UserError(f"{what}: step {step!r} does not fit {kind}",
                            "a step is a positive number for float and a whole one for int; log has none")
    return Dimension(key, kind, low, high, step)


def _number(value: Any, what: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{what}: {value!r} is not a number", "write numbers, e.g. 1.0e-5")
    return value


def _named(raw: Any, what: str, names: tuple[str, ...], where: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``{name: {optuna's keyword arguments}}``."""
    if isinstance(raw, dict) and len(raw) == 1:
        name, kwargs = next(iter(raw.items()))
        kwargs = kwargs or {}
    else:
        name, kwargs = raw, {}
    if not isinstance(name, str) or name not in names or not isinstance(kwargs, dict):
        raise UserError(f"{where}: unknown search.{what} {raw!r}",
                        f"choose one of {', '.join(names)}, or {{NAME: {{Optuna's arguments}}}}")
    return name, dict(kwargs)


def _trials(raw: Any, sampler: str, space: dict[str, Dimension], where: str) -> int:
    size = None
    if sampler == "grid":
        continuous = [k for k, d in space.items() if d.points() is None]
        if continuous:
            raise UserError(f"{where}: sampler grid needs a list of values for {', '.join(continuous)}",
                            "use {choice: [...]} or {int: [LO, HI]} there, or another sampler")
        size = math.prod(len(d.points() or []) for d in space.values())
    trials = raw if raw is not None else (size or DEFAULT_TRIALS)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"{where}: search.trials {trials!r} must be a whole number of at least 1", "e.g. trials: 20")
    if size is not None and trials > size:
        raise UserError(f"{where}: search.trials {trials} is more than the grid's {size} points",
                        f"give trials: {size} or fewer (or leave it out)")
    return trials


def _enqueue(raw: Any, space: dict[str, Dimension], where: str) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(e, dict) and e for e in raw):
        raise UserError(f"{where}: search.enqueue must be a list of configurations",
                        "e.g. enqueue: [{train.lr: 1.0e-3}]")
    out = []
    for entry in raw:
        clean = {}
        for key, value in entry.items():
            dim = space.get(str(key))
            value = _number(value, f"{where}: search.enqueue {key}") if dim is not None and dim.kind != "choice" \
                else value
            if dim is None or not dim.contains(value):
                raise UserError(f"{where}: search.enqueue sets {key}={value!r}, outside search.space",
                                "enqueue values of the searched fields, within their ranges")
            clean[str(key)] = value
        out.append(clean)
    return tuple(out)


def _confirm(raw: Any, where: str) -> Confirm | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"seeds", "top", "against"}:
        raise UserError(f"{where}: search.confirm takes seeds, top and against", "e.g. confirm: {seeds: [0, 1, 2], top: 2}")
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{where}: search.confirm.seeds must be a non-empty list of integers", "e.g. seeds: [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: search.confirm.seeds repeats a seed", "give each seed once")
    top = raw.get("top", 1)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise UserError(f"{where}: search.confirm.top {top!r} must be at least 1", "e.g. top: 3")
    against = str(raw.get("against", "base"))
    if against not in AGAINST[:3] and not (against.startswith("sweep:") and against[6:].strip()):
        raise UserError(f"{where}: search.confirm.against {against!r}", f"choose one of {', '.join(AGAINST)}")
    return Confirm(tuple(seeds), top, against)


def check_spec_field(key: str, where: str) -> None:
    """``key`` (dotted) names one field of the experiment spec (not a group of fields)."""
    model: type[BaseModel] = ExperimentSpec
    parts = key.split(".")
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            known = ", ".join(model.model_fields)
            raise UserError(f"{where}: search.space key {key!r} is not a spec field ({'.'.join(parts[:i + 1])} "
                            "is unknown)", f"{'.'.join(parts[:i]) or 'the spec'} has {known}")
        nested = _model_of(info.annotation)
        if i == len(parts) - 1:
            if nested is not None and get_origin(info.annotation) is None:
                raise UserError(f"{where}: search.space key {key!r} is a group of fields",
                                f"search one of its fields: {', '.join(f'{key}.{f}' for f in nested.model_fields)}")
            return
        if nested is None:
            raise UserError(f"{where}: search.space key {key!r} is not a spec field ({'.'.join(parts[:i + 1])} "
                            "has no fields)", "search a field such as train.lr")
        model = nested


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
