"""A model put together from its parts: the starting weights resolved, the backend's model built on them, the
blocks the strategy starts from scratch redrawn.

Every place that builds a model goes through here: the runner (and so a sweep's cells and ``--resume``), a stored
run rebuilt (``tle export``, portable weights, ``tle convert``'s source), ``tle convert``'s target, ``tle fuse``'s
parents, and, without a spec, ``tle plan``, ``tle init-study --model`` and the portable file of weights only one
backend reads. Whether a saved head is kept is decided by one rule (:func:`tle.contract.records.same_classes`), which
the backends apply in ``load_backbone`` to the class names they are given here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tle.contract.records import ModelInfo, ResolvedWeights
from tle.errors import UserError
from tle.contract.spec import ExperimentSpec, HeadSpec
from tle.contract.strategy import HEAD


@dataclass(frozen=True)
class Blueprint:
    """What :func:`tle.contract.hookspecs.load_backbone` is asked to build, with a spec or without one."""

    model: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    head: HeadSpec
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0

    @classmethod
    def of(cls, spec: ExperimentSpec, data, device: str | None = None) -> Blueprint:
        """``spec``'s model for ``data``'s classes and images; ``device`` overrides ``train.device`` (a rank's own)."""
        return cls(spec.model, tuple(data.class_names), tuple(data.input_shape), spec.head,
                   device or spec.train.device, spec.train.precision, spec.train.seed)


def build(hook, blueprint: Blueprint, weights: ResolvedWeights | None = None) -> Any:
    """The backend's native model of ``blueprint`` on ``weights`` (none: every layer drawn from its seed)."""
    b = blueprint
    return hook.load_backbone(model=b.model, num_classes=len(b.class_names), class_names=list(b.class_names),
                              input_shape=b.input_shape, head=b.head, weights=weights or ResolvedWeights(kind="none"),
                              device=b.device, precision=b.precision, seed=b.seed)


def assemble(hook, spec: ExperimentSpec, data, workdir: Path, weights: str | ResolvedWeights | None = None,
             reinit: Iterable[str] | None = None, device: str | None = None) -> Any:
    """``spec``'s model on ``data``, ready to train or to use.

    ``weights``: what to start from, ``spec.weights`` unless given; text (``runs:/ID``, a path...) is resolved
    into ``workdir`` (:func:`tle.run.weights.resolve_weights`), a :class:`ResolvedWeights` is used as it is (a caller
    that already fetched the files). ``reinit``: the plan's blocks that start from scratch; the backbone's are
    redrawn with ``spec.init`` (the head was drawn, or kept, by ``load_backbone``). ``device``: as in
    :meth:`Blueprint.of`.
    """
    from tle.run.weights import resolve_weights

    if not isinstance(weights, ResolvedWeights):
        weights = resolve_weights(weights or spec.weights, spec.backend, workdir, model=spec.model)
    model = build(hook, Blueprint.of(spec, data, device), weights)
    if reinit is not None:
        hook.apply_init(model=model, blocks=[b for b in reinit if b != HEAD], init=spec.init, seed=spec.train.seed)
    return model


def check_input(info: ModelInfo, input_shape) -> None:
    """Images smaller than the model takes are the user's to fix, before anything is built or tracked."""
    h, w = input_shape[0], input_shape[1]
    if min(h, w) < info.min_size:
        raise UserError(f"{info.name} needs images of at least {info.min_size}px, the data is {h}x{w}",
                        f"set --image-size {max(info.min_size, info.default_size or 0)}")
