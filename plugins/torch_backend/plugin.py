"""The torch backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tle.contract import hookspecs
from tle.contract.helpers import delegate, fuse_heads, installed_version
from tle.contract.hookspecs import implements
from tle.contract.records import BackendInfo
from tle.contract.tuning import L2SP_CAPABILITY, LR_FACTORS, PARAM_SELECT, SCHEDULE

TUNING = (LR_FACTORS, PARAM_SELECT, L2SP_CAPABILITY, SCHEDULE)  # every field of tle.contract.tuning

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np

    from tle.contract.records import (Blueprint, BlockCount, Fused, FuseOptions, ResolvedWeights)

# Every hook is a plain function with its spec's arguments; the framework is imported inside the hook, on its
# first call. @implements(spec) is @hookimpl, and lets pyright check the signature and return type against spec.


@implements(hookspecs.backend_info)
def backend_info() -> BackendInfo:
    torch_version = installed_version("torch")
    missing = [d for d in ("torch", "torchvision") if installed_version(d) is None]
    status = "ok" if not missing else f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return BackendInfo(name="torch", framework="pytorch", framework_version=torch_version or "-",
                       description="torchvision CNNs with Keras-style blocks, initialisers and heads",
                       status=status, devices=("cpu", "cuda"),
                       capabilities=("onnx", "resume", "feature-cache", "cuda", "bf16", "fuse", "fuse-concatenate",
                                     "distributed", *TUNING))


register_models = delegate(hookspecs.register_models, "tle_torch.registry:model_infos")
resolve_device = delegate(hookspecs.resolve_device, "tle_torch.device:resolve")


@implements(hookspecs.load_backbone)
def load_backbone(blueprint: Blueprint, weights: ResolvedWeights) -> object:
    """``blueprint.precision`` is the train spec's: torch reads it when training (autocast), not at build time."""
    from tle_torch.device import resolve
    from tle_torch.models import build

    return build(blueprint, weights).to(resolve(blueprint.device))


apply_init = delegate(hookspecs.apply_init, "tle_torch.init:apply_init")


@implements(hookspecs.freeze_policy)
def freeze_policy(model: Any, trainable: dict[str, bool], fixed_stats: Iterable[str], params: str = "all") -> bool:
    from tle_torch.params import kinds, trains

    model.fixed_stats = set(fixed_stats or ())
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        for _, p, kind in kinds(model.module_of(block)):
            p.requires_grad_(flag and trains(kind, block, params))
    model.train(model.training)  # put newly frozen blocks (and fixed statistics) into eval mode now
    return True


@implements(hookspecs.count_parameters)
def count_parameters(model: Any) -> list[BlockCount]:
    from tle.contract.records import BlockCount
    from tle_torch.params import kinds

    return [BlockCount.of(block, ((p.numel(), p.requires_grad, kind)
                                  for _, p, kind in kinds(model.module_of(block))))
            for block in model.trainable]


block_parameters = delegate(hookspecs.block_parameters, "tle_torch.params:block_parameters")
train = delegate(hookspecs.train, "tle_torch.train:fit")
evaluate = delegate(hookspecs.evaluate, "tle_torch.train:evaluate")
save_weights = delegate(hookspecs.save_weights, "tle_torch.weights:save")
portable_weights = delegate(hookspecs.portable_weights, "tle_torch.portable:to_portable")
export_onnx = delegate(hookspecs.export_onnx, "tle_torch.export:export")


@implements(hookspecs.fuse)
def fuse(models: list[Any], class_names: list[list[str]], options: FuseOptions,
         images: list[np.ndarray] | None = None) -> Fused:
    """Heads fused by :mod:`tle.contract.head_fusion`; ``images`` is not used (pluggy leaves it out: it has a default)."""
    from tle_torch.fusion import fuse as fuse_nets

    return fuse_heads(fuse_nets, models, class_names, options)


dense_activations = delegate(hookspecs.dense_activations, "tle_torch.probe:dense_activations")
block_activations = delegate(hookspecs.block_activations, "tle_torch.probe:block_activations")
distributed_plan = delegate(hookspecs.distributed_plan, "tle_torch.distributed:plan")
launch_ranks = delegate(hookspecs.launch_ranks, "tle_torch.distributed:launch")
