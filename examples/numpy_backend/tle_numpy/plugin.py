"""The hook implementations tle calls; see ``tle.contract.hookspecs`` for the contract.

Each hook is marked ``@implements(hookspecs.<hook>)``, tle's ``@hookimpl`` that also lets a type checker
(pyright) check the function's arguments and return type against the hook's spec: so each declares all of
its spec's arguments, used or not (pluggy itself allows any subset, with plain ``@hookimpl``).
NumPy is the "framework" here and the core imports it anyway; a real backend
would import torch & co. inside the hooks, never at module level.
``fuse`` is left out: a backend that cannot fuse simply does not implement it.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tle import UserError
from tle.contract import hookspecs
from tle.contract.hookspecs import implements
from tle.contract.records import BackendInfo, BlockCount, ModelInfo
from tle.contract.spec import HeadSpec
from tle_numpy import onnx_export, probe, training
from tle_numpy import weights as npz
from tle_numpy.model import MODELS, Net, build, init_layer, layer_rng

if TYPE_CHECKING:
    from tle.contract.initializers import InitSpec
    from tle.contract.loop import TrainLoop
    from tle.contract.records import Blueprint, Evaluation, ExportMetadata, ResolvedWeights, Trained
    from tle.contract.spec import TrainSpec
    from tle.contract.strategy import Stage
    from tle.data import Dataset

DESCRIPTIONS = {
    "mlp": "flatten -> Dense 128 ReLU -> Dense 64 ReLU",
    "mlp3": "flatten -> Dense 256 ReLU -> Dense 128 ReLU -> Dense 64 ReLU",
}


@implements(hookspecs.backend_info)
def backend_info() -> BackendInfo:
    return BackendInfo(name="numpy", framework="numpy", framework_version=version("numpy"),
                       description="example backend: NumPy MLPs with hand-written backprop",
                       devices=("cpu",), capabilities=("onnx", "resume", "feature-cache", "lr-factors", "schedule",
                                                       "param-select", "l2sp"))


@implements(hookspecs.register_models)
def register_models() -> list[ModelInfo]:
    return [ModelInfo(name=name, blocks=tuple(f"block{i}" for i in range(1, len(widths) + 1)), family="mlp",
                      description=DESCRIPTIONS[name]) for name, widths in MODELS.items()]


@implements(hookspecs.resolve_device)
def resolve_device(device: str) -> str:
    if device in ("auto", "cpu"):
        return "cpu"
    raise UserError(f"the numpy backend runs on the CPU only, not {device!r}", "use --device cpu or auto")


@implements(hookspecs.load_backbone)
def load_backbone(blueprint: Blueprint, weights: ResolvedWeights) -> Net:
    """``blueprint.device`` is always the CPU (see :func:`resolve_device`); its precision is always float32."""
    b, class_names = blueprint, list(blueprint.class_names)
    net = build(b.model, b.input_shape, b.num_classes, b.head or HeadSpec(), b.seed)
    kind = weights.kind if weights is not None else "none"
    if kind == "imagenet":
        raise UserError("the numpy example backend has no ImageNet weights",
                        hint="use --weights runs:/RUN_ID or a .npz file")
    if kind == "file":
        npz.load(net, weights, class_names)
    elif kind != "none":
        raise UserError(f"unknown weights kind {kind!r}", "use none, a .npz file or runs:/RUN_ID")
    return net


@implements(hookspecs.apply_init)
def apply_init(model: Net, blocks: list[str], init: InitSpec, seed: int) -> bool:
    unknown = set(blocks) - set(model.blocks)
    if unknown:
        raise UserError(f"{model.model} has no block {', '.join(sorted(unknown))}",
                        f"its blocks are {', '.join(model.blocks)}")
    for index, layer in enumerate(model.layers):
        if layer.block in blocks:
            init_layer(layer, init, layer_rng(seed, index))
    return True


@implements(hookspecs.freeze_policy)
def freeze_policy(model: Net, trainable: dict[str, bool], fixed_stats: Iterable[str] = (), params: str = "all") -> bool:
    """No normalisation layers: ``fixed_stats`` is not used (pluggy leaves it out: it has a default); with
    ``params`` ``bias`` or ``bias+norm`` a trainable block trains its biases, with ``norm`` nothing of it."""
    model.trainable = {block: trainable.get(block) is True for block in model.blocks}
    model.params = params
    return True


@implements(hookspecs.count_parameters)
def count_parameters(model: Net) -> list[BlockCount]:
    counts = []
    for block in model.blocks:
        layers = [layer for layer in model.layers if layer.block == block]
        total, bias = sum(layer.size for layer in layers), sum(layer.b.size for layer in layers)
        trains = total if block == "head" or model.params == "all" else bias if "bias" in model.params else 0
        counts.append(BlockCount(block, total, trains if model.trainable[block] else 0, bias=bias))
    return counts


@implements(hookspecs.block_parameters)
def block_parameters(model: Net) -> dict[str, dict[str, np.ndarray]]:
    return {block: {f"{layer.name}.{k}": getattr(layer, k).copy() for layer in model.layers if layer.block == block
                    for k in ("W", "b")} for block in model.blocks}


@implements(hookspecs.train)
def train(model: Net, data: Dataset, stage: Stage, train: TrainSpec, loop: TrainLoop) -> Trained:
    return training.fit(model, data, stage, train, loop)


@implements(hookspecs.evaluate)
def evaluate(model: Net, images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Evaluation:
    return training.evaluate(model, images, labels, batch_size)


@implements(hookspecs.save_weights)
def save_weights(model: Net, directory: Path) -> Path:
    return npz.save(model, directory)


@implements(hookspecs.export_onnx)
def export_onnx(model: Net, path: Path, sample: np.ndarray, metadata: ExportMetadata) -> Path:
    return onnx_export.export(model, path, metadata.as_props())


@implements(hookspecs.dense_activations)
def dense_activations(inputs: np.ndarray, units: int, activation: str, init: InitSpec, seed: int) -> np.ndarray:
    return probe.dense_activations(inputs, int(units), activation, init, int(seed or 0))


@implements(hookspecs.block_activations)
def block_activations(model: Net, images: np.ndarray, blocks: list[str] | None = None) -> dict[str, np.ndarray]:
    return probe.block_activations(model, images, blocks)
