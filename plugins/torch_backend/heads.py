"""The classifier put on a backbone (the block called ``head``), from a :class:`tle.contract.spec.HeadSpec`.

``dense``    pool/flatten -> Linear(hidden) -> ReLU -> Dropout -> Linear(N)   (S0)
``linear``   pool/flatten -> Linear(N)
``original`` the model's own pooling and classifier with its last Linear
             replaced by a new one drawn from N(0, 0.01)                      (S1)

ResNet, DenseNet and MobileNet pool globally before a new head; VGG and AlexNet
flatten the conv output as Keras's ``include_top=False`` + ``Flatten`` does, so
VGG16 at 150 px gets S3's ~2M-parameter classifier.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from tle.contract.spec import HeadSpec
from tle_torch import blocks as block_maps


def build_head(head: HeadSpec, name: str, tv: nn.Module, feature_shape: tuple[int, int, int],
               num_classes: int) -> tuple[nn.Sequential, list[str], dict[str, str]]:
    """Return (head, names of its new submodules, {head submodule: torchvision path} of reused ones): ``head``'s
    kind, hidden units and dropout on model ``name`` (torchvision's ``tv``) for ``feature_shape`` (C, H, W)."""
    kind, hidden, dropout = head.kind, head.hidden, head.dropout
    if kind == "original":
        return _original(name, tv, num_classes)
    c, h, w = feature_shape
    parts: list[tuple[str, nn.Module]] = []
    if block_maps.ends_without_relu(name):
        parts.append(("relu", nn.ReLU()))
    if block_maps.pools_globally(name):
        parts += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
        features = c
    else:
        parts.append(("flatten", nn.Flatten()))
        features = c * h * w
    if kind == "dense":
        parts += [("fc1", nn.Linear(features, hidden)), ("act", nn.ReLU()), ("dropout", nn.Dropout(dropout)),
                  ("fc2", nn.Linear(hidden, num_classes))]
        new = ["fc1", "fc2"]
    elif kind == "linear":
        parts.append(("fc", nn.Linear(features, num_classes)))
        new = ["fc"]
    else:
        raise ValueError(f"unknown head kind {kind!r}")
    return nn.Sequential(OrderedDict(parts)), new, {}


def _original(name: str, tv: nn.Module, num_classes: int):
    paths, classifier_path = block_maps.original_head(name)
    parts: list[tuple[str, nn.Module]] = []
    reused: dict[str, str] = {}
    new: list[str] = []
    for path in paths:
        if path == "flatten":
            parts.append(("flatten", nn.Flatten()))
        elif path == "relu" and not hasattr(tv, "relu"):
            parts.append(("relu", nn.ReLU()))
        elif path == "avgpool" and not hasattr(tv, "avgpool"):  # DenseNet pools functionally in forward
            parts.append(("avgpool", nn.AdaptiveAvgPool2d((1, 1))))
        elif path == classifier_path:
            classifier = tv.get_submodule(path)
            if isinstance(classifier, nn.Linear):
                classifier = _new_linear(classifier.in_features, num_classes)
                new.append(path)
            else:
                last = max(i for i, m in enumerate(classifier) if isinstance(m, nn.Linear))
                classifier[last] = _new_linear(classifier[last].in_features, num_classes)
                new.append(f"{path}.{last}")
                reused[path] = path
            parts.append((path, classifier))
        else:
            parts.append((path, tv.get_submodule(path)))
            reused[path] = path
    return nn.Sequential(OrderedDict(parts)), new, reused


def _new_linear(features: int, num_classes: int) -> nn.Linear:
    layer = nn.Linear(features, num_classes)
    nn.init.normal_(layer.weight, 0.0, 0.01)
    nn.init.zeros_(layer.bias)
    return layer
