"""The keras backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

TensorFlow/Keras are imported inside the hooks only (about 9 s): ``tle
backends`` and ``tle models`` import this module and must stay fast. Never
import torch in this package: TensorFlow followed by triton (torch's ONNX
exporter, torch.compile) crashes the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tle import UserError
from tle.contract import hookspecs
from tle.contract.helpers import fuse_heads, installed_version
from tle.contract.hookspecs import implements
from tle.contract.records import BackendInfo

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np

    from tle.contract.distributed import DistributedPlan
    from tle.contract.initializers import InitSpec
    from tle.contract.loop import TrainLoop
    from tle.contract.records import (Blueprint, BlockCount, Evaluation, ExportMetadata, Fused, FuseOptions, ModelInfo,
                                      ResolvedWeights, Trained)
    from tle.contract.spec import DistributedSpec, TrainSpec
    from tle.contract.strategy import Stage
    from tle.data import Dataset

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
                                     "distributed"))


@implements(hookspecs.register_models)
def register_models() -> list[ModelInfo]:
    from tle_keras.registry import model_infos

    return model_infos()


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


@implements(hookspecs.apply_init)
def apply_init(model: Any, blocks: list[str], init: InitSpec, seed: int) -> bool:
    from tle_keras.init import apply_init as init_blocks

    return init_blocks(model, blocks, init, seed)


@implements(hookspecs.freeze_policy)
def freeze_policy(model: Any, trainable: dict[str, bool], fixed_stats: Iterable[str]) -> bool:
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        for layer in model.layers_of(block):
            layer.trainable = flag
    model.fix_stats(fixed_stats or ())
    return True


@implements(hookspecs.count_parameters)
def count_parameters(model: Any) -> list[BlockCount]:
    import numpy as np

    from tle.contract.records import BlockCount

    counts = []
    for block in model.trainable:
        total = trainable = 0
        for layer in model.layers_of(block):
            total += sum(int(np.prod(v.shape)) for v in layer.weights if v.path in model.capable)
            trainable += sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
        counts.append(BlockCount(block, total, trainable))
    return counts


@implements(hookspecs.train)
def train(model: Any, data: Dataset, stage: Stage, train: TrainSpec, loop: TrainLoop) -> Trained:
    from tle_keras.train import fit

    return fit(model, data, stage, train, loop)


@implements(hookspecs.evaluate)
def evaluate(model: Any, images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Evaluation:
    from tle_keras.train import evaluate as run

    return run(model, images, labels, batch_size)


@implements(hookspecs.save_weights)
def save_weights(model: Any, directory: Path) -> str:
    from tle_keras.weights import save

    return save(model, directory)


@implements(hookspecs.portable_weights)
def portable_weights(model: Any) -> dict[str, np.ndarray]:
    from tle_keras.portable import to_portable

    return to_portable(model)


@implements(hookspecs.export_onnx)
def export_onnx(model: Any, path: Path, sample: np.ndarray, metadata: ExportMetadata) -> str:
    from tle_keras.export import export

    return export(model, path, sample, metadata)


@implements(hookspecs.fuse)
def fuse(models: list[Any], class_names: list[list[str]], options: FuseOptions,
         images: list[np.ndarray] | None = None) -> Fused:
    """Heads fused by :mod:`tle.contract.head_fusion`; ``images`` is not used (pluggy leaves it out: it has a default)."""
    from tle_keras.fusion import fuse as fuse_nets

    return fuse_heads(fuse_nets, models, class_names, options)


@implements(hookspecs.dense_activations)
def dense_activations(inputs: np.ndarray, units: int, activation: str, init: InitSpec, seed: int) -> np.ndarray:
    from tle_keras.probe import dense_activations as probe

    return probe(inputs, units, activation, init, seed)


@implements(hookspecs.block_activations)
def block_activations(model: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    from tle_keras.probe import block_activations as probe

    return probe(model, images)


@implements(hookspecs.distributed_plan)
def distributed_plan(distributed: DistributedSpec, device: str) -> DistributedPlan:
    from tle_keras.distributed import plan

    return plan(distributed, device)
