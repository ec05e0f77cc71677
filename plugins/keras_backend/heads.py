"""The classifier put on a backbone (the block called ``head``), from a :class:`tle.contract.spec.HeadSpec`.

``dense``    flatten (VGG) or global-average-pool (others) -> Dense(hidden) ReLU
             -> Dropout -> Dense(N)                                     (S0, S3)
``linear``   flatten / global-average-pool -> Dense(N)
``original`` the model's own classifier with its last layer replaced by a new
             one with N outputs (S1): torchvision's for the torchvision-layout
             models, keras.applications' ``include_top`` one for ``keras_*``

Every head ends in logits (no softmax); losses use ``from_logits=True``. VGG
flattens its conv output as ``include_top=False`` + ``Flatten`` does in Keras,
so VGG16 at 150 px gets S3's ~2M-parameter classifier; at 32 px the flattened
map is 1x1x512. DenseNet (torchvision's) applies its final ReLU first, as
torch's heads do.

torchvision's ``original`` classifiers, layer names = torchvision module paths:

=========== =====================================================================
VGG         AdaptiveAvgPool 7x7 -> Flatten -> classifier_0 Dense 4096, _1 ReLU,
            _2 Dropout 0.5, _3 Dense 4096, _4 ReLU, _5 Dropout -> new Dense N
            (torch's classifier.6)
AlexNet     AdaptiveAvgPool 6x6 -> Flatten -> classifier_0 Dropout, _1 Dense 4096,
            _2 ReLU, _3 Dropout, _4 Dense 4096, _5 ReLU -> new Dense N
ResNet      GlobalAveragePooling -> new Dense N (torch's fc)
DenseNet    ReLU -> GlobalAveragePooling -> new Dense N (torch's classifier)
=========== =====================================================================

keras.applications' (``keras_*``) are Keras's layer for layer (names ``fc1``,
``fc2``, ``conv_2`` ...) so ImageNet's top file fills them:

=========== =====================================================================
VGG         Flatten -> fc1 Dense 4096 ReLU -> fc2 Dense 4096 ReLU -> new Dense N
ResNet,     GlobalAveragePooling -> new Dense N
DenseNet,
MobileNetV2
MobileNetV3 GlobalAveragePooling (keepdims) -> conv_2 1x1 conv (1024 small /
            1280 large) -> hard_swish -> Dropout 0.2 -> new 1x1 conv N -> Flatten
=========== =====================================================================

vgg_small   GlobalAveragePooling -> fc1 Dense 64 ReLU -> Dropout -> fc2 Dense 64 ReLU
            -> Dropout -> new Dense N (torch's vgg_small classifier)
resnet_small GlobalAveragePooling -> new Dense N
"""

from __future__ import annotations

from tle.contract.spec import HeadSpec
from tle_keras import registry

NEW_LAST = "head_logits"  # name of the layer that gives the logits, in every head
SMALL_HIDDEN = 64  # torch_backend/small.py: VGG_SMALL_HIDDEN


def build_head(keras, head: HeadSpec, name: str, x, num_classes: int, initializer):
    """Return ``(logits tensor, names of the layers drawn for this task, names of reused original-top layers)``:
    ``head``'s kind, hidden units and dropout on model ``name``'s features ``x``.

    ``initializer(layer_name)`` returns the kernel initialiser for a new layer.
    """
    kind, hidden, dropout = head.kind, head.hidden, head.dropout
    L = keras.layers
    fam = registry.family(name)
    torchvision = registry.layout(name) == "torchvision"
    if kind == "original":
        if torchvision:
            return _torchvision_original(keras, fam, x, num_classes, initializer)
        return _original(keras, name, fam, x, num_classes, initializer)
    if torchvision and fam == "densenet":
        x = L.ReLU(name="head_relu")(x)  # torchvision's DenseNet applies it in forward, after features.norm5
    flatten = fam in ("vgg", "alexnet")
    x = L.Flatten(name="head_flatten")(x) if flatten else L.GlobalAveragePooling2D(name="head_pool")(x)
    if kind == "dense":
        x = L.Dense(hidden, activation="relu", kernel_initializer=initializer("head_fc1"), name="head_fc1")(x)
        x = L.Dropout(dropout, name="head_dropout")(x)
        new = ["head_fc1", NEW_LAST]
    elif kind == "linear":
        new = [NEW_LAST]
    else:
        raise ValueError(f"unknown head kind {kind!r}")
    logits = L.Dense(num_classes, kernel_initializer=initializer(NEW_LAST), dtype="float32", name=NEW_LAST)(x)
    return logits, new, []


