"""Activations at initialisation for ``tle init-study`` (S4): a lone dense layer, and a model's blocks."""

from __future__ import annotations

import numpy as np

from tle import UserError
from tle.contract.initializers import InitSpec
from tle_keras.init import derived_seed, initializer
from tle_keras.runtime import keras as _keras

keras = _keras()

ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")


def dense_activations(inputs: np.ndarray, units: int, activation: str, init: InitSpec, seed: int) -> np.ndarray:
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r}", f"choose one of {', '.join(ACTIVATIONS)}")
    # Keras's own Dense with Keras's initialiser objects: S4 is a Keras experiment in the book.
    layer = keras.layers.Dense(int(units), activation=activation,
                               kernel_initializer=initializer(init, derived_seed(seed, "dense", 0)),
                               bias_initializer="zeros", dtype="float32")
    out = layer(keras.ops.convert_to_tensor(np.ascontiguousarray(inputs, dtype=np.float32)))
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)


def block_activations(knet, images: np.ndarray) -> dict[str, np.ndarray]:
    probe = getattr(knet, "_block_probe", None)
    if probe is None:
        # cuts[k] is block k's output; one model over all of them runs the graph once per chunk.
        probe = keras.Model(knet.net.input, knet.cuts[1:], name=f"{knet.model_name}_blocks")
        knet._block_probe = probe
    outputs = probe(np.ascontiguousarray(images, dtype=np.float32), training=False)
    return {name: np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)
            for name, value in zip(knet.block_names, outputs)}
