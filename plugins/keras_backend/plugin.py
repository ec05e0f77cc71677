"""The keras backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

TensorFlow/Keras are imported inside the hooks only (about 9 s): ``tle
backends`` and ``tle models`` import this module and must stay fast. Never
import torch in this package: TensorFlow followed by triton (torch's ONNX
exporter, torch.compile) crashes the process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tle import UserError
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

# Every hook is a plain function with its spec's arguments; TensorFlow/Keras are imported inside the hook, on its
# first call. @implements(spec) is @hookimpl, and lets pyright check the signature and return type against spec.


@implements(hookspecs.backend_info)
def backend_info() -> BackendInfo:
    tf_version = installed_version("tensorflow") or installed_version("tensorflow-cpu")
    keras_version = installed_version("keras")
    status = "ok"
    if tf_version is None:
        status = "tensorflow is not installed"
    elif keras_version is None or not keras_version.startswith("3"):
        status = "keras 3 is not installed"
    return BackendInfo(name="keras", framework="keras",
                       framework_version=f"{keras_version or '-'} (tensorflow {tf_version or '-'})",
                       description="keras.applications CNNs with their own block names, Keras initialisers and heads",
                       status=status, devices=("cpu", "gpu"),
                       capabilities=("onnx", "resume", "feature-cache", "gpu", "bf16", "fuse", "fuse-concatenate",
                                     "distributed", *TUNING))


register_models = delegate(hookspecs.register_models, "tle_keras.registry:model_infos")


@implements(hookspecs.resolve_device)
def resolve_device(device: str) -> str:
    from tle_keras.runtime import gpus

    device = (device or "auto").strip().lower()
    if device == "cpu":
        return "cpu"
    found = gpus()
    if device == "auto":
        return "GPU:0" if found else "cpu"
    if not found:
        raise UserError(f"device {device!r} asked for, but TensorFlow sees no GPU",
                        "use --device auto or cpu (or install tensorflow[and-cuda])")
    index = device.partition(":")[2] or "0"
    if not index.isdigit() or int(index) >= len(found):
        raise UserError(f"no GPU {device!r} (TensorFlow sees {len(found)})", "use --device cuda:0 or auto")
    return f"GPU:{int(index)}"


@implements(hookspecs.load_backbone)
def load_backbone(blueprint: Blueprint, weights: ResolvedWeights) -> object:
    from tle_keras.models import build

    resolve_device(blueprint.device)  # a GPU asked for but absent fails here, before anything is built
    return build(blueprint, weights)


apply_init = delegate(hookspecs.apply_init, "tle_keras.init:apply_init")


@implements(hookspecs.freeze_policy)
def freeze_policy(model: Any, trainable: dict[str, bool], fixed_stats: Iterable[str], params: str = "all") -> bool:
    """A layer's ``trainable`` sets every variable's; ``train.params`` then turns off those of the other kinds
    (Keras trains a variable only when both its layer and it are trainable)."""
    from tle_keras.params import kinds, trains

    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        for layer in model.layers_of(block):
            layer.trainable = flag
        if flag:
            for _, variable, kind in kinds(model, block):
                variable.trainable = trains(kind, block, params)
    model.params = params
    model.fix_stats(fixed_stats or ())
    return True


@implements(hookspecs.count_parameters)
def count_parameters(model: Any) -> list[BlockCount]:
    import numpy as np

    from tle.contract.records import BlockCount
    from tle_keras.params import kinds

    return [BlockCount.of(block, ((int(np.prod(v.shape)), layer.trainable and v.trainable, kind)
                                  for layer, v, kind in kinds(model, block)))
            for block in model.trainable]


block_parameters = delegate(hookspecs.block_parameters, "tle_keras.params:block_parameters")
train = delegate(hookspecs.train, "tle_keras.train:fit")
evaluate = delegate(hookspecs.evaluate, "tle_keras.train:evaluate")
save_weights = delegate(hookspecs.save_weights, "tle_keras.weights:save")
portable_weights = delegate(hookspecs.portable_weights, "tle_keras.portable:to_portable")
export_onnx = delegate(hookspecs.export_onnx, "tle_keras.export:export")


@implements(hookspecs.fuse)
def fuse(models: list[Any], class_names: list[list[str]], options: FuseOptions,
         images: list[np.ndarray] | None = None) -> Fused:
    """Heads fused by :mod:`tle.contract.head_fusion`; ``images`` is not used (pluggy leaves it out: it has a default)."""
    from tle_keras.fusion import fuse as fuse_nets

    return fuse_heads(fuse_nets, models, class_names, options)


dense_activations = delegate(hookspecs.dense_activations, "tle_keras.probe:dense_activations")
block_activations = delegate(hookspecs.block_activations, "tle_keras.probe:block_activations")
distributed_plan = delegate(hookspecs.distributed_plan, "tle_keras.distributed:plan")
