"""Frozen-prefix caching: run frozen blocks 1..K once per stage, then train block K+1.. on their outputs.

Frozen blocks run in eval mode and hold no dropout RNG draws, so their outputs
are the same every epoch; computing them once turns S1's feature extractor and
S3's stage 1 into head-only training. Skipped when the data is augmented (the
inputs change every epoch) or when the cache would not fit the budget
(``TLE_TORCH_CACHE_GB``, default 4 GiB; on CUDA the features stay on the GPU
when they take less than a quarter of its free memory).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def budget_bytes() -> int:
    return int(float(os.environ.get("TLE_TORCH_CACHE_GB", "4")) * 2**30)


@dataclass(frozen=True)
class Prefix:
    """Blocks 1..``k`` of ``net``, run ``batch_size`` images at a time on ``device`` under ``autocast``."""

    net: Any
    k: int
    batch_size: int
    device: torch.device
    autocast: Callable = contextlib.nullcontext


@torch.no_grad()
def frozen_features(prefix: Prefix, arrays, track=None) -> list[torch.Tensor] | None:
    """Outputs of the ``prefix``'s blocks for each array in ``arrays`` (NHWC numpy), or None when over budget."""
    net, k, batch_size, device, autocast = prefix.net, prefix.k, prefix.batch_size, prefix.device, prefix.autocast
    total = sum(len(a) for a in arrays)
    if total == 0:
        return None
    blocks = list(net.body.values())[:k]
    was = [b.training for b in blocks]
    for b in blocks:
        b.eval()
    try:
        def run(x):
            with autocast():
                z = net.prepare(torch.from_numpy(x).to(device, non_blocking=True))
                for b in blocks:
                    z = b(z)
            return z

        first = next(a for a in arrays if len(a))
        probe = run(first[:1])
        per_sample = probe.element_size() * probe[0].numel()
        need = per_sample * total
        if need > budget_bytes():
            warnings.warn(f"frozen-prefix cache would take {need / 2**30:.1f} GiB (> TLE_TORCH_CACHE_GB); "
                          "running the frozen blocks every epoch instead", stacklevel=2)
            return None
        keep_on_device = device.type == "cuda" and need < torch.cuda.mem_get_info(device)[0] // 4
        out = []
        track = track or (lambda it, total, description: it)
        for name, a in zip(("train", "val", "test"), arrays):
            parts = []
            starts = range(0, len(a), batch_size)
            for i in track(starts, len(starts), f"caching blocks 1-{k} ({name})"):
                z = run(a[i:i + batch_size])
                parts.append(z if keep_on_device else z.cpu())
            out.append(torch.cat(parts) if parts else probe.new_zeros((0, *probe.shape[1:])).cpu())
        return out
    finally:
        for b, t in zip(blocks, was):
            b.train(t)
