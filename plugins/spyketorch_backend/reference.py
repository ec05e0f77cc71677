"""One image at a time over every time step, the way SpykeTorch runs: the baseline and the test oracle.

Written independently of the batched passes (``network.py``): each layer is
simulated for all T steps of one image, winners are picked one by one on the
host, and each winner's kernel is updated in a Python loop. Only the input
coding and the synapses' exact arithmetic (``layers.conv``, ``conv_head``,
``snap``) are shared. The geometry is MozafariDeep's: pad, conv, fire above the threshold,
pool, pad, and so on; the decision is the earliest spike, then the largest
potential, over conv3's neurons and positions. The batched passes must give exactly
these results (tests) and beat this speed (``benchmarks/snn_throughput.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tle_spyketorch import coding, plasticity
from tle_spyketorch.layers import conv, conv_head, snap


def _steps(times: torch.Tensor, timesteps: int) -> torch.Tensor:
    return torch.stack([(times <= t).float() for t in range(timesteps)])  # (T, C, H, W)


def _layer(trains: torch.Tensor, weight: torch.Tensor, threshold: float | None):
    # The T steps of one image as a batch; conv3 (no threshold) with its full-precision synapses.
    pot = conv(trains, snap(weight)) if threshold is not None else conv_head(trains, weight)
    spikes = (pot > threshold).float() if threshold is not None else (pot > 0).float()
    return pot, spikes


def _pool(trains: torch.Tensor, pool, pad: int) -> torch.Tensor:
    """Max-pooling (padding never fires), then ``pad`` silent neurons around."""
    k, s, p = pool
    pooled = F.max_pool2d(F.pad(trains, (p, p, p, p)), k, s)
    return F.pad(pooled, (pad, pad, pad, pad))


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


def _stdp(weight: torch.Tensor, in_times: torch.Tensor, updates, stabilise: bool, bounds) -> None:
    """``updates``: per winner ``((map, y, x), its firing step, (a_plus, a_minus))``."""
    kernel = weight.shape[-1]
    lb, ub = bounds
    for (m, y, x), t_out, (a_plus, a_minus) in updates:
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
        """The coded image's firing steps, padded by ``pad0`` never-firing neurons."""
        x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
        p = self.a.pad0
        return F.pad(coding.encode(x, self.net.bank.cpu(), self.a.timesteps)[0], (p, p, p, p), value=self.a.timesteps)

    def _hidden(self, image) -> torch.Tensor:
        """conv3's input trains over every step: (T, maps2, h, w)."""
        a = self.a
        s0 = _steps(self._input(image), a.timesteps)
        _, s1 = _layer(s0, self.net.conv1.detach().cpu(), a.threshold1)
        _, s2 = _layer(_pool(s1, a.pool1, a.pad1), self.net.conv2.detach().cpu(), a.threshold2)
        return _pool(s2, a.pool2, a.pad2)

    @torch.no_grad()
    def potentials(self, image) -> torch.Tensor:
        """conv3's potentials at every step: (T, neurons, h, w)."""
        return _layer(self._hidden(image), self.net.head.detach().cpu(), None)[0]

    def decision(self, image) -> tuple[int, tuple[int, int, int] | None]:
        """(class, winning (neuron, y, x)); (-1, None) when no conv3 potential is above 0 at the last step.

        conv3 has no threshold: every neuron with a positive potential fires at the last step, so the earliest
        spike is a tie and the largest potential decides, compared as SpykeTorch does, in float32 after adding
        15 times the largest potential; the lowest (neuron, y, x) on ties."""
        final = self.potentials(image)[-1].to(torch.float32)
        fired = final > 0
        if not bool(fired.any()):
            return -1, None
        v = final.max() * float(self.a.timesteps)
        key = torch.where(fired, final + v, torch.zeros_like(final)).numpy()
        flat = int(np.argmax(key))  # numpy: the first maximum
        m, y, x = np.unravel_index(flat, key.shape)
        return int(m) // self.net.per_class, (int(m), int(y), int(x))

    def logits(self, image) -> torch.Tensor:
        """Per class, the largest score of its neurons over positions; score = (p + v) - v, 0 when silent."""
        final = self.potentials(image)[-1].to(torch.float32)
        v = final.max().clamp_min(0) * float(self.a.timesteps)
        score = torch.where(final > 0, (final + v) - v, torch.zeros_like(final)).flatten(1).amax(1)
        return score.view(self.net.num_classes, self.net.per_class).amax(1)

    @torch.no_grad()
    def stdp(self, block: str, image, rates: tuple[float, float]) -> None:
        a = self.a
        times = self._input(image)
        trains = _steps(times, a.timesteps)
        if block == "conv2":
            _, s1 = _layer(trains, self.net.conv1.detach().cpu(), a.threshold1)
            trains = _pool(s1, a.pool1, a.pad1)
            times = _first_spikes(trains)
        weight = self.net.synapses(block)
        threshold, k, radius = a.competition(block)
        w = weight.detach().cpu().clone()
        pot, spikes = _layer(trains, w, threshold)
        winners = _winners(pot, spikes, k, radius)
        first = _first_spikes(spikes)
        out_times = [float(first[m, y, x]) for m, y, x in winners]
        before = w.clone()
        _stdp(w, times.float(), [(where, t, rates) for where, t in zip(winners, out_times)], True,
              plasticity.STDP_BOUNDS)
        weight.data.copy_(snap(w, before))

    @torch.no_grad()
    def rstdp(self, image, label: int, scales: tuple[float, float]) -> int:
        """One R-STDP step; returns the decided class (-1 when silent: no update)."""
        decided, where = self.decision(image)
        if where is None:
            return -1
        m, y, x = where
        a = self.a
        in_times = _first_spikes(self._hidden(image))
        reward, punish = scales
        rates = ((plasticity.REWARD[0] * reward, plasticity.REWARD[1] * reward) if decided == label
                 else (plasticity.PUNISHMENT[0] * punish, plasticity.PUNISHMENT[1] * punish))
        w = self.net.head.detach().cpu().clone()
        _stdp(w, in_times, [((int(m), int(y), int(x)), float(a.timesteps - 1), rates)], False,
              plasticity.RSTDP_BOUNDS)
        self.net.head.data.copy_(w)
        return decided
