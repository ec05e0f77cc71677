"""Block maps: where ``block1`` .. ``block5`` of each model start.

The torchvision-layout models (alexnet, vgg*, resnet*, densenet*) have the
torch backend's block maps exactly (``tle_torch.blocks``: VGG's five
max-pool-closed blocks, AlexNet's conv groups, ResNet stem + layer1..4,
DenseNet stem + denseblock/transition pairs, block5 = denseblock4 + norm5);
``torchvision_layout.build`` returns the cut tensors itself. The table below
is for keras.applications' models (``keras_*``) and the small ones, in Keras's
own layer names.

A block is everything between two cut tensors of the functional graph; block k
starts at the input of the layer named below (``block1`` starts right after
the ``preprocess`` layer and ``block5`` ends at the backbone's output, i.e.
``include_top=False``'s output). Every cut is a single tensor, so blocks 1..K
can run alone and their output is cached for the rest (``cache.py``).

================== =============================================================
keras_vgg16/19,    Keras's own five blocks: block1 = block1_conv1 .. block1_pool,
vgg_small          ..., block5 = block5_conv1 .. block5_pool (S3 freezes
                   everything before block5_conv1)
keras_resnet*,     block1 = stem (conv1_*, pool1_*); block2..5 = the stages
resnet_small       conv2_* .. conv5_* (torch: stem, layer1..layer4)
keras_densenet*    block1 = stem (conv1/*, pool1); block2..4 = dense block
                   convN_* + its transition poolN_*; block5 = conv5_* + the
                   final bn + relu (torch: denseblock4 + norm5, ReLU in head)
MobileNetV2        cut before each stride-2 inverted residual: block1 = stem +
                   expanded_conv; block2 = block_1..2; block3 = block_3..5;
                   block4 = block_6..12; block5 = block_13..16 + Conv_1
MobileNetV3Small   as torchvision's features [0] [1] [2,3] [4..8] [9..12]:
                   stem | expanded_conv | _1.._2 | _3.._7 | _8.._10 + conv_1
MobileNetV3Large   as torchvision's [0,1] [2,3] [4..6] [7..12] [13..16]:
                   stem + expanded_conv | _1.._2 | _3.._5 | _6.._11 | _12.._14 + conv_1
================== =============================================================

Layers without weights (pads, activations, adds) go with the block whose
tensors they transform; they change nothing in counts or freezing.
"""

from __future__ import annotations

from tle import UserError
from tle_keras import registry

# First layer of block2..block5; alternatives in order for models whose first residual unit has no shortcut conv.
_STARTS: dict[str, list[tuple[str, ...]]] = {
    "vgg": [(f"block{k}_conv1",) for k in (2, 3, 4, 5)],
    "resnet": [(f"conv{k}_block1_0_conv", f"conv{k}_block1_1_pad", f"conv{k}_block1_1_conv") for k in (2, 3, 4, 5)],
    "densenet": [(f"conv{k}_block1_0_bn",) for k in (2, 3, 4, 5)],
    "mobilenet_v2": [(f"block_{i}_expand",) for i in (1, 3, 6, 13)],
    "mobilenet_v3_small": [("expanded_conv_depthwise_pad",)] + [(f"expanded_conv_{i}_expand",) for i in (1, 3, 8)],
    "mobilenet_v3_large": [(f"expanded_conv_{i}_expand",) for i in (1, 3, 6, 12)],
}


def _key(name: str) -> str:
    fam = registry.family(name)
    return registry.application(name) if fam == "mobilenet" else fam


def cut_tensors(name: str, net, backbone_in, backbone_out, starts=None) -> list:
    """``[block1 input, block2 input, ..., block5 input, backbone output]`` as tensors of ``net``'s graph.

    ``starts``: the inputs of block2..block5 when the builder knows them (``torchvision_layout.py``)."""
    if starts is not None:
        return [backbone_in, *starts, backbone_out]
    cuts = [backbone_in]
    for options in _STARTS[_key(name)]:
        layer = next((net.get_layer(o) for o in options if _has(net, o)), None)
        if layer is None:
            raise RuntimeError(f"{name}: none of the layers {options} exists; the block map does not fit this "
                               "version of keras.applications")
        cuts.append(layer.input)
    cuts.append(backbone_out)
    return cuts


def _has(net, layer_name: str) -> bool:
    try:
        net.get_layer(layer_name)
        return True
    except ValueError:
        return False


def segment_layers(keras, start, stop) -> list:
    """The layers computing ``stop`` from ``start`` (a functional sub-graph; layers are shared, not copied)."""
    part = keras.Model(start, stop)
    return [layer for layer in part.layers if not isinstance(layer, keras.layers.InputLayer)]


def check_size(name: str, h: int, w: int) -> None:
    info = {m.name: m for m in registry.model_infos()}[name]
    if min(h, w) < info.min_size:
        raise UserError(f"{name} needs images of at least {info.min_size}px, got {h}x{w}",
                        f"set --image-size {info.min_size} or more")
