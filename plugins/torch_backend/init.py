"""Keras's initialisers (see ``tle.contract.initializers``) applied to the conv/linear layers of named blocks.

Fans follow Keras: for a kernel, ``fan_in = kernel area x input channels`` and
``fan_out = kernel area x output channels``, read from torch's weight shape
``(out, in / groups, kh, kw)``; for a depthwise conv that gives
``fan_in = kh x kw`` (what each output actually sees). Truncated normals cut at
two standard deviations of the underlying normal, whose std is ``s / 0.8796``,
so the drawn weights have std ``s`` exactly as in Keras. Biases become zero;
normalisation layers restart at gamma = 1, beta = 0 with fresh running stats.

Each block draws from its own generator seeded by ``(seed, block name)``, so a
block's initial weights do not depend on which other blocks are re-drawn.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from tle.contract.initializers import Distribution, InitSpec, require_blocks
from tle.contract.seeds import derive


def block_generator(seed: int, block: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive(seed, block))


def fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = int(np.prod(weight.shape[2:])) if weight.dim() > 2 else 1
    return int(weight.shape[1]) * receptive, int(weight.shape[0]) * receptive


def draw(weight: torch.Tensor, init: InitSpec, generator: torch.Generator) -> torch.Tensor:
    """A new CPU tensor shaped like ``weight`` drawn from ``init``."""
    return sample(torch.empty(weight.shape, dtype=torch.float32), init.distribution(*fans(weight)), generator)


def sample(out: torch.Tensor, dist: Distribution, generator: torch.Generator) -> torch.Tensor:
    """Fill ``out`` from ``dist`` (``tle.contract.initializers``: the formulas live there) with one torch call."""
    v = dist.value
    if dist.kind == "constant":
        return out.fill_(v)
    if dist.kind == "normal":
        return out.normal_(0.0, v, generator=generator)
    if dist.kind == "uniform":
        return out.uniform_(-v, v, generator=generator)
    return nn.init.trunc_normal_(out, 0.0, v, -2.0 * v, 2.0 * v, generator=generator)


@torch.no_grad()
def reinit_module(module: nn.Module, init: InitSpec, generator: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            m.weight.copy_(draw(m.weight, init, generator))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (_NormBase, nn.LayerNorm, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, _NormBase) and m.track_running_stats:
                m.reset_running_stats()


def apply_init(net, blocks, init: InitSpec, seed: int) -> bool:
    require_blocks(net.model_name, blocks, net.trainable)
    for block in blocks:
        generator = block_generator(seed, block)
        if block == "head":
            for part in net.new_head:
                reinit_module(net.head.get_submodule(part), init, generator)
        else:
            reinit_module(net.body[block], init, generator)
    return True
