"""Convolution and pooling over time steps, with time folded into the batch.

Potentials of a conv layer at step t are the convolution of the cumulative
input train at t. Synapses are non-negative and trains cumulative, so
potentials never fall: a neuron's firing step is the first step at which its
potential reaches the threshold (``race`` finds those steps for learning layers).
With no inhibition (inference, and every layer that is not learning) the
state at the last step depends only on the spikes at the last step, so the
inference path needs one convolution per layer instead of T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SYNAPSE_STEP = 1024  # synapses act as multiples of 2**-10: sums of up to 2**13 stay exact in float32


def quantise(weight: torch.Tensor) -> torch.Tensor:
    """The weights a layer computes with (the learning rules keep full precision)."""
    return torch.round(weight * SYNAPSE_STEP) / SYNAPSE_STEP


# oneDNN's channels-last convolutions pay from about this many input channels (measured on 2 CPU cores: conv2's
# 30 run 1.1x faster channels-last, conv1's 6 run 1.3x faster in NCHW).
CHANNELS_LAST_FROM = 16


def layout(channels: int) -> torch.memory_format:
    """The memory format the convolutions over ``channels`` input channels run fastest in."""
    return torch.channels_last if channels >= CHANNELS_LAST_FROM else torch.contiguous_format


def step_layout(times: torch.Tensor) -> torch.Tensor:
    """Firing steps as the per-step convolutions read them fastest: uint8 (steps <= 255), in ``layout``."""
    return times.to(torch.uint8).contiguous(memory_format=layout(times.shape[1]))


def trains(times: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Firing steps (N, C, H, W) -> the cumulative spike trains of steps ``start..stop-1`` folded into the
    batch: (N*(stop-start), C, H, W) float, in the convolution's fast ``layout``."""
    steps = torch.arange(start, stop, device=times.device).view(1, stop - start, 1, 1, 1)
    spikes = (times.unsqueeze(1) <= steps).flatten(0, 1)
    return spikes.to(torch.float32, memory_format=layout(times.shape[1]))


def potentials(times: torch.Tensor, weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Potentials at steps ``start..stop-1``: (N, stop-start, C_out, H', W')."""
    out = F.conv2d(trains(times, start, stop), quantise(weight).contiguous(memory_format=layout(weight.shape[1])))
    return out.unflatten(0, (times.shape[0], stop - start))


def pool_times(times: torch.Tensor, pool: tuple[int, int, int], timesteps: int) -> torch.Tensor:
    """Max-pooling of spike trains = the earliest firing step in each window; padding never fires."""
    k, s, p = pool
    # torch's max_pool2d refuses padding above half the kernel (S2's pool2 pads 2 with kernel 3): pad by hand.
    padded = F.pad(times.to(torch.float32), (p, p, p, p), value=float(timesteps)) if p else times.to(torch.float32)
    return (-F.max_pool2d(-padded, k, s)).to(times.dtype)


def pool_spikes(spikes: torch.Tensor, pool: tuple[int, int, int]) -> torch.Tensor:
    k, s, p = pool
    return F.max_pool2d(F.pad(spikes, (p, p, p, p)) if p else spikes, k, s)


def conv_final(spikes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Potentials at the last step from the spikes at the last step."""
    return F.conv2d(spikes, quantise(weight))
