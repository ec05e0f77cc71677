"""A model's blocks for ``tle init-study --model`` and ``tle rank``: conv1's and conv2's spikes, conv3's class scores.

No ``dense_activations``: the spiking network has no dense layer to draw.
"""

from __future__ import annotations

import numpy as np
import torch

from tle.contract.strategy import HEAD
from tle_spyketorch.registry import BLOCKS
from tle_torch.device import configure_threads


@torch.no_grad()
def block_activations(net, images: np.ndarray, blocks: list[str] | None = None) -> dict[str, np.ndarray]:
    """Each block's pooled spikes at the last step as 0/1 (channels last: (N, H, W, C)); ``head``: the class
    scores ``evaluate`` gives (conv3's decision potentials per class), from the same spikes. ``tle rank`` pools
    conv2's over positions: each feature is the fraction of positions where a map fired."""
    configure_threads()
    wanted = set(BLOCKS if blocks is None else blocks)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(net.device)
    spikes = dict(zip(BLOCKS, net.block_spikes(x)))
    out = {name: spikes[name].permute(0, 2, 3, 1).cpu().numpy().astype(np.float32) for name in BLOCKS
           if name in wanted}
    if HEAD in wanted:
        out[HEAD] = net.class_scores(net.head_potentials(spikes["conv2"])).cpu().numpy().astype(np.float32)
    return out
