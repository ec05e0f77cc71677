"""Which neuron fires first at each position of a learning layer: what pointwise inhibition and k winners need.

A learning layer's competition reads, per position, only the map that fired
earliest (the higher potential at that step, then the lower map, on ties). Two
facts make that cheap to find without simulating every step:

* potentials never fall (synapses non-negative, trains cumulative), so one
  convolution at the middle step tells which neurons have fired by then; once
  STDP has made the synapses selective those are few (~0.1-1 %), and their
  exact firing steps come from their own inputs (a weighted histogram of the
  input firing steps), not from more convolutions. When many have (untrained
  synapses all near 0.8), an earlier step is probed, down to step 0;
* a neuron that fires after k winners of its sample have fired can neither win
  nor inhibit one of them, so each sample leaves the simulation of the later
  steps (one convolution per step) as soon as its winners are decided.

All sums are exact (see ``layers``), so the result equals a full simulation of
all T steps bit for bit, which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tle_spyketorch import competition, layers


def front(times: torch.Tensor, weight: torch.Tensor, threshold: float, timesteps: int, k: int, radius: int):
    """Per position, the earliest spike of a layer: ``(step, potential, map)``, each (N, H', W').

    ``step`` is uint8 (``timesteps`` where nothing fired while the sample was simulated), ``potential`` the
    potential of ``map`` at that step. ``times`` are the input firing steps (N, C, H, W).
    """
    n, _, hi, wi = times.shape
    kernel = weight.shape[-1]
    h, w = hi - kernel + 1, wi - kernel + 1
    synapses = layers.snap(weight.detach())
    race = Race(Rules(threshold, timesteps, int(weight[0].numel()), weight.shape[0], k, radius),
                step=torch.full((n, h, w), timesteps, dtype=torch.uint8, device=times.device),
                value=torch.zeros((n, h, w), dtype=torch.float64, device=times.device),
                best=torch.zeros((n, h, w), dtype=torch.int64, device=times.device))

    everyone = torch.arange(n, device=times.device)
    steps = layers.step_layout(times)
    start, pot, fired = _probe(steps, weight, threshold, timesteps)
    if start:
        race.resolve(steps, synapses, fired, start)
    else:
        race.record(everyone, pot, 0)
    active = race.undecided(everyone)
    for t in range(start + 1, timesteps):
        if not len(active):
            break
        pot = layers.potentials(steps[active], weight, t, t + 1)[:, 0]
        race.record(active, pot, t)
        active = race.undecided(active)
    return race.step, race.value, race.best


@dataclass(frozen=True)
class Rules:
    """A learning layer's competition: ``threshold``, ``timesteps``, the synapses per neuron (``fan_in``), the
    feature ``maps``, ``k`` winners and the inhibition ``radius``."""

    threshold: float
    timesteps: int
    fan_in: int
    maps: int
    k: int
    radius: int


@dataclass
class Race:
    """Per position of every sample, the earliest spike found so far: its ``step`` (uint8, ``timesteps`` = none
    yet), the ``value`` of the potential then and the map (``best``) that fired it."""

    rules: Rules
    step: torch.Tensor
    value: torch.Tensor
    best: torch.Tensor

    def record(self, active, pot, t: int) -> None:
        """Positions of the ``active`` samples where a neuron fires first at step ``t`` (potentials ``pot``)."""
        step, value, best = self.step, self.value, self.best
        # The highest potential at a position is above threshold exactly when any is: no masked copy needed.
        top, top_map = pot.max(dim=1)
        new = (step[active] == self.rules.timesteps) & (top > self.rules.threshold)
        step[active] = step[active].masked_fill(new, t)
        value[active] = torch.where(new, top, value[active])
        best[active] = torch.where(new, top_map, best[active])

    def undecided(self, active) -> torch.Tensor:
        """The ``active`` samples whose k winners are not decided yet."""
        r = self.rules
        # Only a sample with k positions fired so far can have k winners: the others need no competition yet.
        ready = active[(self.step[active] < r.timesteps).flatten(1).sum(dim=1) >= r.k]
        if not len(ready):
            return active
        score = competition.priority(self.step[ready], self.value[ready], r.timesteps, r.fan_in)
        decided = ready[competition.pick(score, self.best[ready], r.maps, r.k, r.radius)[3].all(dim=1)]
        return active[~torch.isin(active, decided)]

    def resolve(self, steps, synapses, fired, upto: int) -> None:
        """Exact firing steps (<= ``upto``) of the ``fired`` neurons (N, maps, H', W') from their inputs; writes
        each position's earliest one into ``step``/``value``/``best``."""
        r, step = self.rules, self.step
        (n, m, y, x), fire, at_fire = _exact(steps, synapses, fired, r.threshold, upto)
        if not len(n):
            return
        # Per position the highest priority, then the lowest map: what pointwise inhibition keeps.
        h, w = step.shape[1:]
        pos = (n * h + y) * w + x
        score = competition.priority(fire, at_fire, r.timesteps, r.fan_in)
        top = torch.full((step.numel(),), -1.0, dtype=score.dtype, device=score.device)
        top = top.scatter_reduce(0, pos, score, "amax")
        tied = score == top[pos]
        lowest = torch.full((step.numel(),), synapses.shape[0], dtype=torch.int64, device=score.device)
        lowest = lowest.scatter_reduce(0, pos[tied], m[tied], "amin")
        chosen = tied & (m == lowest[pos])
        step.view(-1)[pos[chosen]] = fire[chosen].to(torch.uint8)
        self.value.view(-1)[pos[chosen]] = at_fire[chosen]
        self.best.view(-1)[pos[chosen]] = m[chosen]


