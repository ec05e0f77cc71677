"""Each parameter of a block by kind, for ``train.params`` (see ``tle.contract.tuning``): ``norm`` (a
normalisation layer's weight and bias: BatchNorm's gamma and beta), ``bias`` (any other module's bias: the
convolutions' and linear layers'), ``weight`` (everything else). The keras backend's ``params.py`` sorts its
variables the same way, so one model name counts the same biases and norms in both."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch import nn

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
HEAD = "head"


def kinds(module: nn.Module) -> Iterator[tuple[str, nn.Parameter, str]]:
    """``(name, parameter, kind)`` of every parameter of ``module``, in ``named_parameters`` order."""
    for path, m in module.named_modules():
        for name, p in m.named_parameters(recurse=False):
            kind = "norm" if isinstance(m, NORMS) else "bias" if name == "bias" else "weight"
            yield (f"{path}.{name}" if path else name), p, kind


def trains(kind: str, block: str, params: str) -> bool:
    """Whether a parameter of ``kind`` in a trainable ``block`` trains under ``params`` (the head trains whole)."""
    return block == HEAD or params == "all" or kind in params.split("+")


def block_parameters(net) -> dict[str, dict[str, np.ndarray]]:
    """The ``block_parameters`` hook: every parameter of each block and the head, as NumPy copies."""
    return {block: {name: p.detach().cpu().numpy().copy() for name, p, _ in kinds(net.module_of(block))}
            for block in net.trainable}
