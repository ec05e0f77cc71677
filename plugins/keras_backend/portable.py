"""A built Keras model to and from the portable weight dict (``tle.contract.portable``: torchvision keys, torch layouts).

Every layer with weights has one torch module path:

* the torchvision-layout models (``torchvision_layout.py``) name each Keras
  layer after its module with ``.`` written ``_`` (``features_0`` is
  ``features.0``, ``layer1_0_downsample_1`` is ``layer1.0.downsample.1``;
  torchvision's module names hold no ``_``, so the map is its own inverse);
* the small models keep keras.applications-style names (``block1_conv1``,
  ``conv2_block1_1_conv``), mapped here to the keys of the torch backend's
  small models (``tle_torch.small``: torchvision's VGG and ResNet classes);
* the head: ``head.`` + the torch backend's head module path
  (``tle_torch.heads``): ``fc1``/``fc2`` (dense), ``fc`` (linear), and for
  ``original`` the model's own classifier (``classifier.0/3/6`` for VGG,
  ``classifier.1/4/6`` for AlexNet, ``fc`` for ResNet, ``classifier`` for
  DenseNet).

Arrays: Conv2D kernels ``(kh, kw, in, out)`` <-> ``(out, in, kh, kw)``; Dense
``(in, out)`` <-> ``(out, in)``, and a Dense layer fed by a Flatten of an
``h x w x c`` map (h*w > 1) has its rows reordered from Keras's ``(h, w, c)``
to torch's ``(c, h, w)``; BatchNormalization gamma/beta/moving_mean/
moving_variance <-> weight/bias/running_mean/running_var. One NumPy transpose
per array and one ``set_weights`` per layer: ResNet-50 or DenseNet-161 convert
in well under a second (``benchmarks/keras_zoo_parity.py``).

keras.applications' own architectures (``keras_*``) have no torch counterpart
and are refused.
"""

from __future__ import annotations

import numpy as np

from tle import UserError
from tle_keras import registry
from tle_keras.heads import NEW_LAST

HEAD = "head"

# Small models: Keras layer name -> torch module path (tle_torch.small).
_VGG_SMALL_CFG = (2, 2, 3, 3, 3)  # convs per block, as tle_torch.small.VGG_SMALL_CFG


def _vgg_small_names() -> dict[str, str]:
    out, index = {}, 0
    for b, convs in enumerate(_VGG_SMALL_CFG, start=1):
        for i in range(1, convs + 1):
            out[f"block{b}_conv{i}"] = f"features.{index}"
            index += 2  # conv, ReLU
        index += 1  # the block's max-pool
    return out


def _resnet_small_names() -> dict[str, str]:
    out = {"conv1_conv": "conv1", "conv1_bn": "bn1"}
    for stage in range(2, 6):
        unit, layer = f"conv{stage}_block1", f"layer{stage - 1}.0"
        out.update({f"{unit}_1_conv": f"{layer}.conv1", f"{unit}_1_bn": f"{layer}.bn1",
                    f"{unit}_2_conv": f"{layer}.conv2", f"{unit}_2_bn": f"{layer}.bn2",
                    f"{unit}_0_conv": f"{layer}.downsample.0", f"{unit}_0_bn": f"{layer}.downsample.1"})
    return out


_SMALL_NAMES = {"vgg_small": _vgg_small_names(), "resnet_small": _resnet_small_names()}

# The last layer of the ``original`` head, by family (tle_torch.blocks.original_head + torchvision's classifiers).
_ORIGINAL_LAST = {"vgg": "classifier.6", "alexnet": "classifier.6", "resnet": "fc", "densenet": "classifier"}
_ORIGINAL_REUSED = {"fc1": "classifier.0", "fc2": "classifier.3"}  # vgg_small's Keras names


def _parts(knet):
    """``(model name, head kind, [(block, layer)] of layers with weights)`` of a KerasNet or its keras.Model."""
    net = getattr(knet, "net", knet)
    name = getattr(knet, "model_name", None) or net.name.removeprefix("tle_")
    if name not in registry.names():
        raise UserError(f"model {name!r} has no portable weights in the keras backend",
                        "portable weights exist for the models both backends offer")
    if registry.layout(name) == "keras":
        raise UserError(f"{name} is keras.applications' own architecture: it has no torchvision counterpart, so no "
                        "portable weights", f"use {name.removeprefix('keras_')} (torchvision's layout) to move "
                                            "weights between backends")
    if hasattr(knet, "block_layers"):
        pairs = [(block, layer) for block, layers in knet.block_layers.items() for layer in layers if layer.weights]
    else:
        pairs = [(HEAD if layer.name.startswith("head_") else None, layer) for layer in net.layers if layer.weights]
    kind = getattr(knet, "head_kind", None) or _head_kind(net)
    return name, kind, pairs


def _head_kind(net) -> str:
    names = {layer.name for layer in net.layers}
    if "head_fc1" in names:
        return "dense"
    return "linear" if names & {"head_pool", "head_flatten"} else "original"


