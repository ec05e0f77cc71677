"""Block maps: which torchvision submodules make up ``block1`` .. ``block5`` of each model.

A block is a list of torchvision module paths run in order, so a model is
``block1 -> ... -> block5 -> head`` and a frozen prefix can be cached.

=========== ==================================================================
VGG         Keras's five blocks: each ends at a max-pool of ``features``
            (block1 = conv,conv,pool ... block5 = the last 3 (VGG16) or 4
            (VGG19) convs + pool; ``_bn`` variants include their BatchNorms)
ResNet      block1 = stem (conv1, bn1, relu, maxpool); block2..5 = layer1..4
DenseNet    block1 = stem (conv0, norm0, relu0, pool0); block2..4 =
            denseblockN + transitionN; block5 = denseblock4 + norm5
AlexNet     one block per conv layer with its ReLU and the max-pool after it
            (block1 = conv1+pool, block2 = conv2+pool, block3, block4,
            block5 = conv5+pool)
MobileNetV3 ``features`` cut before each stride-2 layer: small = [0] [1]
            [2,3] [4..8] [9..12]; large = [0,1] [2,3] [4..6] [7..12] [13..16]
=========== ==================================================================

The "original" head is what follows the conv base in torchvision's own forward
(pooling, flatten, the model's classifier); only its last Linear is replaced.
"""

from __future__ import annotations

from torch import nn

from tle_torch import registry


def build_torchvision(name: str, weights=None, num_classes: int = 1000) -> nn.Module:
    """The torchvision model (or its small relative); ``weights`` is a torchvision weights enum or None."""
    if name in registry.SMALL:
        from tle_torch.small import BUILDERS

        return BUILDERS[name](num_classes=num_classes)
    from torchvision.models import get_model

    if weights is not None:
        return get_model(name, weights=weights)
    return get_model(name, weights=None, num_classes=num_classes)


def _strides(module: nn.Module) -> int:
    return max((m.stride[0] for m in module.modules() if isinstance(m, nn.Conv2d)), default=1)


def block_map(name: str, tv: nn.Module) -> list[tuple[str, list[str]]]:
    fam = registry.family(name)
    if fam == "vgg":
        groups, current = [], []
        for index, layer in enumerate(tv.features):
            current.append(f"features.{index}")
            if isinstance(layer, nn.MaxPool2d):
                groups.append(current)
                current = []
    elif fam == "alexnet":
        groups, current = [], []
        layers = list(tv.features)
        for index, layer in enumerate(layers):
            # A block starts at each conv; the ReLU and a following pool belong to it.
            if isinstance(layer, nn.Conv2d) and current:
                groups.append(current)
                current = []
            current.append(f"features.{index}")
        groups.append(current)
    elif fam == "resnet":
        groups = [["conv1", "bn1", "relu", "maxpool"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    elif fam == "densenet":
        groups = [["features.conv0", "features.norm0", "features.relu0", "features.pool0"]]
        groups += [[f"features.denseblock{i}", f"features.transition{i}"] for i in (1, 2, 3)]
        groups.append(["features.denseblock4", "features.norm5"])
    elif fam == "mobilenet":
        groups, current = [], []
        for index, layer in enumerate(tv.features):
            if current and _strides(layer) > 1:
                groups.append(current)
                current = []
            current.append(f"features.{index}")
        groups.append(current)
    else:  # pragma: no cover - the registry lists only the families above
        raise KeyError(name)
    if len(groups) != len(registry.BLOCKS):
        raise RuntimeError(f"{name}: block map has {len(groups)} blocks, registry says {len(registry.BLOCKS)}")
    return list(zip(registry.BLOCKS, groups))


def original_head(name: str) -> tuple[list[str], str]:
    """(module paths after the conv base in forward order, path of the classifier container).

    ``None`` entries stand for torchvision's functional ops (flatten; DenseNet's final ReLU).
    """
    fam = registry.family(name)
    if fam == "resnet":
        return ["avgpool", "flatten", "fc"], "fc"
    if fam == "densenet":
        return ["relu", "avgpool", "flatten", "classifier"], "classifier"
    return ["avgpool", "flatten", "classifier"], "classifier"


def pools_globally(name: str) -> bool:
    """Whether the new heads average-pool (ResNet/DenseNet/MobileNet) or flatten (VGG/AlexNet, as Keras)."""
    return registry.family(name) not in ("vgg", "alexnet")


def ends_without_relu(name: str) -> bool:
    """DenseNet's conv base ends at norm5; torchvision applies the ReLU in forward, so the head must."""
    return registry.family(name) == "densenet"
