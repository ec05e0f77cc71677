"""The spiking backend's hook implementations (see ``tle.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tle import UserError, hookimpl
from tle.contracts import BackendInfo
from tle_spyketorch import registry


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@hookimpl
def backend_info():
    torch_version = _version("torch")
    status = "ok" if torch_version else "torch is not installed"
    return BackendInfo(name="spyketorch", framework="pytorch", framework_version=torch_version or "-",
                       description="SpykeTorch's spiking networks (DoG, latency coding, STDP, R-STDP), batched",
                       status=status, devices=("cpu", "cuda"), capabilities=("onnx", "nir", "resume", "fuse", "cuda"),
                       default_init=registry.DEFAULT_INIT)


@hookimpl
def register_models():
    return registry.model_infos()


@hookimpl
def resolve_device(device):
    from tle_torch.device import resolve

    return resolve(device)


@hookimpl
def load_backbone(model, num_classes, class_names, input_shape, head, weights, device, seed):
    from tle_spyketorch.models import build

    if num_classes is not None and int(num_classes) != len(class_names):
        raise UserError(f"{num_classes} classes but {len(class_names)} class names", "pass one name per class")
    net = build(model, list(class_names), tuple(input_shape), head, weights, int(seed or 0))
    return net.to(resolve_device(device))


@hookimpl
def apply_init(model, blocks, init, seed):
    from tle_spyketorch.init import apply_init as run

    return run(model, list(blocks), init, int(seed or 0))


@hookimpl
def freeze_policy(model, trainable):
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        model.synapses(block).requires_grad_(flag)
    return True


@hookimpl
def count_parameters(model):
    from tle.contracts import BlockCount

    counts = []
    for block in model.trainable:
        w = model.synapses(block)
        counts.append(BlockCount(block, w.numel(), w.numel() if w.requires_grad else 0))
    return counts


@hookimpl
def train(model, data, stage, train, loop):
    from tle_spyketorch.train import fit

    return fit(model, data, stage, train, loop)


@hookimpl
def evaluate(model, images, labels, batch_size):
    from tle_spyketorch.train import evaluate as run

    return run(model, images, labels, batch_size)


@hookimpl
def save_weights(model, directory):
    from tle_spyketorch.weights import save

    return save(model, directory)


@hookimpl
def export_onnx(model, path, sample, metadata):
    from tle_spyketorch.export import export

    return export(model, path, metadata)


@hookimpl
def export_extras(model, directory):
    from pathlib import Path

    from tle_spyketorch.nir_export import export

    return [export(model, Path(directory) / "model.nir")]


@hookimpl
def fuse(models, class_names, options):
    from tle.contracts import Fused, FuseOptions
    from tle_spyketorch.fusion import fuse as run

    o = FuseOptions.of(options)
    fused = run(list(models), keep=float(o.keep), ratio=float(o.ratio), class_names=[list(n) for n in class_names],
                normalise=o.normalise)
    return Fused(fused, tuple(fused.scales))
