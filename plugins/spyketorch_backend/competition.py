"""Lateral inhibition while a layer learns: pointwise inhibition, then k winners.

A neuron's priority orders the competition: it fires earlier, or at the same
step with a higher potential. Priorities are exact (steps and exact potentials, in
float64), and ties go to the lower map, then the lower position (the
order of a flattened ``(map, y, x)`` tensor), so the winners are the same on
every device and for every batch size.
"""

from __future__ import annotations

import torch


def priority(times: torch.Tensor, pot_at_fire: torch.Tensor, timesteps: int, fan_in: int) -> torch.Tensor:
    """(T - firing step) * M + potential at that step; M = fan_in + 1 exceeds any potential (synapses <= 1,
    spikes 0/1). 0 for silent neurons. float64: exact for the layers' exact potentials (see ``layers``)."""
    dtype = torch.float64
    score = (timesteps - times.to(dtype)) * float(fan_in + 1) + pot_at_fire.to(dtype)
    return torch.where(times < timesteps, score, torch.zeros_like(score))


def winners(score: torch.Tensor, k: int, radius: int) -> tuple[torch.Tensor, ...]:
    """Pointwise inhibition, then up to ``k`` winners per sample (see ``pick``).

    ``score`` (N, C, H, W) is the priority, 0 for silent neurons. At each position only the map with the
    highest priority (the first on ties) competes.
    """
    best, best_map = score.max(dim=1)
    return pick(best, best_map, score.shape[1], k, radius)


def pick(best: torch.Tensor, best_map: torch.Tensor, maps: int, k: int, radius: int) -> tuple[torch.Tensor, ...]:
    """Up to ``k`` winners per sample among positions, one after another: each silences its own map everywhere
    and every map within ``radius`` (Chebyshev distance) of its position.

    ``best`` (N, H, W): each position's priority after pointwise inhibition (0: nothing fired there);
    ``best_map``: the map it belongs to. Returns ``(map, y, x, valid)``, each (N, k); ``valid`` is False where
    fewer than k neurons could win. A loop over k, never over samples, and no value leaves the device.
    """
    n, h, w = best.shape
    key = best.reshape(n, h * w)
    # Among equal priorities the flattened (map, y, x) order decides: the lower map, then the lower position.
    order = best_map.reshape(n, h * w) * (h * w) + torch.arange(h * w, device=best.device)
    ys = torch.arange(h, device=best.device).view(1, h, 1)
    xs = torch.arange(w, device=best.device).view(1, 1, w)
    last = torch.full_like(order, maps * h * w)
    chosen_maps, rows, cols, valid = [], [], [], []
    for _ in range(k):
        value = key.max(dim=1).values
        first = torch.where(key == value[:, None], order, last).min(dim=1).values
        m, index = first // (h * w), first % (h * w)
        y, x = index // w, index % w
        chosen_maps.append(m)
        rows.append(y)
        cols.append(x)
        valid.append(value > 0)
        near = ((ys - y.view(n, 1, 1)).abs() <= radius) & ((xs - x.view(n, 1, 1)).abs() <= radius)
        key = key.masked_fill(near.view(n, -1) | (order // (h * w) == m[:, None]), 0.0)
    return tuple(torch.stack(v, dim=1) for v in (chosen_maps, rows, cols, valid))
