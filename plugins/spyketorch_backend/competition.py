"""Lateral inhibition while a layer learns: pointwise inhibition, then k winners.

A neuron's priority orders the competition: it fires earlier, or at the same
step with a higher potential. Priorities are exact in float64 (steps and
potentials on the 2**-10 grid), and ``max`` returns the first of equal values,
so the winners are the same on every device and for every batch size.
"""

from __future__ import annotations

import torch


def priority(times: torch.Tensor, pot_at_fire: torch.Tensor, timesteps: int, fan_in: int) -> torch.Tensor:
    """(T - firing step) * M + potential at that step; M = fan_in + 1 exceeds any potential (synapses <= 1,
    spikes 0/1). 0 for silent neurons."""
    score = (timesteps - times).to(torch.float64) * float(fan_in + 1) + pot_at_fire.to(torch.float64)
    return torch.where(times < timesteps, score, torch.zeros_like(score))


def pointwise(score: torch.Tensor) -> torch.Tensor:
    """At each position only the map with the highest priority may fire; the others are inhibited (score 0)."""
    best = score.argmax(dim=1, keepdim=True)
    keep = torch.arange(score.shape[1], device=score.device).view(1, -1, 1, 1) == best
    return torch.where(keep, score, torch.zeros_like(score))


def k_winners(score: torch.Tensor, k: int, radius: int) -> tuple[torch.Tensor, ...]:
    """Up to ``k`` winners per sample, one after another: each one silences its own map everywhere and
    every map within ``radius`` (Chebyshev distance) of its position.

    Returns ``(map, y, x, valid)``, each (N, k); ``valid`` is False where fewer than k neurons could win.
    A loop over k, never over samples, and no value leaves the device.
    """
    n, c, h, w = score.shape
    cs = torch.arange(c, device=score.device).view(1, c, 1, 1)
    ys = torch.arange(h, device=score.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=score.device).view(1, 1, 1, w)
    maps, rows, cols, valid = [], [], [], []
    for _ in range(k):
        value, index = score.flatten(1).max(dim=1)
        m, rest = index // (h * w), index % (h * w)
        y, x = rest // w, rest % w
        maps.append(m)
        rows.append(y)
        cols.append(x)
        valid.append(value > 0)
        near = ((ys - y.view(n, 1, 1, 1)).abs() <= radius) & ((xs - x.view(n, 1, 1, 1)).abs() <= radius)
        score = score.masked_fill((cs == m.view(n, 1, 1, 1)) | near, 0.0)
    return tuple(torch.stack(v, dim=1) for v in (maps, rows, cols, valid))

