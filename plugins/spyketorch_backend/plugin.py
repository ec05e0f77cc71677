"""The spiking backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from tle import UserError, hookimpl
from tle.contract.records import BackendInfo
from tle.contract.helpers import delegate, installed_version
from tle_spyketorch import registry


@hookimpl
def backend_info():
    torch_version = installed_version("torch")
    status = "ok" if torch_version else "torch is not installed"
    return BackendInfo(name="spyketorch", framework="pytorch", framework_version=torch_version or "-",
                       description="SpykeTorch's spiking networks (DoG, latency coding, STDP, R-STDP), batched",
                       status=status, devices=("cpu", "cuda"), capabilities=("onnx", "nir", "resume", "fuse", "cuda"),
                       default_init=registry.DEFAULT_INIT)


@hookimpl
def load_backbone(model, num_classes, class_names, input_shape, head, weights, device, seed):
    from tle_spyketorch.models import build
    from tle_torch.device import resolve

    if num_classes is not None and int(num_classes) != len(class_names):
        raise UserError(f"{num_classes} classes but {len(class_names)} class names", "pass one name per class")
    net = build(model, list(class_names), tuple(input_shape), head, weights, int(seed or 0))
    return net.to(resolve(device))


@hookimpl
def freeze_policy(model, trainable):
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        model.synapses(block).requires_grad_(flag)
    return True


@hookimpl
def count_parameters(model):
    from tle.contract.records import BlockCount

    counts = []
    for block in model.trainable:
        w = model.synapses(block)
        counts.append(BlockCount(block, w.numel(), w.numel() if w.requires_grad else 0))
    return counts


@hookimpl
def export_extras(model, directory):
    from pathlib import Path

    from tle_spyketorch.nir_export import export

    return [export(model, Path(directory) / "model.nir")]


@hookimpl
def fuse(models, class_names, options, images):
    from tle.contract.records import Fused, FuseOptions
    from tle_spyketorch.fusion import fuse as run

    o = FuseOptions.of(options)
    fused = run(list(models), keep=float(o.keep), ratio=float(o.ratio), class_names=[list(n) for n in class_names],
                normalise=o.normalise, images=images if o.rank == "activity" else None,
                given=list(o.scales) or None)
    return Fused(fused, tuple(fused.scales), fused.ranked_by)


# The hooks tle.contract.helpers writes: those that pass their arguments straight on to one function, imported on
# the hook's first call.
globals().update(delegate({
    "register_models": "tle_spyketorch.registry:model_infos", "resolve_device": "tle_torch.device:resolve",
    "apply_init": "tle_spyketorch.init:apply_init", "train": "tle_spyketorch.train:fit",
    "evaluate": "tle_spyketorch.train:evaluate", "save_weights": "tle_spyketorch.weights:save",
    "export_onnx": "tle_spyketorch.export:export(model, path, metadata)",  # no sample: it writes the graph node by node
}))
