"""From images to spike times: the DoG filter bank, local normalisation and intensity-to-latency coding.

Spike trains are represented by their firing step: ``times[n, c, y, x]`` in
``0..T-1``, or ``T`` for a neuron that never fires. Trains are cumulative (a
neuron that fired stays 1), so the train at step ``t`` is ``times <= t``.

This is SpykeTorch's coding (``S1C1Transform`` in MozafariDeep.py), step by
step and in its float32 arithmetic: grey levels as ``ToTensor() * 255`` gives
them, six DoG kernels ``(f1 - f2) / (2 pi)`` with ``f = exp(-r^2 / 2 s^2) / s^2``,
less their mean, over their maximum; responses below 50 set to 0; each
divided by its map's mean over a 17x17 window (plus 1e-12); then per image the
non-zero values, largest first, in T bins of ``nnz // T`` values each, so the
last ``nnz mod T`` values never fire.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# (size, sigma1, sigma2): on-centre when sigma1 < sigma2, off-centre otherwise.
DOG = ((3, 3 / 9, 6 / 9), (3, 6 / 9, 3 / 9), (7, 7 / 9, 14 / 9), (7, 14 / 9, 7 / 9), (13, 13 / 9, 26 / 9),
       (13, 26 / 9, 13 / 9))
DOG_PADDING = 6
DOG_THRESHOLD = 50.0  # on 0..255 images: a response below it is 0
NORM_RADIUS = 8
NORM_EPS = 1e-12


def dog_kernel(size: int, sigma1: float, sigma2: float) -> np.ndarray:
    """The difference of two Gaussians (each 1/(2 pi s^2) exp(-r^2/(2 s^2)) on the integer grid), less its mean,
    over its maximum: float64, rounded to float32 by the bank."""
    w = size // 2
    y, x = np.mgrid[-w:w + 1, -w:w + 1]
    r2 = x * x + y * y

    def gauss(sigma: float) -> np.ndarray:
        return (1 / (sigma * sigma)) * np.exp(-0.5 * (1 / (sigma * sigma)) * r2)

    k = (1.0 / (2 * math.pi)) * (gauss(sigma1) - gauss(sigma2))
    k = k - np.mean(k)
    return k / np.max(k)


def dog_bank(padded: int = 13) -> torch.Tensor:
    """The six kernels (float32), each centred in a ``padded`` x ``padded`` window of zeros: (6, 1, padded, padded)."""
    bank = np.zeros((len(DOG), 1, padded, padded), dtype=np.float32)
    for i, (size, s1, s2) in enumerate(DOG):
        o = (padded - size) // 2
        bank[i, 0, o:o + size, o:o + size] = dog_kernel(size, s1, s2).astype(np.float32)
    return torch.from_numpy(bank)


def intensities(images: torch.Tensor) -> torch.Tensor:
    """NHWC [0, 1] -> N1HW grey levels as SpykeTorch reads an 8-bit image: ``(g / 255) * 255`` in float32."""
    x = images.permute(0, 3, 1, 2)
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    return (torch.round(x * 255.0).to(torch.float32) / 255.0) * 255.0


def dog(images: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """DoG responses with values below the threshold set to 0: (N, 6, H, W)."""
    out = F.conv2d(intensities(images), bank.to(images.device), padding=DOG_PADDING)
    return torch.where(out < DOG_THRESHOLD, torch.zeros_like(out), out)


def local_normalise(x: torch.Tensor, radius: int = NORM_RADIUS) -> torch.Tensor:
    """Each value divided by (the mean of its map over a (2r+1)^2 window, zeros outside the image) + 1e-12."""
    side = 2 * radius + 1
    box = torch.ones((1, 1, side, side), dtype=torch.float32, device=x.device) / float(side * side)
    n, c, h, w = x.shape
    mean = F.conv2d(x.reshape(n * c, 1, h, w), box, padding=radius).reshape(n, c, h, w) + NORM_EPS
    return x / mean


def latency(values: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Rank-order coding: per image the non-zero values, largest first, ``nnz // timesteps`` to a step.

    Returns firing steps (int64, same shape): the bin, or ``timesteps`` for zeros and for the last
    ``nnz mod timesteps`` values (the bins are equal, the remainder never fires; an image with fewer
    non-zero values than steps is silent). Equal values keep their memory order (stable sort).
    """
    n = values.shape[0]
    flat = values.reshape(n, -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1).contiguous())
    per_step = torch.div((flat != 0).sum(dim=1, keepdim=True), timesteps, rounding_mode="floor")
    steps = torch.div(rank, per_step.clamp_min(1), rounding_mode="floor")
    steps = torch.where(rank < per_step * timesteps, steps, torch.full_like(steps, timesteps))
    return steps.reshape(values.shape)


def encode(images: torch.Tensor, bank: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Images (NHWC [0, 1]) -> input firing steps (N, 6, H, W)."""
    return latency(local_normalise(dog(images, bank)), timesteps)


def final_spikes(images: torch.Tensor, bank: torch.Tensor, timesteps: int) -> torch.Tensor:
    """The input spikes at the last step (float 0/1): every value the coding puts in one of its bins."""
    return (encode(images, bank, timesteps) < timesteps).to(torch.float32)


def padded_size() -> int:
    return max(size for size, _, _ in DOG)

