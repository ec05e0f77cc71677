"""The keras backend's hook implementations (see ``tle.hookspecs`` for the contract).

TensorFlow/Keras are imported inside the hooks only (about 9 s): ``tle
backends`` and ``tle models`` import this module and must stay fast. Never
import torch in this package: TensorFlow followed by triton (torch's ONNX
exporter, torch.compile) crashes the process.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tle import UserError, hookimpl
from tle.contracts import BackendInfo
from tle_keras import registry


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@hookimpl
def backend_info():
    tf_version = _version("tensorflow") or _version("tensorflow-cpu")
    keras_version = _version("keras")
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
def register_models():
    return registry.model_infos()


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
    from tle.spec import HeadSpec
    from tle_keras.models import build

    resolve_device(device)  # a GPU asked for but absent fails here, before anything is built
    return build(model, int(num_classes), tuple(input_shape), head or HeadSpec(), weights, int(seed or 0),
                 class_names=class_names, precision=precision or "auto")


@hookimpl
def apply_init(model, blocks, init, seed):
    from tle_keras.init import apply_init as run

    return run(model, list(blocks), init, int(seed or 0))


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

    from tle.contracts import BlockCount

    counts = []
    for block in model.trainable:
        total = trainable = 0
        for layer in model.layers_of(block):
            total += sum(int(np.prod(v.shape)) for v in layer.weights if v.path in model.capable)
            trainable += sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
        counts.append(BlockCount(block, total, trainable))
    return counts


@hookimpl
def train(model, data, stage, train, loop):
    from tle_keras.train import fit

    return fit(model, data, stage, train, loop)


@hookimpl
def evaluate(model, images, labels, batch_size):
    from tle_keras.train import evaluate as run

    return run(model, images, labels, batch_size)


@hookimpl
def save_weights(model, directory):
    from tle_keras.weights import save

    return save(model, directory)


@hookimpl
def portable_weights(model):
    from tle_keras.portable import to_portable

    return to_portable(model)


@hookimpl
def export_onnx(model, path, sample, metadata):
    from tle_keras.export import export

    return export(model, path, sample, metadata)


@hookimpl
def fuse(models, class_names, options):
    from tle.contracts import FuseOptions
    from tle_keras.fusion import fuse as run

    o = FuseOptions.of(options)
    return run(list(models), [list(n) for n in class_names], keep=float(o.keep), ratio=float(o.ratio),
               concatenate=bool(o.concatenate))  # no data-free rescaling of CNN logits helped: o.normalise is moot


@hookimpl
def dense_activations(inputs, units, activation, init, seed):
    from tle_keras.probe import dense_activations as run

    return run(inputs, int(units), activation, init, int(seed or 0))


@hookimpl
def block_activations(model, images):
    from tle_keras.probe import block_activations as run

    return run(model, images)


@hookimpl
def distributed_plan(distributed, device):
    from tle_keras.distributed import plan

    return plan(distributed, device)
