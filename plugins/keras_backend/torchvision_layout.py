"""torchvision's AlexNet, VGG (with and without BatchNorm), ResNet (v1.5) and DenseNet, layer for layer in Keras.

Each Keras layer is named after its torchvision module path with ``.`` written
``_`` (``features.0`` -> ``features_0``, ``layer1.0.downsample.1`` ->
``layer1_0_downsample_1``, ``features.denseblock1.denselayer1.conv1`` ->
``features_denseblock1_denselayer1_conv1``), so ``portable.py`` maps the
torchvision state dict mechanically. Layers without weights that torchvision
runs functionally (DenseNet's concatenations, ResNet's residual add) get
names of their own.

Where the frameworks differ, the torch semantics are built explicitly:

* padding: a strided conv or pool pads symmetrically in torch; Keras's
  ``same`` pads only bottom/right when the size is even, so strided layers get
  a ``ZeroPadding2D`` + ``valid`` (stride-1 odd kernels use ``same``, which is
  symmetric there);
* max-pool padding: torch pads with -inf. The padded max-pools here (ResNet's
  and DenseNet's stem) follow a ReLU, so every window holds a real value >= 0
  and zero padding gives the same maximum;
* BatchNorm: epsilon 1e-5, momentum 0.1 in torch = 0.9 in Keras;
* convs without bias wherever torchvision has ``bias=False`` (ResNet, DenseNet).

The backbone ends where the torch backend's block5 ends (VGG/AlexNet: the last
max-pool of ``features``; ResNet: ``layer4``; DenseNet: ``features.norm5``, its
ReLU is in the head); the heads, with torchvision's AdaptiveAvgPool2d, are in
``heads.py``. ``build`` returns the backbone output and the inputs of
block2..block5 (``tle_torch.blocks.block_map``'s cuts).
"""

from __future__ import annotations

from tle_keras.runtime import keras as _keras

keras = _keras()
layers = keras.layers

BN = {"epsilon": 1e-5, "momentum": 0.9}

# torchvision.models.vgg.cfgs
_VGG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# torchvision.models.resnet: (block, layers per stage)
_RESNET = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
# torchvision.models.densenet: (growth_rate, block_config, num_init_features); bn_size 4, drop_rate 0
_DENSENET = {121: (32, (6, 12, 24, 16), 64), 161: (48, (6, 12, 36, 24), 96), 169: (32, (6, 12, 32, 32), 64),
             201: (32, (6, 12, 48, 32), 64)}


def conv(x, filters: int, kernel: int, stride: int, padding: int, name: str):
    """torch's ``Conv2d(kernel, stride, padding)`` with a bias (VGG, AlexNet): Keras ``same`` only where it pads as
    torch does."""
    return _conv(x, (filters, kernel, stride, padding), name, bias=True)


def conv_before_bn(x, filters: int, kernel: int, stride: int, padding: int, name: str):
    """The same without a bias: torchvision's convolutions followed by BatchNorm (ResNet, DenseNet) have none."""
    return _conv(x, (filters, kernel, stride, padding), name, bias=False)


def _conv(x, shape: tuple[int, int, int, int], name: str, bias: bool):
    filters, kernel, stride, padding = shape
    if padding and stride == 1 and padding == kernel // 2 and kernel % 2 == 1:
        return layers.Conv2D(filters, kernel, padding="same", use_bias=bias, name=name)(x)
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=stride, use_bias=bias, name=name)(x)


def bn(x, name: str):
    return layers.BatchNormalization(**BN, name=name)(x)


def relu(x, name: str):
    return layers.ReLU(name=name)(x)


def max_pool_after_relu(x, size: int, stride: int, padding: int, name: str):
    if padding:  # zeros = torch's -inf here: the input is a ReLU's output, never negative
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return layers.MaxPooling2D(size, strides=stride, name=name)(x)


def vgg(x, depth: int, batch_norm: bool):
    starts, index = [], 0
    for v in _VGG[depth]:
        if v == "M":
            x = layers.MaxPooling2D(2, strides=2, name=f"features_{index}")(x)
            starts.append(x)
            index += 1
            continue
        x = conv(x, v, 3, 1, 1, f"features_{index}")
        index += 1
        if batch_norm:
            x = bn(x, f"features_{index}")
            index += 1
        x = relu(x, f"features_{index}")
        index += 1
    return x, starts[:4]


def alexnet(x):
    x = relu(conv(x, 64, 11, 4, 2, "features_0"), "features_1")
    x = layers.MaxPooling2D(3, strides=2, name="features_2")(x)
    starts = [x]
    x = relu(conv(x, 192, 5, 1, 2, "features_3"), "features_4")
    x = layers.MaxPooling2D(3, strides=2, name="features_5")(x)
    starts.append(x)
    x = relu(conv(x, 384, 3, 1, 1, "features_6"), "features_7")
    starts.append(x)
    x = relu(conv(x, 256, 3, 1, 1, "features_8"), "features_9")
    starts.append(x)
    x = relu(conv(x, 256, 3, 1, 1, "features_10"), "features_11")
    return layers.MaxPooling2D(3, strides=2, name="features_12")(x), starts


