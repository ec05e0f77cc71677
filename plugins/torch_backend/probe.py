"""Activations at initialisation for ``tle init-study`` (S4): a lone dense layer, and a model's blocks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tle import UserError
from tle.contract.initializers import InitSpec
from tle.contract.strategy import HEAD
from tle_torch.device import configure_threads
from tle_torch.init import block_generator, reinit_module

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z}


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}", f"choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@torch.no_grad()
def dense_activations(inputs: np.ndarray, units: int, activation: str, init: InitSpec, seed: int) -> np.ndarray:
    act = activation_fn(activation)
    layer = nn.Linear(int(inputs.shape[1]), int(units))
    # The same drawing code as apply_init, so the study sees what a re-initialised block starts from.
    reinit_module(layer, init, block_generator(seed, "dense"))
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    return act(layer(x)).numpy()


@torch.no_grad()
def block_activations(net, images: np.ndarray, blocks: list[str] | None = None) -> dict[str, np.ndarray]:
    configure_threads()
    wanted = set(net.body.keys() if blocks is None else blocks)
    last = max((i for i, name in enumerate(net.body.keys()) if name in wanted), default=-1)
    was_training = net.training
    net.eval()
    try:
        device = net.mean.device
        z = net.prepare(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device))
        out = {}
        for i, (name, block) in enumerate(net.body.items()):
            if i > last and HEAD not in wanted:
                break  # nothing asked for lies further
            z = block(z)
            if name in wanted:
                # Channels last, as the hook promises: conv blocks are NCHW in torch.
                value = z.permute(0, 2, 3, 1) if z.dim() == 4 else z
                out[name] = value.float().cpu().numpy()
        if HEAD in wanted:
            out[HEAD] = net.head(z).float().cpu().numpy()
        return out
    finally:
        net.train(was_training)
