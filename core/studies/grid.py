"""A sweep file: a base spec, axes over any spec field, optional explicit cells and a pretraining step.

    name: s1-grid                      # the parent run's name (default: the file's stem)
    base: {model: vgg_small, train: {epochs: 3}}   # a spec, or a path to a spec file
    axes:                              # full product over dotted keys
      backend: [torch, keras]
      dataset.source: [digits:5-9, synthetic]
      strategy: [scratch, feature-extractor]
      train.seed: [0, 1, 2]
    cells:                             # optional: explicit overrides, each combined with the axes' product
      - {strategy: transfer:block2, init: he_normal}
    pretrain:                          # optional: cells with `weights: pretrain` start from this run
      dataset: {source: digits:0-4, train: null}
    search:                            # optional: an Optuna search in each cell instead of one run (see below)
      metric: val_acc
      space: {train.lr: {log: [1.0e-5, 1.0e-2]}}

A cell whose ``weights`` is ``pretrain`` (the default for strategies that
start from pretrained blocks when the file has a ``pretrain`` section) gets
``runs:/ID`` of a pretraining run built from the same cell with the
``pretrain`` overrides on top (strategy ``scratch`` unless given; the fields of
how a cell fine-tunes, ``train.lr_decay``, ``params``, ``l2sp``, ``schedule``,
``warmup_epochs`` and ``gradual_epochs``, at their defaults unless given);
identical pretraining specs run once. A cell whose strategy needs no pretrained blocks
(``scratch``) starts from nothing. ``pretrain: {backend: torch}`` pretrains
with one backend for the cells of every backend (the spec is otherwise the
same, so one run serves them all): its weights cross frameworks as a portable
file (``tle.contract.portable``), and the framework is the only difference between
the backends' cells.

With ``search`` (:mod:`tle.studies.search_spec`) each cell of the axes (and of ``cells``) is one Optuna study
instead of one run: its trials are runs of that cell's spec with the searched fields set by the sampler
(:mod:`tle.studies.search`). The pretraining run of a study is built from the study's cell, before any field is
searched, so all its trials start from one backbone.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tle.analysis.axes import PRETRAIN, short
from tle.errors import UserError
from tle.contract.spec import ExperimentSpec, build_spec, read_spec_file, set_dotted
from tle.contract.strategy import parse_strategy
from tle.studies.search_spec import SearchSpec, parse_search

KNOWN_KEYS = {"name", "base", "axes", "cells", "pretrain", "search"}
# How a cell fine-tunes (tle.contract.tuning): left at their defaults in its pretraining run unless the pretrain
# section sets them, so cells that differ only in them share one pretraining run.
FINE_TUNING = ("lr_decay", "params", "l2sp", "schedule", "warmup_epochs", "gradual_epochs")


@dataclass
class Cell:
    """One run of a sweep: its place on the axes and its resolved spec."""

    index: int
    axes: dict[str, Any]
    spec: ExperimentSpec
    pretrain: Cell | None = None  # the pretraining cell this one starts from
    role: str = "cell"  # or "pretrain"; a search's runs: "trial", "confirm", "baseline"
    tree: dict[str, Any] | None = None  # the raw spec it was validated from (a search sets its fields on it)

    @property
    def key(self) -> str:
        return self.spec.key()

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def label(self) -> str:
        if self.role == PRETRAIN:
            return (f"pretrain {self.spec.backend}/{self.spec.model} on {self.spec.dataset.source} "
                    f"seed={self.spec.train.seed}")
        return " ".join(f"{short(k)}={v}" for k, v in self.axes.items()) or "cell"

    def with_weights(self, weights: str) -> Cell:
        spec = self.spec.model_copy(update={"weights": weights})
        return Cell(self.index, self.axes, spec, self.pretrain, self.role, self.tree)


@dataclass
class Grid:
    name: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    explicit: list[dict[str, Any]]
    pretrain: dict[str, Any] | None
    source: str = ""  # the file's text, logged on the parent run
    search: SearchSpec | None = None

    @property
    def varying(self) -> list[str]:
        """Keys that take more than one value across the cells, in file order."""
        keys = [k for k, v in self.axes.items() if len(v) > 1]
        for over in self.explicit:
            for k in _flatten(over):
                if k not in keys and len({json.dumps(_flatten(c).get(k), default=str)
                                          for c in self.explicit}) > 1:
                    keys.append(k)
        return keys

    def cells(self) -> list[Cell]:
        """Every cell, validated; pretraining cells come first and are shared between cells."""
        combos = [dict(zip(self.axes, values)) for values in itertools.product(*self.axes.values())] or [{}]
        overs = self.explicit or [{}]
        varying = self.varying
        cells: list[Cell] = []
        pretrains: dict[str, Cell] = {}
        for over in overs:
            for combo in combos:
                tree = copy.deepcopy(self.base)
                _merge(tree, over)
                for key, value in combo.items():
                    set_dotted(tree, key, value)
                axes = {**{k: v for k, v in _flatten(over).items()}, **combo}
                axes = {k: axes[k] for k in varying if k in axes}
                spec = _validate(tree, axes)
                cells.append(self.attach_pretrain(Cell(len(cells), axes, spec, tree=tree), tree, pretrains))
        ordered = list(pretrains.values()) + cells
        for i, cell in enumerate(ordered):
            cell.index = i
        return ordered

    def attach_pretrain(self, cell: Cell, tree: dict[str, Any], pretrains: dict[str, Cell]) -> Cell:
        """``cell`` starting from the pretraining run built from ``tree`` (kept in ``pretrains`` by spec key, so
        identical ones run once) when its weights are ``pretrain``, or none with a ``pretrain`` section and a strategy
        that starts from pretrained blocks; else ``cell`` as it is."""
        spec = cell.spec
        needs = parse_strategy(spec.strategy).needs_pretrained
        if not (spec.weights == PRETRAIN or (self.pretrain is not None and spec.weights == "none" and needs)):
            return cell
        if not needs:
            return cell.with_weights("none")
        if self.pretrain is None:
            raise UserError(f"cell {cell.label} asks for weights 'pretrain' but the sweep has no 'pretrain' section",
                            "add pretrain: {dataset: ...} to the sweep file, or give weights explicitly")
        cell = cell.with_weights(PRETRAIN)
        cell.pretrain = self.pretrain_cell(tree, pretrains)
        return cell

    def pretrain_cell(self, tree: dict[str, Any], pretrains: dict[str, Cell]) -> Cell:
        """The pretraining cell of a cell built from ``tree``, shared through ``pretrains``."""
        assert self.pretrain is not None, "attach_pretrain checks it"
        ptree = copy.deepcopy(tree)
        ptree.update({"weights": "none", "strategy": "scratch"})
        if isinstance(ptree.get("train"), dict):  # how a cell fine-tunes is not how its backbone was pretrained
            for name in FINE_TUNING:
                ptree["train"].pop(name, None)
        _merge(ptree, copy.deepcopy(self.pretrain))
        spec = _validate(ptree, {"pretrain": True})
        if spec.weights == PRETRAIN:
            raise UserError("the pretrain section cannot itself start from 'pretrain'", "set its weights to none")
        return pretrains.setdefault(spec.key(), Cell(-1, {}, spec, role=PRETRAIN, tree=ptree))

    def search_probes(self, cell: Cell) -> list[Cell]:
        """``cell`` (a study) with each searched field at each of its bounds and choices, the others as the cell has
        them, starting from the study's pretraining run where the strategy needs one: every value a trial may take
        makes a valid spec (a one-line UserError naming the field and the value otherwise)."""
        assert self.search is not None
        probes = []
        for key, dim in self.search.space.items():
            for value in dim.probes():
                tree = copy.deepcopy(cell.tree or {})
                set_dotted(tree, key, value)
                try:
                    spec = build_spec(tree)
                except UserError as exc:
                    where = ", ".join(f"{k}={v}" for k, v in cell.axes.items())
                    raise UserError(f"search.space.{key} = {value!r}{f' (cell {where})' if where else ''}: "
                                    f"{exc}") from None
                probe = Cell(cell.index, {**cell.axes, key: value}, spec, role="trial", tree=tree)
                probes.append(self.attach_pretrain(probe, cell.tree or {}, {}))
        return probes

    def key(self) -> str:
        """Identity of the sweep (what it computes, not where it is tracked): reruns reopen its parent run. A search's
        part is what its studies compute (:meth:`SearchSpec.identity`): more trials or another confirm go on in the
        same parent run and studies."""
        parts: list[Any] = [self.name, self.base, self.axes, self.explicit, self.pretrain]
        if self.search is not None:
            parts.append(self.search.identity())
        body = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:20]


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None) -> Grid:
    """Read a sweep file; ``overrides`` (dotted keys, e.g. from ``--set``) apply to the base spec."""
    path = Path(path)
    raw = read_spec_file(path)
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown sweep key(s) {', '.join(unknown)}",
                        f"a sweep file has {', '.join(sorted(KNOWN_KEYS))}; spec fields go under 'base'")
    base = raw.get("base") or {}
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        base = read_spec_file(base_path, given_by=f"'base:' in {path}")
    if not isinstance(base, dict):
        raise UserError(f"{path}: 'base' must be a mapping of spec fields or a spec file path", "fix the sweep file")
    base = copy.deepcopy(base)
    # A sweep reruns a killed cell from its start, so per-epoch checkpoints would only cost time.
    train = base.setdefault("train", {})
    if isinstance(train, dict):
        train.setdefault("checkpoint", False)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(base, key, value)
    axes = raw.get("axes") or {}
    if not isinstance(axes, dict):
        raise UserError(f"{path}: 'axes' must map dotted spec keys to lists of values",
                        "e.g. axes: {backend: [torch, keras], train.seed: [0, 1, 2]}")
    if "dataset" in axes and all(isinstance(v, str) for v in axes["dataset"] or []):
        axes = {("dataset.source" if k == "dataset" else k): v for k, v in axes.items()}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: axis {key!r} must be a non-empty list", f"write {key}: [a, b]")
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if repeated:
            raise UserError(f"{path}: axis {key!r} lists {', '.join(repeated)} more than once",
                            "each value once: a repeated value would run the same cell twice")
        if key.split(".")[0] == "tracking":
            raise UserError(f"{path}: axis {key!r} varies where runs are tracked",
                            "a sweep keeps its cells in one experiment; set tracking under 'base'")
    explicit = raw.get("cells") or []
    if not isinstance(explicit, list) or not all(isinstance(c, dict) for c in explicit):
        raise UserError(f"{path}: 'cells' must be a list of mappings of spec fields", "e.g. cells: [{strategy: scratch}]")
    pretrain = raw.get("pretrain")
    if pretrain is not None and not isinstance(pretrain, dict):
        raise UserError(f"{path}: 'pretrain' must be a mapping of spec fields", "e.g. pretrain: {dataset: digits:0-4}")
    search = parse_search(raw["search"], str(path), axes) if raw.get("search") is not None else None
    grid = Grid(name=str(raw.get("name") or path.stem), base=base, axes=axes, explicit=explicit,
                pretrain=pretrain, source=path.read_text(encoding="utf-8", errors="replace"), search=search)
    for cell in grid.cells():  # validate every cell now, before anything is imported or run
        if search is not None and cell.role != PRETRAIN:
            if search.metric.startswith("val_") and not cell.spec.dataset.val:
                raise UserError(f"{path}: search.metric {search.metric} needs a validation split, and dataset.val is "
                                f"{cell.spec.dataset.val}", "give dataset.val (e.g. 0.2) or search a train_ metric")
            grid.search_probes(cell)
    return grid


def _validate(tree: dict[str, Any], axes: dict[str, Any]) -> ExperimentSpec:
    try:
        return build_spec(tree)
    except UserError as exc:
        where = ", ".join(f"{k}={v}" for k, v in axes.items())
        raise UserError(f"sweep cell {where or '(base)'}: {exc}") from None


def _merge(tree: dict[str, Any], over: dict[str, Any]) -> None:
    """Deep-merge ``over`` into ``tree``; dotted keys are allowed at any level."""
    for key, value in over.items():
        if isinstance(value, dict):
            node = tree.get(key)
            if isinstance(node, str) and key == "dataset":
                node = {"source": node}
            if not isinstance(node, dict):
                node = {}
            _merge(node, value)
            tree[key] = node
        else:
            set_dotted(tree, key, value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

