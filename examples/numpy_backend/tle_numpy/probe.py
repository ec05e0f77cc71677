"""Activations at initialisation for ``tle init-study`` (S4): a lone dense layer, and a model's blocks."""

from __future__ import annotations

import numpy as np

from tle.errors import UserError
from tle.contract.initializers import InitSpec
from tle_numpy.init import draw
from tle_numpy.model import Net, layer_rng

ACTIVATIONS = {
    "sigmoid": lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),  # no overflow for large |z|
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "linear": lambda z: z,
}


def dense_activations(inputs: np.ndarray, units: int, activation: str, init: InitSpec, seed: int) -> np.ndarray:
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r}", f"choose one of {', '.join(ACTIVATIONS)}")
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    kernel = draw(init, (x.shape[1], int(units)), layer_rng(seed, 0))
    return ACTIVATIONS[activation](x @ kernel).astype(np.float32)  # the bias is zero


def block_activations(net: Net, images: np.ndarray, blocks: list[str] | None = None) -> dict[str, np.ndarray]:
    wanted = set(net.blocks) - {"head"} if blocks is None else set(blocks)
    x = net.flatten(images)
    out: dict[str, np.ndarray] = {}
    for index, layer in enumerate(net.layers):
        if layer.block not in net.blocks or (layer.block == "head" and "head" not in wanted):
            break
        x = net.forward(x, index, index + 1)
        if layer.block in wanted:
            out[layer.block] = x  # a block's output is that of its last layer
    return out
