"""The keras backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

TensorFlow/Keras are imported inside the hooks only (about 9 s): ``tle
backends`` and ``tle models`` import this module and must stay fast. Never
import torch in this package: TensorFlow followed by triton (torch's ONNX
exporter, torch.compile) crashes the process.
"""

from __future__ import annotations

from tle import UserError, hookimpl
from tle.contract.records import BackendInfo
from tle.contract.helpers import delegate, fuse_heads, installed_version


@hookimpl
def backend_info():
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


@hookimpl
def resolve_device(device):
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


@hookimpl
def load_backbone(model, num_classes, class_names, input_shape, head, weights, device, precision, seed):
    from tle.contract.spec import HeadSpec
    from tle_keras.models import build

    resolve_device(device)  # a GPU asked for but absent fails here, before anything is built
    return build(model, int(num_classes), tuple(input_shape), head or HeadSpec(), weights, int(seed or 0),
                 class_names=class_names, precision=precision or "auto")


@hookimpl
def freeze_policy(model, trainable, fixed_stats):
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        for layer in model.layers_of(block):
            layer.trainable = flag
    model.fix_stats(fixed_stats or ())
    return True


@hookimpl
def count_parameters(model):
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


# The hooks tle.contract.helpers writes: fuse through tle.contract.head_fusion, and those that pass their arguments straight
# on to one function, imported on the hook's first call. plugins/torch_backend/plugin.py mirrors them.
fuse = fuse_heads("tle_keras.fusion:fuse")
globals().update(delegate({
    "register_models": "tle_keras.registry:model_infos",
    "apply_init": "tle_keras.init:apply_init", "train": "tle_keras.train:fit", "evaluate": "tle_keras.train:evaluate",
    "save_weights": "tle_keras.weights:save", "portable_weights": "tle_keras.portable:to_portable",
    "export_onnx": "tle_keras.export:export",
    "dense_activations": "tle_keras.probe:dense_activations", "block_activations": "tle_keras.probe:block_activations",
    "distributed_plan": "tle_keras.distributed:plan",
}))
