"""Each variable of a block by kind, for ``train.params`` (see ``tle.contract.tuning``): ``norm`` (a
normalisation layer's scale and offset: BatchNormalization's gamma and beta), ``bias`` (any other layer's bias:
the convolutions' and dense layers'), ``weight`` (everything else). Only the variables that can train
(``KerasNet.capable``): BatchNormalization's moving statistics are none of them. The torch backend's
``params.py`` sorts its parameters the same way, so one model name counts the same biases and norms in both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from tle_keras.runtime import keras as _keras

keras = _keras()

NORMS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)
HEAD = "head"


def kinds(knet, block: str) -> Iterator[tuple[Any, Any, str]]:
    """``(layer, variable, kind)`` of every variable of ``block`` that can train, layer by layer."""
    for layer in knet.layers_of(block):
        for v in layer.weights:
            if v.path in knet.capable:
                kind = "norm" if isinstance(layer, NORMS) else "bias" if v.name == "bias" else "weight"
                yield layer, v, kind


def trains(kind: str, block: str, params: str) -> bool:
    """Whether a variable of ``kind`` in a trainable ``block`` trains under ``params`` (the head trains whole)."""
    return block == HEAD or params == "all" or kind in params.split("+")


def block_parameters(knet) -> dict[str, dict[str, np.ndarray]]:
    """The ``block_parameters`` hook: every variable that can train of each block and the head, as NumPy copies."""
    return {block: {v.path: np.asarray(v).copy() for _, v, _ in kinds(knet, block)} for block in knet.trainable}
