"""Keras's initialisers (see ``tle.contract.initializers``) applied to the layers of named blocks.

The kernel of every Conv2D / Dense / DepthwiseConv2D of a block is redrawn with
the Keras initialiser of that name (``normal:STD`` -> ``RandomNormal(0, STD)``,
``uniform:LIM`` -> ``RandomUniform(-LIM, LIM)``), so Keras computes the fans
itself: ``fan_in = kh * kw * in_channels``. A depthwise kernel is drawn as
``(kh, kw, 1, channels * multiplier)``, i.e. with ``fan_in = kh * kw`` (what
each output sees), the same fans the torch backend uses; Keras's own
``DepthwiseConv2D`` default would count the input channels too. Biases become
zero, BatchNorm restarts at gamma 1, beta 0, mean 0, variance 1.

Seeds: each layer draws with its own integer seed derived from
``(seed, block name, layer index)``, so a block's weights do not depend on
which other blocks are redrawn, and a run is repeatable.
"""

from __future__ import annotations


import numpy as np

from tle.contract.initializers import InitSpec, require_blocks
from tle.contract.seeds import derive
from tle_keras.runtime import keras as _keras

keras = _keras()

_CLASSES = {
    "glorot_uniform": "GlorotUniform", "glorot_normal": "GlorotNormal", "he_uniform": "HeUniform",
    "he_normal": "HeNormal", "lecun_uniform": "LecunUniform", "lecun_normal": "LecunNormal",
}


def derived_seed(seed: int, *parts) -> int:
    # Keras seeds are int31; every part by its name, as this backend always drew them.
    return derive(seed, *(str(p) for p in parts)) & 0x7FFFFFFF


def initializer(init: InitSpec, seed: int):
    """The Keras initialiser object ``init`` names, seeded."""
    name, p = init.name, init.param
    if name == "zeros":
        return keras.initializers.Zeros()
    if name == "ones":
        return keras.initializers.Ones()
    if name == "normal":
        return keras.initializers.RandomNormal(mean=0.0, stddev=p, seed=seed)
    if name == "uniform":
        return keras.initializers.RandomUniform(minval=-p, maxval=p, seed=seed)
    return getattr(keras.initializers, _CLASSES[name])(seed=seed)


def draw_kernel(layer, init: InitSpec, seed: int) -> None:
    L = keras.layers
    if isinstance(layer, L.DepthwiseConv2D):
        kh, kw, c, m = (int(d) for d in layer.depthwise_kernel.shape)
        value = initializer(init, seed)((kh, kw, 1, c * m), dtype="float32")
        layer.depthwise_kernel.assign(keras.ops.reshape(value, (kh, kw, c, m)))
        return
    if isinstance(layer, L.SeparableConv2D):
        for i, var in enumerate((layer.depthwise_kernel, layer.pointwise_kernel)):
            var.assign(initializer(init, seed + i)(tuple(var.shape), dtype="float32"))
        return
    kernel = getattr(layer, "kernel", None)
    if kernel is not None:
        kernel.assign(initializer(init, seed)(tuple(kernel.shape), dtype=kernel.dtype))


def reset_layer(layer, init: InitSpec, seed: int) -> None:
    if isinstance(layer, keras.layers.BatchNormalization):
        for attr, value in (("gamma", 1.0), ("beta", 0.0), ("moving_mean", 0.0), ("moving_variance", 1.0)):
            var = getattr(layer, attr, None)
            if var is not None:
                var.assign(np.full(tuple(var.shape), value, dtype="float32"))
        return
    if not layer.weights:
        return
    draw_kernel(layer, init, seed)
    bias = getattr(layer, "bias", None)
    if bias is not None:
        bias.assign(np.zeros(tuple(bias.shape), dtype="float32"))


def apply_init(knet, blocks, init: InitSpec, seed: int) -> bool:
    require_blocks(knet.model_name, blocks, knet.trainable)
    for block in blocks:
        layers = knet.layers_of(block)
        if block == "head":  # only the layers drawn for this task; a reused original top keeps its weights
            layers = [layer for layer in layers if layer.name in knet.new_head]
        for index, layer in enumerate(layers):
            reset_layer(layer, init, derived_seed(seed, block, index))
    return True
