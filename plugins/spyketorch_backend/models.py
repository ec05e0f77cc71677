"""Building a :class:`SpikingNet` from a name, the classes and a weight source."""

from __future__ import annotations

from tle import UserError
from tle_spyketorch import registry
from tle_spyketorch import weights as weight_files
from tle_spyketorch.init import apply_init
from tle_spyketorch.network import SpikingNet


def build(name: str, class_names: list[str], input_shape, head, weights, seed: int) -> SpikingNet:
    if name not in registry.ARCHS:
        raise UserError(f"the spyketorch backend has no model {name!r}", f"choose one of {', '.join(registry.names())}")
    arch = registry.ARCHS[name]
    h, w, c = (int(v) for v in input_shape)
    if c not in (1, 3):
        raise UserError(f"{name} takes 1- or 3-channel images, the data has {c} channels",
                        "set dataset.channels to 1 or 3")
    if min(h, w) < arch.size:
        raise UserError(f"{name} needs images of at least {arch.size}px, the data is {h}x{w}",
                        f"set --image-size {arch.size}")
    kind = getattr(weights, "kind", "none") if weights is not None else "none"
    if kind == "imagenet":
        raise UserError("spiking networks have no ImageNet weights",
                        "use --weights none, or runs:/RUN_ID of an earlier spyketorch run")
    net = SpikingNet(name, arch, list(class_names), (h, w, c))
    apply_init(net, ["conv1", "conv2"], _mozafari(), seed)
    # The head (conv3) is new unless the weights come from a run on these very classes. Unset, it is
    # drawn like the rest of the network (a CNN's head default, glorot_uniform, is Keras's Dense's).
    apply_init(net, ["head"], head.init if head is not None and head.init is not None else _mozafari(), seed)
    if kind == "file":
        source = str(getattr(weights, "source", "") or weights.path)
        if weights.path is None:
            raise UserError(f"weights {source!r} resolved to no file", "give a weights.pt path or runs:/RUN_ID")
        state = weight_files.read(weights.path, source)
        weight_files.load_into(net, state, source, weights.keeps_head(class_names))
    return net


def _mozafari():
    from tle.contract.initializers import InitSpec

    return InitSpec.parse(registry.DEFAULT_INIT)
