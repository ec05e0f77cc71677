"""The models this backend offers, described without importing torch.

``tle models`` and ``tle backends`` read this list, so it must stay a plain
table. Every model has five backbone blocks, ``block1`` .. ``block5``, so a
strategy such as ``finetune:block5`` is valid for every one of them; what each
block holds is documented in ``blocks.py`` and the package README.
"""

from __future__ import annotations

from tle.contract.records import ModelInfo

BLOCKS = tuple(f"block{i}" for i in range(1, 6))

# name -> (family, default_size, min_size, description)
_MODELS: dict[str, tuple[str, int, int, str]] = {
    "alexnet": ("alexnet", 224, 63, "torchvision AlexNet; one block per conv layer"),
    **{f"vgg{d}{bn}": ("vgg", 224, 32, f"torchvision VGG-{d}{' with BatchNorm' if bn else ''}; Keras's five blocks")
       for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{f"resnet{d}": ("resnet", 224, 32, f"torchvision ResNet-{d}; stem + layer1..4")
       for d in (18, 34, 50, 101, 152)},
    **{f"densenet{d}": ("densenet", 224, 32, f"torchvision DenseNet-{d}; stem + dense block/transition pairs")
       for d in (121, 161, 169, 201)},
    "mobilenet_v3_small": ("mobilenet", 224, 32, "torchvision MobileNetV3-Small; features grouped by stride"),
    "mobilenet_v3_large": ("mobilenet", 224, 32, "torchvision MobileNetV3-Large; features grouped by stride"),
    "vgg_small": ("vgg", 32, 32, "CPU-sized VGG (torchvision VGG class), 8/16/32/32/32 channels, Keras's five blocks"),
    "resnet_small": ("resnet", 32, 32, "CPU-sized ResNet (torchvision BasicBlock), widths 8/16/32/64, one block per layer"),
}

# The CPU-sized models (tle_torch.small): torchvision has no ImageNet weights for them.
SMALL = ("vgg_small", "resnet_small")


def family(name: str) -> str:
    return _MODELS[name][0]


def names() -> list[str]:
    return list(_MODELS)


def model_infos() -> list[ModelInfo]:
    return [ModelInfo(name=name, blocks=BLOCKS, family=fam, description=desc, default_size=size, min_size=least)
            for name, (fam, size, least, desc) in _MODELS.items()]