def torch_path(name: str, kind: str, block: str | None, layer) -> str:
    """The portable key prefix of a Keras layer (``features.0``, ``head.fc2`` ...)."""
    lname = layer.name
    if block == HEAD or lname.startswith("head_") or lname.startswith("classifier_") or lname in _ORIGINAL_REUSED:
        if kind == "dense":
            return {"head_fc1": "head.fc1", NEW_LAST: "head.fc2"}.get(lname, f"head.{lname}")
        if kind == "linear":
            return "head.fc"
        if lname == NEW_LAST:
            return f"{HEAD}.{_ORIGINAL_LAST[registry.family(name)]}"
        if name == "vgg_small":
            return f"{HEAD}.{_ORIGINAL_REUSED[lname]}"
        return f"{HEAD}.{lname.replace('_', '.')}"
    if name in _SMALL_NAMES:
        try:
            return _SMALL_NAMES[name][lname]
        except KeyError:
            raise RuntimeError(f"{name}: layer {lname} has no torch name") from None
    return lname.replace("_", ".")


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def _flattened(layer):
    """``(h, w, c)`` when ``layer`` is a Dense fed by a Flatten of a conv map, else None."""
    source = _producer(layer.input)
    while source is not None and type(source).__name__ == "Dropout":  # AlexNet: Flatten -> Dropout -> Linear
        source = _producer(source.input)
    if source is None or type(source).__name__ != "Flatten":
        return None
    shape = tuple(source.input.shape[1:])
    if len(shape) != 3 or shape[0] * shape[1] == 1:
        return None
    return tuple(int(v) for v in shape)


def _export_layer(layer) -> dict[str, np.ndarray]:
    kind = type(layer).__name__
    values = [np.asarray(v) for v in layer.get_weights()]
    if kind == "Conv2D":
        out = {"weight": values[0].transpose(3, 2, 0, 1)}
    elif kind == "Dense":
        kernel = values[0]
        hwc = _flattened(layer)
        if hwc is not None:
            h, w, c = hwc
            kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
        out = {"weight": kernel.T}
    elif kind == "BatchNormalization":
        return dict(zip(("weight", "bias", "running_mean", "running_var"), values, strict=True))
    else:
        raise RuntimeError(f"layer {layer.name} ({kind}) has no portable form")
    if len(values) > 1:
        out["bias"] = values[1]
    return out


def _import_layer(layer, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The layer's ``set_weights`` list from torch-layout arrays (already checked for presence)."""
    kind = type(layer).__name__
    if kind == "Conv2D":
        values = [arrays["weight"].transpose(2, 3, 1, 0)]
    elif kind == "Dense":
        weight = arrays["weight"]
        hwc = _flattened(layer)
        if hwc is not None and weight.ndim == 2:
            h, w, c = hwc
            weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        values = [weight.T]
    elif kind == "BatchNormalization":
        return [arrays[k] for k in ("weight", "bias", "running_mean", "running_var")]
    else:
        raise RuntimeError(f"layer {layer.name} ({kind}) has no portable form")
    if layer.use_bias:
        values.append(arrays["bias"])
    return values


def _param_names(layer) -> list[str]:
    kind = type(layer).__name__
    if kind == "BatchNormalization":
        return ["weight", "bias", "running_mean", "running_var"]
    return ["weight", "bias"] if getattr(layer, "use_bias", False) else ["weight"]


def to_portable(knet) -> dict[str, np.ndarray]:
    """Every weight of the model (backbone and head) under its portable key, float32, torch layouts."""
    name, kind, pairs = _parts(knet)
    out: dict[str, np.ndarray] = {}
    for block, layer in pairs:
        prefix = torch_path(name, kind, block, layer)
        for param, value in _export_layer(layer).items():
            out[f"{prefix}.{param}"] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def from_portable(knet, arrays: dict[str, np.ndarray], source: str, blocks=None, keep_head: bool = False) -> list[str]:
    """Load ``arrays`` (portable keys) into ``knet``: the backbone blocks named in ``blocks`` (all when None) and,
    with ``keep_head``, the head (then ``knet.new_head`` is emptied: nothing of it is new). Return the blocks
    loaded. All of a block's arrays are checked before any is set; a missing key or a wrong shape is a
    :class:`tle.UserError` naming the Keras layer and the key."""
    name, kind, pairs = _parts(knet)
    wanted = None if blocks is None else set(blocks)
    plan: list[tuple[object, list[np.ndarray]]] = []
    loaded: list[str] = []
    for block, layer in pairs:
        if block == HEAD:
            if not keep_head:
                continue
        elif wanted is not None and block not in wanted:
            continue
        prefix = torch_path(name, kind, block, layer)
        own: dict[str, np.ndarray] = {}
        for param in _param_names(layer):
            key = f"{prefix}.{param}"
            if key not in arrays:
                where = "the head" if block == HEAD else block
                raise UserError(f"{source} has no {key} for layer {layer.name} ({where}) of {name}",
                                f"use weights of a {name} with the same head" if block == HEAD
                                else f"use weights saved from {name}")
            own[param] = np.asarray(arrays[key], dtype=np.float32)
        values = _import_layer(layer, own)
        want = [tuple(v.shape) for v in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise UserError(f"weights in {source} do not fit {name}: layer {layer.name} ({prefix}) is "
                            f"{[tuple(own[p].shape) for p in _param_names(layer)]} in torch's layout, which is {got} "
                            f"in Keras's, but the model has {want}",
                            "use weights saved from the same architecture, head and image size")
        plan.append((layer, values))
        if block not in loaded:
            loaded.append(block)
    for layer, values in plan:
        layer.set_weights(values)
    if keep_head and HEAD in loaded and hasattr(knet, "new_head"):
        knet.new_head = []
    return loaded
