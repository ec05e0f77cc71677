"""The models this backend offers, described without importing TensorFlow.

Same names as the torch backend (lower case), every one with five backbone
blocks ``block1`` .. ``block5`` (see ``blocks.py`` for what each holds). Models
that ``keras.applications`` lacks are listed as unavailable, with the reason,
so ``tle models`` shows the whole grid of both backends side by side.
"""

from __future__ import annotations

from tle.contracts import ModelInfo

BLOCKS = tuple(f"block{i}" for i in range(1, 6))

# name -> (family, keras.applications constructor or None for small ones, default_size, min_size, description)
_MODELS: dict[str, tuple[str, str | None, int, int, str]] = {
    "vgg16": ("vgg", "VGG16", 224, 32, "keras.applications.VGG16; its own five blocks block1_conv1 .. block5_pool"),
    "vgg19": ("vgg", "VGG19", 224, 32, "keras.applications.VGG19; its own five blocks block1_conv1 .. block5_pool"),
    **{f"resnet{d}": ("resnet", f"ResNet{d}", 224, 32, f"keras.applications.ResNet{d}; stem + conv2..conv5 stages")
       for d in (50, 101, 152)},
    **{f"densenet{d}": ("densenet", f"DenseNet{d}", 224, 32,
                        f"keras.applications.DenseNet{d}; stem + dense block/transition pairs")
       for d in (121, 169, 201)},
    "mobilenet_v2": ("mobilenet", "MobileNetV2", 224, 32, "keras.applications.MobileNetV2; grouped by stride"),
    "mobilenet_v3_small": ("mobilenet", "MobileNetV3Small", 224, 32,
                           "keras.applications.MobileNetV3Small; grouped by stride as torchvision's"),
    "mobilenet_v3_large": ("mobilenet", "MobileNetV3Large", 224, 32,
                           "keras.applications.MobileNetV3Large; grouped by stride as torchvision's"),
    "vgg_small": ("vgg", None, 32, 32, "CPU-sized Keras VGG16 layout, 8/16/32/32/32 channels (same as torch's)"),
    "resnet_small": ("resnet", None, 32, 32, "CPU-sized ResNet, BasicBlock, widths 8/16/32/64 (same as torch's)"),
}

# Offered by the torch backend but not by keras.applications: listed so the reason is visible.
UNAVAILABLE: dict[str, tuple[str, str]] = {
    "alexnet": ("alexnet", "keras.applications has no AlexNet"),
    "densenet161": ("densenet", "keras.applications has no DenseNet-161"),
    **{f"vgg{d}": ("vgg", f"keras.applications has no VGG-{d}") for d in (11, 13)},
    **{f"vgg{d}_bn": ("vgg", "keras.applications has no VGG with BatchNorm") for d in (11, 13, 16, 19)},
    **{f"resnet{d}": ("resnet", f"keras.applications has no ResNet-{d} (BasicBlock ResNets)") for d in (18, 34)},
}

SMALL = ("vgg_small", "resnet_small")


def family(name: str) -> str:
    return _MODELS[name][0]


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
