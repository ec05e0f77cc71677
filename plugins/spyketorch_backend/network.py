"""``SpikingNet``: the three layers' synapses, the DoG bank, and the network's passes.

Parameters are plain tensors updated by the learning rules (no autograd);
``requires_grad`` only records which blocks the current stage may change, so
the core's parameter counts and freeze checks work as for any backend.

Three passes, one per use:

* ``stdp_step`` (conv1 or conv2 learning): full time resolution up to the
  learning layer, pointwise inhibition, k winners, STDP;
* ``rstdp_step`` (conv3 learning) and ``final_potentials`` (inference):
  the last step only — without inhibition, potentials at the last step are a
  function of the spikes at the last step, and the decision (``decide``) is
  SpykeTorch's: the neuron, at any of conv3's positions, with the largest final
  potential; none when no potential is above 0.
"""

from __future__ import annotations

import torch
from torch import nn

from tle_spyketorch import coding, competition, layers, plasticity, race
from tle_spyketorch.registry import Arch

BLOCK_RULES = {"conv1": "STDP", "conv2": "STDP", "head": "R-STDP"}


class SpikingNet(nn.Module):
    # Set on a fused net only (tle_spyketorch.fusion.fuse): the factor applied to each parent's scores, and what
    # ranked the units it kept.
    scales: list[float]
    ranked_by: str

    def __init__(self, name: str, arch: Arch, class_names: list[str], input_shape: tuple[int, int, int],
                 per_class: int | None = None):
        super().__init__()
        self.model_name = name
        self.arch = arch
        self.class_names = [str(c) for c in class_names]
        self.input_shape = tuple(int(v) for v in input_shape)
        self.per_class = int(per_class or arch.per_class)
        channels = len(coding.DOG)
        self.conv1 = nn.Parameter(torch.zeros(arch.maps1, channels, arch.kernel1, arch.kernel1))
        self.conv2 = nn.Parameter(torch.zeros(arch.maps2, arch.maps1, arch.kernel2, arch.kernel2))
        self.head = nn.Parameter(torch.zeros(self.per_class * len(self.class_names), arch.maps2, arch.kernel3,
                                             arch.kernel3))
        self.register_buffer("bank", coding.dog_bank(coding.padded_size()), persistent=False)
        self.trainable = {"conv1": True, "conv2": True, "head": True}
        self.new_head = True

    # -- bookkeeping ------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.conv1.device

    def synapses(self, block: str) -> nn.Parameter:
        return {"conv1": self.conv1, "conv2": self.conv2, "head": self.head}[block]

    def fan_in(self, block: str) -> int:
        w = self.synapses(block)
        return int(w[0].numel())

    # -- inference: the last step only ------------------------------------------------------------

    @torch.no_grad()
    def block_spikes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """conv1's and conv2's pooled spikes at the last step, (N, C, H, W) each: conv2's is conv3's input before
        its padding."""
        a = self.arch
        s = layers.pad_spikes(coding.final_spikes(images, self.bank, a.timesteps), a.pad0)
        s1 = layers.pool_spikes((layers.conv_final(s, self.conv1) > a.threshold1).to(torch.float32), a.pool1)
        s2 = layers.pool_spikes((layers.conv_final(layers.pad_spikes(s1, a.pad1), self.conv2) > a.threshold2)
                                .to(torch.float32), a.pool2)
        return s1, s2

    @torch.no_grad()
    def hidden_spikes(self, images: torch.Tensor) -> torch.Tensor:
        """conv2's pooled spikes at the last step: conv3's input before its padding."""
        return self.block_spikes(images)[1]

    def head_potentials(self, hidden: torch.Tensor) -> torch.Tensor:
        """conv3's exact potentials at the last step (N, neurons, h, w), float64, from ``hidden_spikes``."""
        return layers.conv_head(layers.pad_spikes(hidden, self.arch.pad2), self.head)

    @torch.no_grad()
    def final_potentials(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_potentials(self.hidden_spikes(images))

    def decide(self, pot3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SpykeTorch's decision from conv3's final potentials: ``(per-neuron-position scores, winner)``.

        Every neuron with a positive potential fires at the last step; the winner is the one with the largest
        ``p + v`` in float32, ``v`` = 15 x the largest potential (``get_k_winners``: earliest spike, then the
        largest potential), the first in (neuron, y, x) order on ties. The scores returned are ``(p + v) - v``:
        the potential on the grid that comparison sees, 0 where silent. ``winner`` is the flat (neuron, y, x)
        index, -1 for a silent image (no decision).
        """
        p = pot3.flatten(1).to(torch.float32)
        v = p.amax(dim=1, keepdim=True).clamp_min(0) * float(self.arch.timesteps)
        score = torch.where(p > 0, (p + v) - v, torch.zeros_like(p))
        # (p + v) - v is exact (Sterbenz) and order-preserving, so the first maximum of the scores is the first
        # maximum of p + v.
        top, winner = score.max(dim=1)
        return score.view(pot3.shape), torch.where(top > 0, winner, torch.full_like(winner, -1))

    def class_scores(self, pot3: torch.Tensor) -> torch.Tensor:
        """Per class, the largest decision score among its neurons and positions: the logits (a silent image's
        are all 0). Their argmax (the first class on ties) is the class of ``decide``'s winner."""
        best = self.decide(pot3)[0].flatten(2).amax(dim=2)
        return best.view(best.shape[0], self.num_classes, self.per_class).amax(dim=2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_scores(self.final_potentials(images))

    # -- learning ---------------------------------------------------------------------------------

    @torch.no_grad()
    def block_input(self, block: str, images: torch.Tensor) -> torch.Tensor:
        """Firing steps of the spikes ``block`` receives while it learns, padded as it reads them (the layers
        below do not learn)."""
        a = self.arch
        times = layers.pad_times(coding.encode(images, self.bank, a.timesteps), a.pad0, a.timesteps)
        if block == "conv2":
            times = layers.pad_times(self.conv1_output(times), a.pad1, a.timesteps)
        return times

    @torch.no_grad()
    def conv1_output(self, times: torch.Tensor) -> torch.Tensor:
        """conv1's pooled firing steps for its (padded) input firing steps, without inhibition."""
        a = self.arch
        return layers.pool_times(race.firing_steps(times, self.conv1, a.threshold1, a.timesteps), a.pool1,
                                 a.timesteps)

    @torch.no_grad()
    def stdp_step(self, block: str, images: torch.Tensor, rates: tuple[float, float]) -> None:
        """One batch of unsupervised STDP on ``conv1`` or ``conv2``."""
        self.learn(block, self.block_input(block, images), rates)

    @torch.no_grad()
    def learn(self, block: str, times: torch.Tensor, rates: tuple[float, float]) -> None:
        """STDP on ``block`` from the firing steps of its input (see ``block_input``)."""
        a = self.arch
        weight = self.synapses(block)
        threshold, k, radius = a.competition(block)
        step, value, best = race.front(times, weight, threshold, a.timesteps, k, radius)
        score = competition.priority(step, value, a.timesteps, self.fan_in(block))
        winners = competition.pick(score, best, weight.shape[0], k, radius)
        _, y, x, _ = winners
        out_times = step.flatten(1).gather(1, y * step.shape[2] + x).long()
        before = weight.data.clone()
        plasticity.update(weight.data, times, winners, out_times,
                          plasticity.Rule(*rates, stabilise=True, bounds=plasticity.STDP_BOUNDS))
        weight.data.copy_(layers.snap(weight.data, before))

    @torch.no_grad()
    def snap(self) -> None:
        """conv1-conv2's synapses onto their grids (see ``layers``): after initialising or loading them."""
        for block in ("conv1", "conv2"):
            w = self.synapses(block)
            w.data.copy_(layers.snap(w.data))

    @torch.no_grad()
    def rstdp_step(self, images: torch.Tensor, labels: torch.Tensor, scales: tuple[float, float]) -> torch.Tensor:
        """One batch of R-STDP on conv3; returns the logits it decided with (before the update)."""
        return self.rstdp_from(self.hidden_spikes(images), labels, scales)[0]

    @torch.no_grad()
    def rstdp_from(self, spikes: torch.Tensor, labels: torch.Tensor,
                   scales: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """R-STDP from conv3's input spikes at the last step (see ``hidden_spikes``); returns the logits and
        the decided class per image (-1: silent, neither rewarded nor punished).

        The decision neuron fires at the last step, so its inputs that fired at all are the ones that
        spiked no later than it: reward potentiates them, punishment depresses them. ``scales``: the factors of
        the reward's and the punishment's rates (see ``train``).
        """
        steps = self.arch.timesteps
        pot = self.head_potentials(spikes)
        spikes = layers.pad_spikes(spikes, self.arch.pad2)
        n, _, h, w = pot.shape
        score, winner = self.decide(pot)
        fired = winner >= 0
        index = winner.clamp_min(0)
        maps, rest = index // (h * w), index % (h * w)
        decided = torch.where(fired, maps // self.per_class, torch.full_like(maps, -1))
        hit = decided == labels
        reward, punish = scales
        a_plus = torch.where(hit, plasticity.REWARD[0] * reward, plasticity.PUNISHMENT[0] * punish)
        a_minus = torch.where(hit, plasticity.REWARD[1] * reward, plasticity.PUNISHMENT[1] * punish)
        times_in = torch.where(spikes > 0, torch.zeros_like(spikes), torch.full_like(spikes, steps))
        winners = (maps[:, None], (rest // w)[:, None], (rest % w)[:, None], fired[:, None])
        out_times = torch.full((n, 1), steps - 1, device=pot.device)
        plasticity.update(self.head.data, times_in, winners, out_times,
                          plasticity.Rule(a_plus[:, None], a_minus[:, None], False, plasticity.RSTDP_BOUNDS))
        best = score.flatten(2).amax(dim=2)
        return best.view(n, self.num_classes, self.per_class).amax(dim=2), decided
