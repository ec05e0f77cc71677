"""Initialisers with Keras's definitions (see ``tle.contract.initializers``), drawn with NumPy."""

from __future__ import annotations

import math

import numpy as np

from tle.contract.initializers import TRUNCATED_STD_CORRECTION, InitSpec

# Variance scale of each family; uniform limits are sqrt(3 * scale), normals' std sqrt(scale).
_SCALE = {
    "glorot": lambda fan_in, fan_out: 2.0 / (fan_in + fan_out),
    "he": lambda fan_in, fan_out: 2.0 / fan_in,
    "lecun": lambda fan_in, fan_out: 1.0 / fan_in,
}


def draw(init: InitSpec, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A dense kernel of ``shape`` = (fan_in, fan_out), float32."""
    name, param = init.name, init.param
    if name == "zeros":
        out = np.zeros(shape)
    elif name == "ones":
        out = np.ones(shape)
    elif name == "normal":
        out = rng.normal(0.0, param, shape)  # Keras's RandomNormal is not truncated
    elif name == "uniform":
        out = rng.uniform(-param, param, shape)
    else:
        family, dist = name.split("_")
        scale = _SCALE[family](*shape)
        if dist == "uniform":
            limit = math.sqrt(3.0 * scale)
            out = rng.uniform(-limit, limit, shape)
        else:
            # Cutting at 2 sigma shrinks the std by this factor; Keras widens sigma to undo it.
            out = truncated_normal(rng, shape) * (math.sqrt(scale) / TRUNCATED_STD_CORRECTION)
    return out.astype(np.float32)


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal cut at +-2, by redrawing the ~4.6% of values outside."""
    z = rng.standard_normal(shape)
    while (bad := np.abs(z) > 2.0).any():
        z[bad] = rng.standard_normal(int(bad.sum()))
    return z