def _torchvision_original(keras, fam, x, num_classes, initializer):
    """torchvision's own classifier, its module paths as layer names (``classifier_0`` = ``classifier.0``)."""
    from tle_keras.torchvision_layout import AdaptiveAvgPool

    L = keras.layers
    if fam in ("vgg", "alexnet"):
        x = AdaptiveAvgPool(7 if fam == "vgg" else 6, name="avgpool")(x)
        x = L.Flatten(name="flatten")(x)  # (h, w, c) order; portable.py reorders the rows to torch's (c, h, w)
        if fam == "vgg":  # Linear ReLU Dropout Linear ReLU Dropout Linear
            parts = ["dense", "relu", "dropout", "dense", "relu", "dropout"]
        else:  # Dropout Linear ReLU Dropout Linear ReLU Linear
            parts = ["dropout", "dense", "relu", "dropout", "dense", "relu"]
        reused = []
        for i, part in enumerate(parts):
            name = f"classifier_{i}"
            if part == "dense":
                x = L.Dense(4096, name=name)(x)
                reused.append(name)
            elif part == "relu":
                x = L.ReLU(name=name)(x)
            else:
                x = L.Dropout(0.5, name=name)(x)
    else:
        if fam == "densenet":
            x = L.ReLU(name="relu")(x)
        x = L.GlobalAveragePooling2D(name="avgpool")(x)
        reused = []
    logits = L.Dense(num_classes, kernel_initializer=initializer(NEW_LAST), dtype="float32", name=NEW_LAST)(x)
    return logits, [NEW_LAST], reused


def _original(keras, name, fam, x, num_classes, initializer):
    L = keras.layers
    if name == "vgg_small":
        # torch's vgg_small classifier, layer for layer: average-pool -> 64 -> 64 -> new N.
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
        x = L.Dense(SMALL_HIDDEN, activation="relu", name="fc1")(x)
        x = L.Dropout(0.5, name="fc1_dropout")(x)
        x = L.Dense(SMALL_HIDDEN, activation="relu", name="fc2")(x)
        x = L.Dropout(0.5, name="fc2_dropout")(x)
        logits = L.Dense(num_classes, kernel_initializer=initializer(NEW_LAST), dtype="float32", name=NEW_LAST)(x)
        return logits, [NEW_LAST], ["fc1", "fc2"]
    if fam == "vgg":
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(4096, activation="relu", name="fc1")(x)
        x = L.Dense(4096, activation="relu", name="fc2")(x)
        reused = ["fc1", "fc2"]
    elif registry.application(name).startswith("mobilenet_v3"):
        x = L.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
        x = L.Conv2D(1024 if name.endswith("small") else 1280, 1, use_bias=True, name="conv_2")(x)
        x = L.Activation("hard_swish", name="conv_2_hard_swish")(x)
        x = L.Dropout(0.2, name="top_dropout")(x)
        x = L.Conv2D(num_classes, 1, kernel_initializer=initializer(NEW_LAST), dtype="float32", name=NEW_LAST)(x)
        return L.Flatten(name="head_flatten", dtype="float32")(x), [NEW_LAST], ["conv_2"]
    else:
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
        reused = []
    logits = L.Dense(num_classes, kernel_initializer=initializer(NEW_LAST), dtype="float32", name=NEW_LAST)(x)
    return logits, [NEW_LAST], reused