# Resolving a neuron from its inputs (gather, histogram) costs roughly this many times its share of one dense
# convolution step (measured on 2 CPU cores: ~250 for conv1, ~500 for conv2): resolving the neurons fired by
# step s replaces s convolutions, so it pays while fewer than s / SPARSE_COST of them have fired.
SPARSE_COST = 256


def _probe(steps, weight, threshold: float, timesteps: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The step to start simulating from, the potentials there and which neurons have fired: the middle step
    when few have (late firing: trained synapses), else an earlier one, down to step 0 (dense firing at the
    start of training, when the winners are also decided within a few steps)."""
    s = timesteps // 2
    while True:
        pot = layers.potentials(steps, weight, s, s + 1)[:, 0]
        fired = pot > threshold
        if s == 0 or int(fired.count_nonzero()) * SPARSE_COST <= fired.numel() * s:
            return s, pot, fired
        s //= 2


def firing_steps(times: torch.Tensor, weight: torch.Tensor, threshold: float, timesteps: int) -> torch.Tensor:
    """Every neuron's firing step (N, maps, H', W'), uint8 (``timesteps`` = never), without inhibition: the
    neurons fired by the probed step (see ``_probe``) from their inputs, then one convolution per later step."""
    steps = layers.step_layout(times)
    start, pot, fired = _probe(steps, weight, threshold, timesteps)
    # Potentials never fall, so a neuron not fired by ``start`` fires at start + 1 + (later steps below threshold):
    # one comparison and one add per step.
    out = torch.full_like(pot, start + 1, dtype=torch.uint8)
    for t in range(start + 1, timesteps):
        out += layers.potentials(steps, weight, t, t + 1)[:, 0] <= threshold
    if start:
        index, fire, _ = _exact(steps, layers.snap(weight.detach()), fired, threshold, start)
        out[index] = fire.to(torch.uint8)
    else:
        out.masked_fill_(fired, 0)
    return out.contiguous()


def _exact(steps, synapses, fired, threshold: float, upto: int):
    """The ``fired`` neurons (N, maps, H', W' mask; all fire by step ``upto``): their index ``(n, m, y, x)``,
    exact firing step and potential at that step, computed from their own inputs (``steps``: input firing steps)."""
    index = fired.nonzero(as_tuple=True)
    n, m, y, x = index
    kernel = synapses.shape[-1]
    # Each neuron's receptive field, through a view of every field: no offsets tensor, one gather (channels
    # innermost: 1.3x faster than from NCHW).
    steps = steps.contiguous(memory_format=torch.channels_last)
    inputs = steps.unfold(2, kernel, 1).unfold(3, kernel, 1).permute(0, 2, 3, 1, 4, 5)[n, y, x].flatten(1)
    # The potential at steps 0..upto: a histogram of the synapses over their input's firing step, summed up.
    # Synapses on their layer's grid: exact in any order (see ``layers``).
    hist = torch.zeros((len(n), upto + 2), dtype=torch.float64, device=steps.device)
    hist.scatter_add_(1, inputs.clamp_max(upto + 1).long(), synapses.view(synapses.shape[0], -1)[m].to(torch.float64))
    pot = hist[:, :upto + 1].cumsum(dim=1)
    fire = (pot <= threshold).sum(dim=1)
    return index, fire, pot.gather(1, fire[:, None])[:, 0]


