"""The models this backend offers, described without importing TensorFlow.

A name is one architecture in both backends (DESIGN.md "Same name, same
meaning"), every one with five backbone blocks ``block1`` .. ``block5`` (see
``blocks.py`` for what each holds):

* torchvision's names (alexnet, vgg11..19 and ``_bn``, resnet18..152,
  densenet121..201): torchvision's layout built layer for layer in Keras
  (``torchvision_layout.py``), the same parameters per block as the torch
  backend, weights converted by ``portable.py``;
* ``keras_*``: keras.applications' own architectures (ResNet v1 with conv
  biases, Keras's DenseNet/MobileNet, VGG with Keras's layer names) and their
  Keras ImageNet weights. They are other architectures, so other names;
* vgg_small, resnet_small: the torch backend's small models.

torchvision's MobileNetV3 is not built here: ``mobilenet_v3_small/large`` are
listed as unavailable with the reason (``keras_mobilenet_v3_*`` are Keras's,
whose strided depthwise convs pad asymmetrically).
"""

from __future__ import annotations

from tle.contract.records import ModelInfo

BLOCKS = tuple(f"block{i}" for i in range(1, 6))

# name -> (family, keras.applications constructor or None, default_size, min_size, description)
_KERAS: dict[str, tuple[str, str | None, int, int, str]] = {
    "keras_vgg16": ("vgg", "VGG16", 224, 32, "keras.applications.VGG16; its own five blocks block1_conv1 .. block5_pool"),
    "keras_vgg19": ("vgg", "VGG19", 224, 32, "keras.applications.VGG19; its own five blocks block1_conv1 .. block5_pool"),
    **{f"keras_resnet{d}": ("resnet", f"ResNet{d}", 224, 32,
                            f"keras.applications.ResNet{d} (v1, conv biases); stem + conv2..conv5 stages")
       for d in (50, 101, 152)},
    **{f"keras_densenet{d}": ("densenet", f"DenseNet{d}", 224, 32,
                              f"keras.applications.DenseNet{d}; stem + dense block/transition pairs")
       for d in (121, 169, 201)},
    "keras_mobilenet_v2": ("mobilenet", "MobileNetV2", 224, 32, "keras.applications.MobileNetV2; grouped by stride"),
    "keras_mobilenet_v3_small": ("mobilenet", "MobileNetV3Small", 224, 32,
                                 "keras.applications.MobileNetV3Small; grouped by stride as torchvision's"),
    "keras_mobilenet_v3_large": ("mobilenet", "MobileNetV3Large", 224, 32,
                                 "keras.applications.MobileNetV3Large; grouped by stride as torchvision's"),
}
_TORCHVISION: dict[str, tuple[str, str | None, int, int, str]] = {
    "alexnet": ("alexnet", None, 224, 63, "torchvision AlexNet in Keras; one block per conv layer"),
    **{f"vgg{d}{bn}": ("vgg", None, 224, 32,
                       f"torchvision VGG-{d}{' with BatchNorm' if bn else ''} in Keras; Keras's five blocks")
       for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{f"resnet{d}": ("resnet", None, 224, 32, f"torchvision ResNet-{d} (v1.5) in Keras; stem + layer1..4")
       for d in (18, 34, 50, 101, 152)},
    **{f"densenet{d}": ("densenet", None, 224, 32,
                        f"torchvision DenseNet-{d} in Keras; stem + dense block/transition pairs")
       for d in (121, 161, 169, 201)},
}
_SMALL: dict[str, tuple[str, str | None, int, int, str]] = {
    "vgg_small": ("vgg", None, 32, 32, "CPU-sized VGG16 layout, 8/16/32/32/32 channels (same as torch's)"),
    "resnet_small": ("resnet", None, 32, 32, "CPU-sized ResNet, BasicBlock, widths 8/16/32/64 (same as torch's)"),
}
_MODELS = {**_TORCHVISION, **_KERAS, **_SMALL}

# Offered by the torch backend but not here: listed so the reason is visible.
UNAVAILABLE: dict[str, tuple[str, str]] = {
    f"mobilenet_v3_{size}": ("mobilenet", f"torchvision's MobileNetV3 is not built in Keras; keras_mobilenet_v3_{size} "
                                          "is keras.applications' (another architecture)")
    for size in ("small", "large")
}

SMALL = tuple(_SMALL)
TORCHVISION = tuple(_TORCHVISION)


def family(name: str) -> str:
    return _MODELS[name][0]


def layout(name: str) -> str:
    """``torchvision``, ``keras`` (keras.applications) or ``small``."""
    return "torchvision" if name in _TORCHVISION else "keras" if name in _KERAS else "small"


def application(name: str) -> str:
    """keras.applications' own lower-case name of a ``keras_*`` model (``keras_vgg16`` -> ``vgg16``)."""
    return name.removeprefix("keras_")


def constructor(name: str) -> str | None:
    return _MODELS[name][1]


def names() -> list[str]:
    return list(_MODELS)


def model_infos() -> list[ModelInfo]:
    infos = [ModelInfo(name=name, blocks=BLOCKS, family=fam, description=desc, default_size=size, min_size=least)
             for name, (fam, _, size, least, desc) in _MODELS.items()]
    infos += [ModelInfo(name=name, blocks=BLOCKS, family=fam, available=False, reason=reason)
              for name, (fam, reason) in UNAVAILABLE.items()]
    return infos
