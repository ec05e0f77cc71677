"""Convolution and pooling over time steps, with time folded into the batch.

Potentials of a conv layer at step t are the convolution of the cumulative
input train at t. Synapses are non-negative and trains cumulative, so
potentials never fall: a neuron's firing step is the first step at which its
potential exceeds the threshold (``race`` finds those steps for learning layers).
With no inhibition (inference, and every layer that is not learning) the
state at the last step depends only on the spikes at the last step, so the
inference path needs one convolution per layer instead of T.

Exact potentials, so that a threshold is crossed and a winner chosen
identically for any batch size, device, ONNX Runtime — and by SpykeTorch's own
float32 convolutions:

* conv1 and conv2 (the layers with thresholds) keep their synapses on a grid
  of 2**-g with fan_in * 2**g < 2**24 (``grid_step``: 2**-16 for conv1, 2**-15
  for conv2): with 0/1 spikes every partial sum is a float32 integer multiple
  of the step below 2**24, so a float32 convolution is exact in any order. The
  learning rules round after each update (``snap``). Full-precision synapses
  put potentials within float32 rounding of the integer thresholds, where
  SpykeTorch's result depends on the order its convolution adds in.
* conv3 (no threshold, learned by R-STDP's small rates) keeps full precision:
  a synapse acts as ``hi + lo``, ``hi`` on the 2**-11 grid and ``lo``
  (|lo| <= 2**-12) on the 2**-23 grid (``split``); both convolutions are exact
  in float32 and their sum is exact in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HI_STEP = 2.0**11
LO_STEP = 2.0**23
MAX_FAN_IN = 2**13  # 2**13 synapses <= 1 on the 2**-11 grid: partial sums below 2**24 grid steps


def grid_step(fan_in: int) -> float:
    """The grid of a thresholded layer's synapses: the finest 2**-g with fan_in * 2**g <= 2**24."""
    return 2.0 ** -math.floor(24 - math.log2(fan_in))


def snap(weight: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` rounded to its layer's grid, in [0, 1]. With ``before`` (on the grid; the synapses before an
    update), a synapse that changed moves at least one step in the direction it changed: updates smaller than
    half a step near a bound (where the stabiliser makes them vanish) still converge to the bound, as they do
    in float32."""
    step = grid_step(int(weight[0].numel()))
    q = torch.round(weight / step) * step
    if before is not None:
        stuck = (q == before) & (weight != before)
        q = torch.where(stuck, before + torch.sign(weight - before) * step, q)
    return q.clamp_(0.0, 1.0)


def split(weight: torch.Tensor) -> torch.Tensor:
    """conv3's synapses as it computes with them: ``(2 * maps, ...)`` float32, the ``hi`` parts then the ``lo``
    parts (the learning rule keeps full precision)."""
    if weight[0].numel() > MAX_FAN_IN:
        raise ValueError(f"a fan-in of {weight[0].numel()} exceeds the exact range ({MAX_FAN_IN})")
    # Exact in float32: scaling by powers of 2 and rounding are exact, and w - hi (below 2**-12, on w's own
    # binade's grid) is representable.
    w = weight.detach().to(torch.float32)
    out = torch.empty((2 * w.shape[0], *w.shape[1:]), dtype=torch.float32, device=w.device)
    hi, lo = out[:w.shape[0]], out[w.shape[0]:]
    torch.round(w * HI_STEP, out=hi).mul_(1 / HI_STEP)
    torch.round((w - hi).mul_(LO_STEP), out=lo).mul_(1 / LO_STEP)
    return out


def conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d`` without TF32 (on CUDA it would round the synapses to 11 significant bits)."""
    if x.is_cuda:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return F.conv2d(x, weight)
    return F.conv2d(x, weight)


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
    """Exact potentials (float32) of a thresholded layer at steps ``start..stop-1``: (N, stop-start, C_out, H',
    W'). Its synapses act as ``snap`` puts them (a no-op for the network's own, kept on the grid)."""
    out = conv(trains(times, start, stop), snap(weight.detach()).contiguous(memory_format=layout(weight.shape[1])))
    return out.unflatten(0, (times.shape[0], stop - start))


def pad_times(times: torch.Tensor, p: int, timesteps: int) -> torch.Tensor:
    """Firing steps padded by ``p`` never-firing neurons on each side."""
    return F.pad(times, (p, p, p, p), value=timesteps) if p else times


def pad_spikes(spikes: torch.Tensor, p: int) -> torch.Tensor:
    return F.pad(spikes, (p, p, p, p)) if p else spikes


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
    """Exact potentials (float32) of a thresholded layer at the last step from the spikes at the last step."""
    return conv(spikes, snap(weight.detach()))


def conv_head(spikes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv3's exact potentials (float64) from its input spikes: the two parts of ``split``, added in float64."""
    hi, lo = conv(spikes, split(weight)).to(torch.float64).chunk(2, dim=1)
    return hi + lo
