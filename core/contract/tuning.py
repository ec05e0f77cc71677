"""How the trainable parameters of a stage train, beyond which blocks do: one meaning in every backend.

The numbers are computed here, in the core; a backend applies them (its optimiser's per-parameter rates, its
gradient) and lists what it applies in :attr:`tle.contract.records.BackendInfo.capabilities`. The core refuses a
spec that asks a backend for something it does not list, in one line, before any run exists.

``train.lr_decay`` γ (capability ``lr-factors``)
    layer-wise learning-rate decay (ULMFiT's discriminative rates, BEiT/timm's ``layer_decay``): in every stage,
    block i of the backbone's N blocks trains at the stage's rate × γ^(N−i), the head at the stage's rate. The
    top block therefore trains at the head's rate and block 1 at γ^(N−1) of it. γ = 1 (the default): one rate.

``train.params`` (capability ``param-select``)
    which parameters of a trainable block train: ``all``; ``bias``, the additive biases of its convolutions and
    dense layers (BitFit); ``norm``, the scale and shift of its normalisation layers (BatchNorm's gamma and beta;
    their running statistics follow ``train.batchnorm`` as always); ``bias+norm``, both. The head always trains
    whole. A backend with this capability counts each block's biases and normalisation parameters
    (:class:`tle.contract.records.BlockCount` ``bias``/``norm``), so the core checks the trainable set exactly.

``train.l2sp`` {alpha, beta} (capability ``l2sp``)
    L2-SP (Li et al., ICML 2018): the loss gains α/2·‖w − w⁰‖² over the parameters of blocks that start
    pretrained, w⁰ their values when the run started (what the model held before its first stage), and β/2·‖w‖²
    over the re-initialised blocks and the head. The backends add its gradient, α(w − w⁰) or βw, to each
    trainable parameter's gradient before the optimiser's step (so it is part of what Adam normalises, as torch's
    L2 ``weight_decay`` is), and nothing of it is in the model: the exported graph is the same. It replaces weight
    decay: a spec with both is refused. The logged ``train_loss`` stays the cross-entropy.

``train.schedule`` + ``train.warmup_epochs`` (capability ``schedule``)
    the rate of each epoch of a stage, as a factor of the stage's rate (and so of every block's): the first W
    epochs warm up linearly, epoch e < W at (e+1)/(W+1); the remaining T epochs, t = 0..T−1, at ``constant`` 1,
    ``cosine`` ½(1 + cos(πt/T)) (never 0: the last epoch is at ½(1 + cos(π(T−1)/T))), or ``step`` 0.1 from
    t = ⌈T/2⌉ and 0.01 from ⌈3T/4⌉ (the two milestones of the classic CIFAR schedule; equal milestones count
    once). The rate changes at each epoch's start and is the same for every batch of it; backends report it as
    the epoch metric ``lr`` (the head's rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PARAMS = ("all", "bias", "norm", "bias+norm")
SCHEDULES = ("constant", "cosine", "step")
STEP_FACTOR = 0.1
STEP_AT = (0.5, 0.75)

# What a backend lists in BackendInfo.capabilities for each field it applies.
LR_FACTORS = "lr-factors"
PARAM_SELECT = "param-select"
L2SP_CAPABILITY = "l2sp"
SCHEDULE = "schedule"


@dataclass(frozen=True)
class Schedule:
    """The per-epoch factor of a stage's learning rate (``train.schedule``, ``train.warmup_epochs``)."""

    kind: str = "constant"
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; use one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0:
            raise ValueError("warmup_epochs must be >= 0")

    def factor(self, epoch: int, epochs: int) -> float:
        """The factor of epoch ``epoch`` (0-based) of a stage of ``epochs`` epochs."""
        w = self.warmup_epochs
        if epoch < w:
            return (epoch + 1) / (w + 1)
        t, total = epoch - w, max(1, epochs - w)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / total))
        if self.kind == "step":
            milestones = {math.ceil(total * p) for p in STEP_AT}
            return STEP_FACTOR ** sum(t >= m for m in milestones)
        return 1.0

    def factors(self, epochs: int) -> tuple[float, ...]:
        return tuple(self.factor(e, epochs) for e in range(epochs))

    @property
    def constant(self) -> bool:
        return self.kind == "constant" and self.warmup_epochs == 0

    def __str__(self) -> str:
        return self.kind + (f", warm-up {self.warmup_epochs}" if self.warmup_epochs else "")


@dataclass(frozen=True)
class L2SP:
    """L2-SP's strengths and the blocks it pulls toward their starting weights (the ones that start pretrained);
    every other block, and the head, is pulled toward zero."""

    alpha: float
    beta: float
    pretrained: tuple[str, ...] = ()

    def pull(self, block: str) -> tuple[float, bool]:
        """``(strength, toward_start)`` of ``block``'s parameters: α toward w⁰, or β toward zero."""
        return (self.alpha, True) if block in self.pretrained else (self.beta, False)

    def describe(self, block: str) -> str:
        strength, toward_start = self.pull(block)
        return f"L2-SP α {strength:g} → w⁰" if toward_start else f"L2-SP β {strength:g} → 0"


def decay_factors(blocks: tuple[str, ...] | list[str], gamma: float) -> dict[str, float]:
    """``train.lr_decay``: block i of N (1-based, forward order) at γ^(N−i); the head is not among them (1)."""
    n = len(blocks)
    return {b: float(gamma) ** (n - i) for i, b in enumerate(blocks, start=1)}


def selected(total: int, bias: int, norm: int, params: str) -> int:
    """How many of a trainable block's parameters train under ``train.params``."""
    return {"all": total, "bias": bias, "norm": norm, "bias+norm": bias + norm}[params]


def needs(train) -> dict[str, str]:
    """The capabilities ``train`` (a :class:`tle.contract.spec.TrainSpec`) asks of a backend: capability -> what
    asked for it, in the user's words."""
    asked: dict[str, str] = {}
    if train.lr_decay != 1.0:
        asked[LR_FACTORS] = f"train.lr_decay {train.lr_decay:g}"
    if train.params != "all":
        asked[PARAM_SELECT] = f"train.params {train.params}"
    if train.l2sp is not None:
        asked[L2SP_CAPABILITY] = "train.l2sp"
    if train.schedule != "constant" or train.warmup_epochs:
        asked[SCHEDULE] = f"train.schedule {train.schedule}" + (
            f" with train.warmup_epochs {train.warmup_epochs}" if train.warmup_epochs else "")
    return asked
