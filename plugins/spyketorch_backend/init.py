"""Initialisers for synapses that live in [0, 1].

Every initialiser of ``tle.contract.initializers`` draws, with Keras's formulas, the
*deviation* of a synapse from Mozafari's mean 0.8; the result is clipped to
[0, 1] (synapses stay non-negative). ``normal:0.05`` is therefore the paper's
N(0.8, 0.05), and the backend's default (``registry.DEFAULT_INIT``) when a run
names no ``--init``; ``glorot_uniform`` gives U(0.8 ± l) with
l = sqrt(6 / (fan_in + fan_out)) (±0.08 for mozafari's conv1); ``zeros``
puts every synapse at 0.8. An initialiser centred on zero would leave half the
synapses at 0 and most neurons silent, so the shift is what makes the core's
initialisers usable here.

Each block draws from its own generator seeded by (seed, block name).
"""

from __future__ import annotations


import numpy as np
import torch

from tle.contract.initializers import InitSpec, require_blocks
from tle.contract.seeds import derive
from tle_torch.init import sample  # the torch backend's sampler: this backend is built on torch too

MEAN = 0.8


def block_generator(seed: int, block: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive(seed, block))


def deviation(shape: tuple[int, ...], init: InitSpec, generator: torch.Generator) -> torch.Tensor:
    area = int(np.prod(shape[2:]))
    return sample(torch.empty(shape, dtype=torch.float32), init.distribution(shape[1] * area, shape[0] * area),
                  generator)


@torch.no_grad()
def apply_init(net, blocks, init: InitSpec, seed: int) -> bool:
    require_blocks(net.model_name, blocks, net.trainable)
    for block in blocks:
        weight = net.synapses(block)
        drawn = (MEAN + deviation(tuple(weight.shape), init, block_generator(seed, block))).clamp_(0.0, 1.0)
        weight.copy_(drawn.to(weight.device))
    net.snap()  # conv1-conv2 on their grids (see ``layers``)
    return True
