"""From images to spike times: the DoG filter bank, local normalisation and intensity-to-latency coding.

Spike trains are represented by their firing step: ``times[n, c, y, x]`` in
``0..T-1``, or ``T`` for a neuron that never fires. Trains are cumulative (a
neuron that fired stays 1), so the train at step ``t`` is ``times <= t``.

Every value that decides whether a neuron fires is computed exactly in float32
whatever the summation order (CPU, CUDA, batch size, ONNX Runtime): images are
rounded to 0..255, DoG kernels are multiples of 2**-8, synapses multiples of
2**-10 (see ``layers.quantise``), and every partial sum stays within 24 bits.
A threshold is therefore crossed or not identically everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# (size, sigma1, sigma2): on-centre when sigma1 < sigma2, off-centre otherwise.
DOG = ((3, 3 / 9, 6 / 9), (3, 6 / 9, 3 / 9), (7, 7 / 9, 14 / 9), (7, 14 / 9, 7 / 9), (13, 13 / 9, 26 / 9),
       (13, 26 / 9, 13 / 9))
DOG_PADDING = 6
DOG_THRESHOLD = 50.0  # on 0..255 images
NORM_RADIUS = 8
KERNEL_STEP = 256  # DoG weights are multiples of 1/256


def _gaussian(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def dog_kernel(size: int, sigma1: float, sigma2: float) -> np.ndarray:
    """Difference of two normalised Gaussians, zero-mean and scaled to max 1, on the 1/256 grid (still zero-mean)."""
    k = _gaussian(size, sigma1) - _gaussian(size, sigma2)
    k -= k.mean()
    k /= k.max()
    q = np.round(k * KERNEL_STEP).astype(np.int64)
    # Rounding leaves a residual sum of a few steps; take it off the outermost non-maximal weights so the
    # kernel stays exactly zero-mean with its maximum exactly 1.
    r = np.arange(size) - (size - 1) / 2
    ring = np.argsort(-(r[:, None] ** 2 + r[None, :] ** 2).ravel(), kind="stable")
    ring = [i for i in ring if q.flat[i] != KERNEL_STEP]
    residual = int(q.sum())
    i = 0
    while residual:
        step = 1 if residual > 0 else -1
        q.flat[ring[i % len(ring)]] -= step
        residual -= step
        i += 1
    return q.astype(np.float64) / KERNEL_STEP


def dog_bank(padded: int = 13) -> torch.Tensor:
    """The six kernels, each centred in a ``padded`` x ``padded`` window: shape (6, 1, padded, padded)."""
    bank = np.zeros((len(DOG), 1, padded, padded), dtype=np.float32)
    for i, (size, s1, s2) in enumerate(DOG):
        o = (padded - size) // 2
        bank[i, 0, o:o + size, o:o + size] = dog_kernel(size, s1, s2)
    return torch.from_numpy(bank)


def intensities(images: torch.Tensor) -> torch.Tensor:
    """NHWC [0, 1] -> N1HW grey levels 0..255 (integers, so the DoG responses are exact)."""
    x = images.permute(0, 3, 1, 2)
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    return torch.round(x * 255.0)


def dog(images: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """DoG responses with values below the threshold set to 0: (N, 6, H, W)."""
    out = F.conv2d(intensities(images), bank.to(images.device), padding=DOG_PADDING)
    return torch.where(out >= DOG_THRESHOLD, out, torch.zeros_like(out))


def local_normalise(x: torch.Tensor, radius: int = NORM_RADIUS) -> torch.Tensor:
    """Each value divided by the mean of its map over a (2r+1)^2 window; zeros stay zero."""
    side = 2 * radius + 1
    # A box mean is separable: two 1-D passes cost 2*17 instead of 17*17 adds per value.
    mean = F.avg_pool2d(x, (side, 1), stride=1, padding=(radius, 0), count_include_pad=True)
    mean = F.avg_pool2d(mean, (1, side), stride=1, padding=(0, radius), count_include_pad=True)
    return torch.where(x > 0, x / mean.clamp_min(1e-12), torch.zeros_like(x))


def latency(values: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Rank-order coding: the non-zero values of each image, largest first, cut into ``timesteps`` equal bins.

    Returns firing steps (int64, same shape): bin index, or ``timesteps`` for zeros (never fire). Equal
    values keep their memory order (stable sort), so the coding is deterministic.
    """
    n = values.shape[0]
    flat = values.reshape(n, -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1).contiguous())
    nnz = (flat > 0).sum(dim=1, keepdim=True).clamp_min(1)
    steps = torch.div(rank * timesteps, nnz, rounding_mode="floor")
    steps = torch.where(flat > 0, steps, torch.full_like(steps, timesteps))
    return steps.reshape(values.shape)


def encode(images: torch.Tensor, bank: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Images (NHWC [0, 1]) -> input firing steps (N, 6, H, W)."""
    return latency(local_normalise(dog(images, bank)), timesteps)


def final_spikes(images: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The input spikes at the last step: every DoG response above threshold fires at some step.

    Equal to ``encode(...) < T`` without the normalisation and the sort (they only decide *when*).
    """
    return (dog(images, bank) > 0).float()


def padded_size() -> int:
    return max(size for size, _, _ in DOG)

