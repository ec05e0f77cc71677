"""The torch backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from tle import hookimpl
from tle.contract.records import BackendInfo
from tle.contract.helpers import delegate, fuse_heads, installed_version


@hookimpl
def backend_info():
    torch_version = installed_version("torch")
    missing = [d for d in ("torch", "torchvision") if installed_version(d) is None]
    status = "ok" if not missing else f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return BackendInfo(name="torch", framework="pytorch", framework_version=torch_version or "-",
                       description="torchvision CNNs with Keras-style blocks, initialisers and heads",
                       status=status, devices=("cpu", "cuda"),
                       capabilities=("onnx", "resume", "feature-cache", "cuda", "bf16", "fuse", "fuse-concatenate",
                                     "distributed"))


@hookimpl
def load_backbone(model, num_classes, class_names, input_shape, head, weights, device, seed):
    from tle.contract.spec import HeadSpec
    from tle_torch.device import resolve
    from tle_torch.models import build

    net = build(model, int(num_classes), list(class_names), tuple(input_shape), head or HeadSpec(), weights,
                int(seed or 0))
    return net.to(resolve(device))


@hookimpl
def freeze_policy(model, trainable, fixed_stats):
    model.fixed_stats = set(fixed_stats or ())
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        for p in model.module_of(block).parameters():
            p.requires_grad_(flag)
    model.train(model.training)  # put newly frozen blocks (and fixed statistics) into eval mode now
    return True


@hookimpl
def count_parameters(model):
    from tle.contract.records import BlockCount

    counts = []
    for block in model.trainable:
        params = list(model.module_of(block).parameters())
        total = sum(p.numel() for p in params)
        counts.append(BlockCount(block, total, sum(p.numel() for p in params if p.requires_grad)))
    return counts


# The hooks tle.contract.helpers writes: fuse through tle.contract.head_fusion, and those that pass their arguments straight
# on to one function, imported on the hook's first call. plugins/keras_backend/plugin.py mirrors them.
fuse = fuse_heads("tle_torch.fusion:fuse")
globals().update(delegate({
    "register_models": "tle_torch.registry:model_infos", "resolve_device": "tle_torch.device:resolve",
    "apply_init": "tle_torch.init:apply_init", "train": "tle_torch.train:fit", "evaluate": "tle_torch.train:evaluate",
    "save_weights": "tle_torch.weights:save", "portable_weights": "tle_torch.portable:to_portable",
    "export_onnx": "tle_torch.export:export",
    "dense_activations": "tle_torch.probe:dense_activations", "block_activations": "tle_torch.probe:block_activations",
    "distributed_plan": "tle_torch.distributed:plan", "launch_ranks": "tle_torch.distributed:launch",
}))