def _basic(x, planes: int, stride: int, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:
        shortcut = conv_before_bn(x, planes, 1, stride, 0, f"{name}_downsample_0")
        shortcut = bn(shortcut, f"{name}_downsample_1")
    y = relu(bn(conv_before_bn(x, planes, 3, stride, 1, f"{name}_conv1"), f"{name}_bn1"), f"{name}_relu1")
    y = bn(conv_before_bn(y, planes, 3, 1, 1, f"{name}_conv2"), f"{name}_bn2")
    return relu(layers.Add(name=f"{name}_add")([y, shortcut]), f"{name}_relu")


def _bottleneck(x, planes: int, stride: int, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != planes * 4:
        shortcut = conv_before_bn(x, planes * 4, 1, stride, 0, f"{name}_downsample_0")
        shortcut = bn(shortcut, f"{name}_downsample_1")
    y = relu(bn(conv_before_bn(x, planes, 1, 1, 0, f"{name}_conv1"), f"{name}_bn1"), f"{name}_relu1")
    # v1.5: the stride is on the 3x3 conv (torchvision), not on the first 1x1 (keras.applications' v1)
    y = relu(bn(conv_before_bn(y, planes, 3, stride, 1, f"{name}_conv2"), f"{name}_bn2"), f"{name}_relu2")
    y = bn(conv_before_bn(y, planes * 4, 1, 1, 0, f"{name}_conv3"), f"{name}_bn3")
    return relu(layers.Add(name=f"{name}_add")([y, shortcut]), f"{name}_relu")


def resnet(x, depth: int):
    kind, counts = _RESNET[depth]
    unit = _basic if kind == "basic" else _bottleneck
    x = relu(bn(conv_before_bn(x, 64, 7, 2, 3, "conv1"), "bn1"), "relu")
    x = max_pool_after_relu(x, 3, 2, 1, "maxpool")
    starts = []
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        starts.append(x)
        for i in range(n):
            x = unit(x, planes, 2 if stage > 1 and i == 0 else 1, f"layer{stage}_{i}")
    return x, starts


def densenet(x, depth: int):
    growth, config, init = _DENSENET[depth]
    x = relu(bn(conv_before_bn(x, init, 7, 2, 3, "features_conv0"), "features_norm0"), "features_relu0")
    x = max_pool_after_relu(x, 3, 2, 1, "features_pool0")
    starts = []
    for b, n in enumerate(config, start=1):
        starts.append(x)
        block = f"features_denseblock{b}"
        for i in range(1, n + 1):
            name = f"{block}_denselayer{i}"
            y = relu(bn(x, f"{name}_norm1"), f"{name}_relu1")
            y = conv_before_bn(y, 4 * growth, 1, 1, 0, f"{name}_conv1")
            y = relu(bn(y, f"{name}_norm2"), f"{name}_relu2")
            y = conv_before_bn(y, growth, 3, 1, 1, f"{name}_conv2")
            x = layers.Concatenate(name=f"{name}_cat")([x, y])  # torch.cat([inputs..., new], 1)
        if b < len(config):
            t = f"features_transition{b}"
            x = relu(bn(x, f"{t}_norm"), f"{t}_relu")
            x = conv_before_bn(x, x.shape[-1] // 2, 1, 1, 0, f"{t}_conv")
            x = layers.AveragePooling2D(2, strides=2, name=f"{t}_pool")(x)
    return bn(x, "features_norm5"), starts


def build(name: str, x):
    """``(backbone output, [block2 input, .., block5 input])`` of torchvision's ``name`` on tensor ``x``."""
    if name == "alexnet":
        return alexnet(x)
    if name.startswith("vgg"):
        return vgg(x, int(name[3:5]), name.endswith("_bn"))
    if name.startswith("resnet"):
        return resnet(x, int(name[6:]))
    if name.startswith("densenet"):
        return densenet(x, int(name[8:]))
    raise KeyError(name)


@keras.saving.register_keras_serializable(package="tle_keras")
class AdaptiveAvgPool(keras.layers.Layer):
    """torch's ``AdaptiveAvgPool2d(size)`` on NHWC: output cell i averages input rows floor(i*H/s) ..
    ceil((i+1)*H/s) - 1 (bins overlap when H is not a multiple of s; a 1x1 map is repeated). Two constant
    matrix products, fixed by the input size; the identity when the map already has that size."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def _matrix(self, n: int):
        import numpy as np

        m = np.zeros((self.size, n), dtype="float32")
        for i in range(self.size):
            lo, hi = (i * n) // self.size, -((-(i + 1) * n) // self.size)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    def build(self, input_shape):
        h, w = int(input_shape[1]), int(input_shape[2])
        self._identity = h == w == self.size
        self._rows, self._cols = self._matrix(h), self._matrix(w)

    def call(self, x):
        if self._identity:
            return x
        ops = keras.ops
        rows = ops.convert_to_tensor(self._rows, dtype=x.dtype)
        cols = ops.convert_to_tensor(self._cols, dtype=x.dtype)
        x = ops.einsum("ih,nhwc->niwc", rows, x)
        return ops.einsum("jw,niwc->nijc", cols, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}
