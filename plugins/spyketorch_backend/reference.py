"""One image at a time over every time step, the way SpykeTorch runs: the baseline and the test oracle.

Written independently of the batched passes (``network.py``): each layer is
simulated for all T steps of one image, winners are picked one by one on the
host, and each winner's kernel is updated in a Python loop. Only the input
coding and the synapse grid are shared. The batched passes must give exactly
these results (tests) and beat this speed (``benchmarks/snn_throughput.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tle_spyketorch import coding, plasticity
from tle_spyketorch.layers import quantise


def _steps(times: torch.Tensor, timesteps: int) -> torch.Tensor:
    return torch.stack([(times <= t).float() for t in range(timesteps)])  # (T, C, H, W)


def _layer(trains: torch.Tensor, weight: torch.Tensor, threshold: float | None):
    pot = F.conv2d(trains, quantise(weight))  # the T steps of one image as a batch
    spikes = (pot >= threshold).float() if threshold is not None else (pot > 0).float()
    return pot, spikes


def _pool(trains: torch.Tensor, pool) -> torch.Tensor:
    k, s, p = pool
    return F.max_pool2d(F.pad(trains, (p, p, p, p)), k, s)


def _first_spikes(spikes: torch.Tensor) -> torch.Tensor:
    return spikes.shape[0] - spikes.sum(0)


def _winners(pot: torch.Tensor, spikes: torch.Tensor, k: int, radius: int) -> list[tuple[int, int, int]]:
    """Earliest spike first, then the higher potential at that step, then the lower index; with pointwise
    inhibition before the competition. One winner at a time, each read back to the host."""
    timesteps = pot.shape[0]
    first = _first_spikes(spikes).numpy().astype(np.float64)
    at = pot.gather(0, torch.from_numpy(np.minimum(first, timesteps - 1)).long()[None]).squeeze(0).numpy()
    # Lexicographic (first step, -potential) as one number: potentials are below fan_in + 1 <= 10**4.
    key = np.where(first < timesteps, first * 1e5 - at, np.inf)
    best = np.argmin(key, axis=0)  # per position, the first map on ties
    alive = (np.arange(key.shape[0])[:, None, None] == best[None]) & np.isfinite(key)
    out = []
    for _ in range(k):
        masked = np.where(alive, key, np.inf)
        flat = int(np.argmin(masked))
        if not np.isfinite(masked.flat[flat]):
            break
        m, y, x = np.unravel_index(flat, alive.shape)
        out.append((int(m), int(y), int(x)))
        alive[m] = False
        alive[:, max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = False
    return out


def _stdp(weight: torch.Tensor, in_times: torch.Tensor, winners, out_times, rates, stabilise, bounds) -> None:
    kernel = weight.shape[-1]
    lb, ub = bounds
    for (m, y, x), t_out, (a_plus, a_minus) in zip(winners, out_times, rates):
        patch = in_times[:, y:y + kernel, x:x + kernel]
        rate = torch.where(patch <= t_out, torch.tensor(a_plus), torch.tensor(a_minus))
        w = weight[m]
        dw = rate * (w - lb) * (ub - w) if stabilise else rate
        weight[m] = (w + dw).clamp(lb, ub)


class Reference:
    """Drives a ``SpikingNet``'s synapses (updated in place) one image at a time."""

    def __init__(self, net):
        self.net = net
        self.a = net.arch

    def _input(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
        return coding.encode(x, self.net.bank.cpu(), self.a.timesteps)[0]

    @torch.no_grad()
    def potentials(self, image) -> torch.Tensor:
        """conv3's potentials at every step: (T, neurons, h, w)."""
        a = self.a
        s0 = _steps(self._input(image), a.timesteps)
        _, s1 = _layer(s0, self.net.conv1.detach().cpu(), a.threshold1)
        _, s2 = _layer(_pool(s1, a.pool1), self.net.conv2.detach().cpu(), a.threshold2)
        pot, _ = _layer(_pool(s2, a.pool2), self.net.head.detach().cpu(), None)
        return pot

    def logits(self, image) -> torch.Tensor:
        final = self.potentials(image)[-1].flatten(1).amax(1)
        return final.view(self.net.num_classes, self.net.per_class).amax(1)

    @torch.no_grad()
    def stdp(self, block: str, image, rates: tuple[float, float]) -> None:
        a = self.a
        times = self._input(image)
        trains = _steps(times, a.timesteps)
        if block == "conv2":
            _, s1 = _layer(trains, self.net.conv1.detach().cpu(), a.threshold1)
            trains = _pool(s1, a.pool1)
            times = _first_spikes(trains)
        weight = self.net.synapses(block)
        threshold, k, radius = a.competition(block)
        w = weight.detach().cpu().clone()
        pot, spikes = _layer(trains, w, threshold)
        winners = _winners(pot, spikes, k, radius)
        first = _first_spikes(spikes)
        out_times = [float(first[m, y, x]) for m, y, x in winners]
        _stdp(w, times.float(), winners, out_times, [rates] * len(winners), True, plasticity.STDP_BOUNDS)
        weight.data.copy_(w)

    @torch.no_grad()
    def rstdp(self, image, label: int, scales: tuple[float, float]) -> int:
        """One R-STDP step; returns the decided class (-1 when silent)."""
        pot = self.potentials(image)
        final = pot[-1]
        flat = int(torch.argmax(final.flatten()))
        if float(final.flatten()[flat]) <= 0:
            return -1
        m, y, x = np.unravel_index(flat, final.shape)
        decided = int(m) // self.net.per_class
        a = self.a
        s0 = _steps(self._input(image), a.timesteps)
        _, s1 = _layer(s0, self.net.conv1.detach().cpu(), a.threshold1)
        _, s2 = _layer(_pool(s1, a.pool1), self.net.conv2.detach().cpu(), a.threshold2)
        in_times = _first_spikes(_pool(s2, a.pool2))
        reward, punish = scales
        rates = ((plasticity.REWARD[0] * reward, plasticity.REWARD[1] * reward) if decided == label
                 else (plasticity.PUNISHMENT[0] * punish, plasticity.PUNISHMENT[1] * punish))
        w = self.net.head.detach().cpu().clone()
        _stdp(w, in_times, [(int(m), int(y), int(x))], [float(a.timesteps - 1)], [rates], False,
              plasticity.RSTDP_BOUNDS)
        self.net.head.data.copy_(w)
        return decided
