"""Activations at initialisation for ``tle init-study`` (S4): a lone dense layer, and a model's blocks."""

from __future__ import annotations

import numpy as np

from tle import UserError
from tle.contract.initializers import InitSpec
from tle.contract.strategy import HEAD
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


def block_activations(knet, images: np.ndarray, blocks: list[str] | None = None) -> dict[str, np.ndarray]:
    names = list(knet.block_names) if blocks is None else [b for b in knet.block_names if b in blocks]
    if blocks is not None and HEAD in blocks:
        names.append(HEAD)
    probes = knet.__dict__.setdefault("_block_probes", {})
    probe = probes.get(tuple(names))
    if probe is None:
        # cuts[k] is block k's output; one model over all the asked ones runs the graph once per chunk.
        tensors = [knet.net.output if n == HEAD else knet.cuts[knet.block_names.index(n) + 1] for n in names]
        probe = probes[tuple(names)] = keras.Model(knet.net.input, tensors, name=f"{knet.model_name}_blocks")
    outputs = probe(np.ascontiguousarray(images, dtype=np.float32), training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return {name: np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)
            for name, value in zip(names, outputs)}
