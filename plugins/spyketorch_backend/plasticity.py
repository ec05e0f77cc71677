"""STDP and R-STDP as batched tensor updates.

A winner's kernel moves towards the inputs that spiked no later than it did
(``a_plus``) and away from the others (``a_minus``). The updates of every
winner of every sample in a batch are summed with ``index_add_`` and applied
once: with batch size 1 this is exactly one-sample-at-a-time STDP (a map wins
at most once per sample); with larger batches the samples of a batch see the
same weights, which is the arithmetic that batching changes (see README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

STDP_BOUNDS = (0.0, 1.0)
RSTDP_BOUNDS = (0.2, 0.8)
REWARD = (0.004, -0.003)
PUNISHMENT = (-0.004, 0.0005)


@dataclass(frozen=True)
class Schedule:
    """STDP rates doubled every ``every`` samples until a+ reaches ``cap``, a- = -0.75 a+ throughout.

    As MozafariDeep counts: the ``every``-th sample of a phase is already learned at the doubled rates (its
    counter reaches 500 before that sample's update), so sample ``i`` (from 0) learns at 2**((i + 1) // every).
    """

    a_plus: float = 0.004
    a_minus: float = -0.003
    every: int = 500
    cap: float = 0.15

    def rates(self, seen: int) -> tuple[float, float]:
        """The rates of the sample that follows ``seen`` samples of the phase."""
        factor = 2 ** ((int(seen) + 1) // self.every)
        if self.a_plus * factor >= self.cap:
            return self.cap, -0.75 * self.cap
        return self.a_plus * factor, self.a_minus * factor


def receptive_fields(times_in: torch.Tensor, kernel: int, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Input firing steps seen by the neurons at (y, x), per sample: (N, K) positions -> (N, K, C*k*k).

    Gathered directly (N*K*C*k*k values); unfolding the whole input first cost more than the convolution.
    """
    n, k = y.shape
    c = times_in.shape[1]
    offsets = torch.arange(kernel, device=times_in.device)
    rows = (y.unsqueeze(-1) + offsets).view(n, k, 1, kernel, 1)
    cols = (x.unsqueeze(-1) + offsets).view(n, k, 1, 1, kernel)
    samples = torch.arange(n, device=times_in.device).view(n, 1, 1, 1, 1)
    channels = torch.arange(c, device=times_in.device).view(1, 1, c, 1, 1)
    return times_in[samples, channels, rows, cols].reshape(n, k, -1).to(torch.float32)


@dataclass(frozen=True)
class Rule:
    """One (S)TDP update's rates and limits: ``a_plus`` for inputs that fired no later than the output,
    ``a_minus`` for the others, floats or (N, K) tensors (R-STDP rewards some samples and punishes others);
    ``stabilise`` scales a change by (w - lb)(ub - w); the synapses stay within ``bounds`` (lb, ub)."""

    a_plus: Any
    a_minus: Any
    stabilise: bool
    bounds: tuple[float, float]


def update(weight: torch.Tensor, times_in: torch.Tensor, winners, out_times: torch.Tensor, rule: Rule) -> torch.Tensor:
    """Apply ``rule`` for ``winners`` = (map, y, x, valid), each (N, K), in place; returns the summed change.
    ``out_times`` (N, K): the winners' firing steps."""
    a_plus, a_minus, stabilise, bounds = rule.a_plus, rule.a_minus, rule.stabilise, rule.bounds
    maps, y, x, valid = winners
    kernel = weight.shape[-1]
    fields = receptive_fields(times_in, kernel, y, x)
    a_plus = torch.as_tensor(a_plus, dtype=torch.float32, device=weight.device)
    a_minus = torch.as_tensor(a_minus, dtype=torch.float32, device=weight.device)
    if a_plus.dim():
        a_plus, a_minus = a_plus.unsqueeze(-1), a_minus.unsqueeze(-1)
    rate = torch.where(fields <= out_times.unsqueeze(-1).to(torch.float32), a_plus, a_minus)
    rate = rate * valid.unsqueeze(-1).to(torch.float32)
    flat = weight.view(weight.shape[0], -1)
    change = torch.zeros_like(flat).index_add_(0, maps.flatten(), rate.flatten(0, 1))
    lb, ub = bounds
    if stabilise:
        change = change * (flat - lb) * (ub - flat)
    flat.add_(change).clamp_(lb, ub)
    return change


def convergence(weight: torch.Tensor, bounds: tuple[float, float]) -> float:
    """Mean (w - lb)(ub - w) / ((ub - lb) / 2)^2: 1 when every synapse sits mid-range, 0 when all sit on a
    bound (Kheradpisheh et al.'s C_l, rescaled). STDP has converged below about 0.04 (C_l < 0.01)."""
    lb, ub = bounds
    half = (ub - lb) / 2
    return float(((weight - lb) * (ub - weight)).mean() / half**2)
