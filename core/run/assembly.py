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
from typing import Any

from tle.contract.records import Blueprint, ModelInfo, ResolvedWeights
from tle.errors import UserError
from tle.contract.spec import ExperimentSpec
from tle.contract.strategy import HEAD


def build(hook, blueprint: Blueprint, weights: ResolvedWeights | None = None) -> Any:
    """The backend's native model of ``blueprint`` on ``weights`` (none: every layer drawn from its seed)."""
    return hook.load_backbone(blueprint=blueprint, weights=weights or ResolvedWeights(kind="none"))


def assemble(hook, spec: ExperimentSpec, data, weights: ResolvedWeights, reinit: Iterable[str] | None = None,
             device: str | None = None) -> Any:
    """``spec``'s model on ``data``, ready to train or to use.

    ``weights``: what to start from, already resolved (:func:`tle.run.weights.resolve_weights` turns the spec's
    ``runs:/ID``, a path... into local files). ``reinit``: the plan's blocks that start from scratch; the backbone's
    are redrawn with ``spec.init`` (the head was drawn, or kept, by ``load_backbone``). ``device``: as in
    :meth:`Blueprint.of`.
    """
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
