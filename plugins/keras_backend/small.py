"""CPU-sized members of the VGG and ResNet families, written with Keras layers.

They are the torch backend's ``vgg_small`` / ``resnet_small`` layer for layer,
with the same parameter counts, and use Keras's own layer names so the block
maps of the big models apply unchanged:

* ``vgg_small``: Keras VGG16's layout (2, 2, 3, 3, 3 convs of 3x3 + ReLU, each
  block closed by a 2x2 max-pool) with 8, 16, 32, 32, 32 channels;
  ``block1_conv1`` .. ``block5_conv3``, ``block5_pool``.
* ``resnet_small``: torchvision's ResNet with ``BasicBlock`` (two 3x3 convs, a
  1x1 conv + BN shortcut when the shape changes), one block per stage, widths
  8/16/32/64; stem conv 7x7/2 + BN + ReLU + max-pool 3x3/2. Names follow
  keras.applications' ResNet (``conv1_conv``, ``pool1_pool``,
  ``conv2_block1_1_conv`` ..). Convs have no bias and BatchNorm uses torch's
  epsilon 1e-5 and momentum 0.1 (Keras momentum 0.9); padding is explicit
  (``ZeroPadding2D`` + ``valid``) so strided convs see the same pixels as in
  torch, where ``same`` would pad only the bottom/right.
"""

from __future__ import annotations

from tle_keras.runtime import keras as _keras

keras = _keras()
layers = keras.layers

VGG_SMALL = ((8, 8), (16, 16), (32, 32, 32), (32, 32, 32), (32, 32, 32))
RESNET_SMALL_WIDTHS = (8, 16, 32, 64)
BN = {"epsilon": 1e-5, "momentum": 0.9}


def vgg_small(x):
    for b, widths in enumerate(VGG_SMALL, start=1):
        for i, width in enumerate(widths, start=1):
            x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"block{b}_conv{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    return x


def _basic_block(x, width: int, stride: int, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(**BN, name=f"{name}_0_bn")(shortcut)
    if stride == 1:
        y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    else:
        y = layers.ZeroPadding2D(1, name=f"{name}_1_pad")(x)
        y = layers.Conv2D(width, 3, strides=stride, use_bias=False, name=f"{name}_1_conv")(y)
    y = layers.BatchNormalization(**BN, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(**BN, name=f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet_small(x):
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(RESNET_SMALL_WIDTHS[0], 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(**BN, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding equals torch's -inf padding here: the ReLU output is never negative.
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, width in enumerate(RESNET_SMALL_WIDTHS, start=2):
        x = _basic_block(x, width, 1 if stage == 2 else 2, f"conv{stage}_block1")
    return x


BUILDERS = {"vgg_small": vgg_small, "resnet_small": resnet_small}
