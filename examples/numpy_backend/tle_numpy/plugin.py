"""The hook implementations tle calls; see ``tle.contract.hookspecs`` for the contract.

Each hook declares only the arguments it uses (pluggy allows any subset).
NumPy is the "framework" here and the core imports it anyway; a real backend
would import torch & co. inside the hooks, never at module level.
``fuse`` is left out: a backend that cannot fuse simply does not implement it.
"""

from __future__ import annotations

from importlib.metadata import version

from tle import UserError, hookimpl
from tle.contract.records import BackendInfo, BlockCount, ModelInfo
from tle.contract.spec import HeadSpec
from tle_numpy import onnx_export, probe, training
from tle_numpy import weights as npz
from tle_numpy.model import MODELS, build, init_layer, layer_rng

DESCRIPTIONS = {
    "mlp": "flatten -> Dense 128 ReLU -> Dense 64 ReLU",
    "mlp3": "flatten -> Dense 256 ReLU -> Dense 128 ReLU -> Dense 64 ReLU",
}


@hookimpl
def backend_info():
    return BackendInfo(name="numpy", framework="numpy", framework_version=version("numpy"),
                       description="example backend: NumPy MLPs with hand-written backprop",
                       devices=("cpu",), capabilities=("onnx", "resume", "feature-cache"))


@hookimpl
def register_models():
    return [ModelInfo(name=name, blocks=tuple(f"block{i}" for i in range(1, len(widths) + 1)), family="mlp",
                      description=DESCRIPTIONS[name]) for name, widths in MODELS.items()]


@hookimpl
def resolve_device(device):
    if device in ("auto", "cpu"):
        return "cpu"
    raise UserError(f"the numpy backend runs on the CPU only, not {device!r}", "use --device cpu or auto")


@hookimpl
def load_backbone(model, num_classes, class_names, input_shape, head, weights, seed):
    net = build(model, tuple(input_shape), num_classes, head or HeadSpec(), seed)
    kind = weights.kind if weights is not None else "none"
    if kind == "imagenet":
        raise UserError("the numpy example backend has no ImageNet weights",
                        hint="use --weights runs:/RUN_ID or a .npz file")
    if kind == "file":
        npz.load(net, weights, class_names)
    elif kind != "none":
        raise UserError(f"unknown weights kind {kind!r}", "use none, a .npz file or runs:/RUN_ID")
    return net


@hookimpl
def apply_init(model, blocks, init, seed):
    unknown = set(blocks) - set(model.blocks)
    if unknown:
        raise UserError(f"{model.model} has no block {', '.join(sorted(unknown))}",
                        f"its blocks are {', '.join(model.blocks)}")
    for index, layer in enumerate(model.layers):
        if layer.block in blocks:
            init_layer(layer, init, layer_rng(seed, index))
    return True


@hookimpl
def freeze_policy(model, trainable):
    model.trainable = {block: trainable.get(block) is True for block in model.blocks}
    return True


@hookimpl
def count_parameters(model):
    counts = []
    for block in model.blocks:
        total = sum(layer.size for layer in model.layers if layer.block == block)
        counts.append(BlockCount(block, total, total if model.trainable[block] else 0))
    return counts


@hookimpl
def train(model, data, stage, train, loop):
    return training.fit(model, data, stage, train, loop)


@hookimpl
def evaluate(model, images, labels, batch_size):
    return training.evaluate(model, images, labels, batch_size)


@hookimpl
def save_weights(model, directory):
    return npz.save(model, directory)


@hookimpl
def export_onnx(model, path, metadata):
    return onnx_export.export(model, path, metadata.as_props())


@hookimpl
def dense_activations(inputs, units, activation, init, seed):
    return probe.dense_activations(inputs, int(units), activation, init, int(seed or 0))


@hookimpl
def block_activations(model, images):
    return probe.block_activations(model, images)
