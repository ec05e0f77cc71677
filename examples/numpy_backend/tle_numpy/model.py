"""The MLPs: named blocks of dense layers with a hand-written forward and backward."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tle.errors import UserError
from tle.contract.initializers import InitSpec
from tle.contract.spec import HeadSpec
from tle_numpy.init import draw

HEAD = "head"
# Hidden widths; hidden layer i is block "block{i}".
MODELS = {"mlp": (128, 64), "mlp3": (256, 128, 64)}
BACKBONE_INIT = InitSpec(name="glorot_uniform")  # Keras's Dense default


@dataclass
class Dense:
    name: str  # prefix of its arrays in weights.npz: "block1", "head.hidden", "head.out"
    block: str
    W: np.ndarray  # (fan_in, fan_out), float32
    b: np.ndarray
    relu: bool
    dropout: float = 0.0  # after the activation, training only

    @property
    def size(self) -> int:
        return self.W.size + self.b.size


@dataclass
class Net:
    """The native model handed to the core; the core never looks inside."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: list[Dense]
    trainable: dict[str, bool]
    params: str = "all"  # which arrays of a trainable block train (train.params; see training.updates)
    l2sp_start: dict[str, np.ndarray] | None = None  # L2-SP's w⁰, taken when training first starts

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(layer.block for layer in self.layers))

    def first_trainable(self) -> int:
        return next((i for i, layer in enumerate(self.layers) if self.trainable[layer.block]), len(self.layers))

    def flatten(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != self.input_shape:
            raise UserError(f"images of shape {tuple(images.shape[1:])} do not fit {self.model} built for "
                            f"{self.input_shape}", "use the image size and channels the model was built with")
        # The width is given, not inferred: an empty split (val 0) is a (0, width) array, not an error.
        return np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), int(np.prod(self.input_shape)))

    def forward(self, x: np.ndarray, start: int = 0, stop: int | None = None,
                rng: np.random.Generator | None = None, cache: list | None = None) -> np.ndarray:
        """Run layers ``start:stop`` on ``x``, the input of layer ``start``.

        ``rng`` switches dropout on (training); ``cache`` collects what
        :meth:`backward` needs, so inference keeps no activations.
        """
        for layer in self.layers[start:stop]:
            z = x @ layer.W + layer.b
            mask = (z > 0).astype(np.float32) if layer.relu else None
            if rng is not None and layer.dropout > 0:
                keep = (rng.random(z.shape, dtype=np.float32) >= layer.dropout) / np.float32(1 - layer.dropout)
                mask = keep if mask is None else mask * keep
            if cache is not None:
                cache.append((x, mask))
            x = z if mask is None else z * mask
        return x

    def backward(self, cache: list, grad: np.ndarray, start: int = 0) -> list[tuple[Dense, np.ndarray, np.ndarray]]:
        """(layer, dW, db) for every trainable layer, from ``grad`` = dLoss/dLogits.

        Stops at the first trainable layer: nothing before it learns, so
        frozen leading blocks cost no backward pass at all.
        """
        first = self.first_trainable()
        grads = []
        for i in range(len(self.layers) - 1, first - 1, -1):
            layer = self.layers[i]
            x, mask = cache[i - start]
            if mask is not None:
                grad = grad * mask
            if self.trainable[layer.block]:
                grads.append((layer, x.T @ grad, grad.sum(axis=0)))
            if i > first:
                grad = grad @ layer.W.T
        return grads


def layer_rng(seed: int, index: int) -> np.random.Generator:
    # One stream per layer, so re-initialising a block draws what construction drew.
    return np.random.default_rng([seed % 2**32, index])


def init_layer(layer: Dense, init: InitSpec, rng: np.random.Generator) -> None:
    layer.W[...] = draw(init, layer.W.shape, rng)
    layer.b[...] = 0.0


def build(model: str, input_shape: tuple[int, int, int], num_classes: int, head: HeadSpec, seed: int) -> Net:
    if model not in MODELS:
        raise UserError(f"the numpy backend has no model {model!r}", f"choose one of {', '.join(MODELS)}")
    fan_in = int(np.prod(input_shape))
    plan = []  # (name, block, width, relu, dropout, init)
    for i, width in enumerate(MODELS[model], start=1):
        plan.append((f"block{i}", f"block{i}", width, True, 0.0, BACKBONE_INIT))
    if head.kind == "dense":
        plan.append(("head.hidden", HEAD, head.hidden, True, head.dropout, head.initializer))
    # "original" has no classifier of its own to keep here, so it is the linear head.
    plan.append(("head.out", HEAD, num_classes, False, 0.0, head.initializer))

    layers = []
    for index, (name, block, width, relu, dropout, init) in enumerate(plan):
        layer = Dense(name, block, np.empty((fan_in, width), np.float32), np.empty(width, np.float32), relu, dropout)
        init_layer(layer, init, layer_rng(seed, index))
        layers.append(layer)
        fan_in = width
    blocks = dict.fromkeys(layer.block for layer in layers)
    return Net(model, tuple(input_shape), num_classes, layers, {b: True for b in blocks})


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss and its gradient with respect to ``logits``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = -log_probs[rows, labels].mean(dtype=np.float64)
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1.0
    return float(loss), grad / np.float32(len(labels))
