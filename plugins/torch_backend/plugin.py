"""The torch backend's hook implementations (see ``tle.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tle import hookimpl
from tle.contracts import BackendInfo
from tle_torch import registry


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@hookimpl
def backend_info():
    torch_version = _version("torch")
    missing = [d for d in ("torch", "torchvision") if _version(d) is None]
    status = "ok" if not missing else f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return BackendInfo(name="torch", framework="pytorch", framework_version=torch_version or "-",
                       description="torchvision CNNs with Keras-style blocks, initialisers and heads",
                       status=status, devices=("cpu", "cuda"),
                       capabilities=("onnx", "resume", "feature-cache", "cuda", "bf16", "fuse", "fuse-concatenate",
                                     "distributed"))


@hookimpl
def register_models():
    return registry.model_infos()


@hookimpl
def resolve_device(device):
    from tle_torch.device import resolve

    return resolve(device)


@hookimpl
def load_backbone(model, num_classes, class_names, input_shape, head, weights, device, seed):
    from tle.spec import HeadSpec
    from tle_torch.models import build

    net = build(model, int(num_classes), list(class_names), tuple(input_shape), head or HeadSpec(), weights,
                int(seed or 0))
    return net.to(resolve_device(device))


@hookimpl
def apply_init(model, blocks, init, seed):
    from tle_torch.init import apply_init as run

    return run(model, list(blocks), init, int(seed or 0))


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
    from tle.contracts import BlockCount

    counts = []
    for block in model.trainable:
        params = list(model.module_of(block).parameters())
        total = sum(p.numel() for p in params)
        counts.append(BlockCount(block, total, sum(p.numel() for p in params if p.requires_grad)))
    return counts


@hookimpl
def train(model, data, stage, train, loop):
    from tle_torch.train import fit

    return fit(model, data, stage, train, loop)


@hookimpl
def evaluate(model, images, labels, batch_size):
    from tle_torch.train import evaluate as run

    return run(model, images, labels, batch_size)


@hookimpl
def save_weights(model, directory):
    from tle_torch.weights import save

    return save(model, directory)


@hookimpl
def portable_weights(model):
    from tle_torch.portable import to_portable

    return to_portable(model)


@hookimpl
def export_onnx(model, path, sample, metadata):
    from tle_torch.export import export

    return export(model, path, sample, metadata)


@hookimpl
def fuse(models, class_names, options):
    from tle.contracts import FuseOptions
    from tle_torch.fusion import fuse as run

    o = FuseOptions.of(options)
    return run(list(models), [list(n) for n in class_names], keep=float(o.keep), ratio=float(o.ratio),
               concatenate=bool(o.concatenate))  # no data-free rescaling of CNN logits helped: o.normalise is moot


@hookimpl
def dense_activations(inputs, units, activation, init, seed):
    from tle_torch.probe import dense_activations as run

    return run(inputs, int(units), activation, init, int(seed or 0))


@hookimpl
def block_activations(model, images):
    from tle_torch.probe import block_activations as run

    return run(model, images)


@hookimpl
def distributed_plan(distributed, device):
    from tle_torch.distributed import plan

    return plan(distributed, device)


@hookimpl
def launch_ranks(plan, distributed, entry, args, failures):
    from tle_torch.distributed import launch

    return launch(plan, distributed, entry, args, failures)
