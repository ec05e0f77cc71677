"""``SpikingNet``: the three layers' synapses, the DoG bank, and the network's passes.

Parameters are plain tensors updated by the learning rules (no autograd);
``requires_grad`` only records which blocks the current stage may change, so
the core's parameter counts and freeze checks work as for any backend.

Three passes, one per use:

* ``stdp_step`` (conv1 or conv2 learning): full time resolution up to the
  learning layer, pointwise inhibition, k winners, STDP;
* ``rstdp_step`` (conv3 learning) and ``final_potentials`` (inference):
  the last step only — without inhibition, potentials at the last step are a
  function of the spikes at the last step, and the decision is the largest
  final potential.
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
    def hidden_spikes(self, images: torch.Tensor) -> torch.Tensor:
        """conv3's input spikes at the last step."""
        a = self.arch
        s = coding.final_spikes(images, self.bank)
        s = layers.pool_spikes((layers.conv_final(s, self.conv1) >= a.threshold1).to(torch.float32), a.pool1)
        return layers.pool_spikes((layers.conv_final(s, self.conv2) >= a.threshold2).to(torch.float32), a.pool2)

    @torch.no_grad()
    def final_potentials(self, images: torch.Tensor) -> torch.Tensor:
        """conv3's potentials at the last step: (N, neurons, h, w)."""
        return layers.conv_final(self.hidden_spikes(images), self.head)

    def class_scores(self, pot3: torch.Tensor) -> torch.Tensor:
        """Per class, the largest final potential among its neurons (and positions): the logits."""
        best = pot3.flatten(2).amax(dim=2)
        return best.view(best.shape[0], self.num_classes, self.per_class).amax(dim=2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_scores(self.final_potentials(images))

    # -- learning ---------------------------------------------------------------------------------

    @torch.no_grad()
    def block_input(self, block: str, images: torch.Tensor) -> torch.Tensor:
        """Firing steps of the spikes ``block`` receives while it learns (the layers below do not learn)."""
        times = coding.encode(images, self.bank, self.arch.timesteps)
        if block == "conv2":
            times = self.conv1_output(times)
        return times

    @torch.no_grad()
    def conv1_output(self, times: torch.Tensor) -> torch.Tensor:
        """conv1's pooled firing steps for input firing steps, without inhibition."""
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
        plasticity.update(weight.data, times, winners, out_times, *rates, stabilise=True,
                          bounds=plasticity.STDP_BOUNDS)

    @torch.no_grad()
    def rstdp_step(self, images: torch.Tensor, labels: torch.Tensor, scales: tuple[float, float]) -> torch.Tensor:
        """One batch of R-STDP on conv3; returns the logits it decided with (before the update).

        The decision neuron fires at the last step, so its inputs that fired at all are the ones that
        spiked no later than it: reward potentiates them, punishment depresses them.
        """
        return self.rstdp_from(self.hidden_spikes(images), labels, scales)

    @torch.no_grad()
    def rstdp_from(self, spikes: torch.Tensor, labels: torch.Tensor, scales: tuple[float, float]) -> torch.Tensor:
        """R-STDP from conv3's input spikes at the last step (see ``hidden_spikes``)."""
        steps = self.arch.timesteps
        pot = layers.conv_final(spikes, self.head)
        n, _, h, w = pot.shape
        value, index = pot.flatten(1).max(dim=1)
        maps, rest = index // (h * w), index % (h * w)
        hit = (maps // self.per_class) == labels
        reward, punish = scales
        a_plus = torch.where(hit, plasticity.REWARD[0] * reward, plasticity.PUNISHMENT[0] * punish)
        a_minus = torch.where(hit, plasticity.REWARD[1] * reward, plasticity.PUNISHMENT[1] * punish)
        times_in = torch.where(spikes > 0, torch.zeros_like(spikes), torch.full_like(spikes, steps))
        winners = (maps[:, None], (rest // w)[:, None], (rest % w)[:, None], (value > 0)[:, None])
        out_times = torch.full((n, 1), steps - 1, device=pot.device)
        plasticity.update(self.head.data, times_in, winners, out_times, a_plus[:, None], a_minus[:, None],
                          stabilise=False, bounds=plasticity.RSTDP_BOUNDS)
        return self.class_scores(pot)
