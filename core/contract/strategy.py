"""Strategy grammar and the per-stage plan it expands to, for any backbone.

A backbone is an ordered list of named blocks (``block1``..``blockN``; spiking
nets use ``conv1``..). Grammar::

    scratch                      every block from --init, all trainable
    feature-extractor | freeze   pretrained backbone frozen, new head trained
    finetune:BLOCK               stage 0 = feature-extractor; stage 1 unfreezes
                                 BLOCK..end at finetune_lr for finetune_epochs
    transfer:BLOCK               blocks 1..BLOCK pretrained, the rest from
                                 --init, all trainable
    transfer:all                 every block pretrained, all trainable
    surgical:BLOCK               stage 0 = feature-extractor; stage 1 trains
                                 BLOCK alone (and the head) at finetune_lr for
                                 finetune_epochs (Lee et al., ICLR 2023)
    gradual[:BLOCK]              stage 0 = feature-extractor; stage k unfreezes
                                 the k-th block from the top, the blocks above
                                 it still training, down to BLOCK (default the
                                 first), gradual_epochs each at finetune_lr
                                 (ULMFiT's gradual unfreezing)
    lp-ft                        stage 0 = linear probe (feature-extractor);
                                 stage 1 trains every block from the probe's
                                 head at finetune_lr for finetune_epochs
                                 (Kumar et al., ICLR 2022)

The head (``head``) is always new and always trainable. ``lp-ft`` is exactly
``finetune:`` of the model's first block, whatever that block is called: the
same stages, rates and epochs (it is Kumar et al.'s LP-FT when the head is
linear, ``head.kind: linear``; with the default dense head the probe is a
two-layer MLP). ``surgical`` of the top block is ``finetune`` of the top block.

Normalisation statistics (BatchNorm's running mean and variance) follow
``batchnorm``: ``frozen`` keeps those of every block that starts pretrained
fixed (inference mode) in every stage, while its gamma/beta train when the
block does, as the Keras transfer-learning guide prescribes; ``train``
re-estimates them on the new data whenever the block trains (PyTorch's
fine-tuning tutorial). Frozen blocks and re-initialised ones are the same in
both modes: the first keep their statistics, the second learn them.

How the trainable parameters of each stage train beyond that (per-block rate
factors, which parameters of a block, L2-SP, the per-epoch schedule) is
:mod:`tle.contract.tuning`'s; :func:`build_plan` writes it into each stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Mapping

from tle.errors import UserError
from tle.contract.tuning import L2SP, PARAMS, Schedule, decay_factors

HEAD = "head"
KINDS = ("scratch", "feature-extractor", "finetune", "transfer", "surgical", "gradual", "lp-ft")
_ALIASES = {"freeze": "feature-extractor", "feature_extractor": "feature-extractor",
            "fine-tune": "finetune", "fine_tune": "finetune", "lpft": "lp-ft", "lp_ft": "lp-ft"}
_BLOCK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GRAMMAR = ("scratch, feature-extractor (freeze), finetune:BLOCK, transfer:BLOCK, transfer:all, surgical:BLOCK, "
           "gradual[:BLOCK], lp-ft")
BATCHNORM = ("frozen", "train")
_NO_BLOCK = ("scratch", "feature-extractor", "lp-ft")
_OPTIONAL_BLOCK = ("gradual",)


@dataclass(frozen=True)
class Strategy:
    kind: str
    block: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.block}" if self.block else self.kind

    @property
    def needs_pretrained(self) -> bool:
        return self.kind != "scratch"


def parse_strategy(text: str) -> Strategy:
    """Parse the grammar; raises ValueError (pydantic turns it into a field error)."""
    head, sep, arg = text.strip().partition(":")
    kind = _ALIASES.get(head.lower(), head.lower())
    if kind not in KINDS:
        raise ValueError(f"unknown strategy {text!r}; use one of: {GRAMMAR}")
    if kind in _NO_BLOCK:
        if sep:
            raise ValueError(f"strategy {kind!r} takes no block")
        return Strategy(kind)
    if kind in _OPTIONAL_BLOCK and not sep:
        return Strategy(kind)
    if not arg or not _BLOCK.match(arg):
        raise ValueError(f"strategy {kind!r} needs a block, e.g. {kind}:block5")
    if arg == "all" and kind != "transfer":
        raise ValueError("'all' is only valid with transfer")
    return Strategy(kind, arg)


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    trainable: dict[str, bool]  # every block and HEAD
    epochs: int
    lr: float
    # Blocks whose normalisation statistics stay as they are in this stage (inference mode): every
    # frozen block, and with batchnorm "frozen" every block that starts pretrained.
    fixed_stats: tuple[str, ...] = ()
    # Each trainable block's (and the head's) learning rate as a factor of the stage's (train.lr_decay).
    lr_factors: Mapping[str, float] = field(default_factory=dict)
    params: str = "all"  # which parameters of a trainable block train (train.params); the head trains whole
    schedule: Schedule = Schedule()
    l2sp: L2SP | None = None

    @property
    def trainable_blocks(self) -> list[str]:
        return [b for b, on in self.trainable.items() if on]

    def factor(self, block: str) -> float:
        """``block``'s learning rate as a factor of the stage's (1 for the head)."""
        return float(self.lr_factors.get(block, 1.0))

    def rate(self, epoch: int) -> float:
        """The stage's (the head's) learning rate in epoch ``epoch`` (0-based) of the stage."""
        return self.lr * self.schedule.factor(epoch, self.epochs)

    def rates(self) -> tuple[float, ...]:
        return tuple(self.rate(e) for e in range(self.epochs))


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    blocks: tuple[str, ...]
    pretrained: tuple[str, ...]
    reinit: tuple[str, ...]  # blocks (and HEAD) the initialiser draws
    stages: tuple[Stage, ...]

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def frozen_prefix(self, stage: Stage) -> int:
        """How many leading blocks are frozen in ``stage`` (their outputs can be cached)."""
        n = 0
        for block in self.blocks:
            if stage.trainable[block]:
                break
            n += 1
        return n


@dataclass(frozen=True)
class Rates:
    """How long and how fast each stage trains: ``epochs`` at ``lr`` for the first stage, ``finetune_epochs`` at
    ``finetune_lr`` for a fine-tuning stage, ``gradual_epochs`` for each unfreezing stage of ``gradual``; each
    block at ``lr_decay``^(N−i) of its stage's rate, each epoch at ``schedule``'s factor of it (the spec's
    ``train`` fields of the same names; see :mod:`tle.contract.tuning`)."""

    epochs: int
    lr: float
    finetune_epochs: int = 2
    finetune_lr: float = 1e-5
    gradual_epochs: int = 1
    lr_decay: float = 1.0
    schedule: Schedule = Schedule()

    @classmethod
    def of(cls, train) -> Rates:
        """The rates of a :class:`tle.contract.spec.TrainSpec`."""
        return cls(train.epochs, train.lr, train.finetune_epochs, train.finetune_lr, train.gradual_epochs,
                   train.lr_decay, Schedule(train.schedule, train.warmup_epochs))


@dataclass(frozen=True)
class Tuning:
    """What trains within the trainable blocks, and how it is regularised (``train.params``, ``train.l2sp`` as
    ``(alpha, beta)``), and what their normalisation statistics do (``train.batchnorm``)."""

    params: str = "all"
    l2sp: tuple[float, float] | None = None
    batchnorm: str = "frozen"

    @classmethod
    def of(cls, train) -> Tuning:
        """The tuning of a :class:`tle.contract.spec.TrainSpec`."""
        l2sp = (train.l2sp.alpha, train.l2sp.beta) if train.l2sp is not None else None
        return cls(train.params, l2sp, train.batchnorm)


def build_plan(strategy: Strategy | str, blocks: list[str] | tuple[str, ...], rates: Rates,
               tuning: Tuning = Tuning(), *, model: str = "the model") -> Plan:
    strategy = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    epochs, lr, finetune_epochs, finetune_lr = rates.epochs, rates.lr, rates.finetune_epochs, rates.finetune_lr
    blocks = tuple(blocks)
    if strategy.block and strategy.block != "all" and strategy.block not in blocks:
        raise UserError(f"strategy {strategy} names block {strategy.block!r}, which {model} does not have",
                        f"its blocks are {', '.join(blocks)}")
    if tuning.batchnorm not in BATCHNORM:
        raise UserError(f"unknown batchnorm mode {tuning.batchnorm!r}", f"use one of {', '.join(BATCHNORM)}")
    if tuning.params not in PARAMS:
        raise UserError(f"unknown train.params {tuning.params!r}", f"use one of {', '.join(PARAMS)}")

    kind = strategy.kind
    if kind == "scratch":
        pretrained: tuple[str, ...] = ()
    elif kind == "transfer":
        pretrained = blocks[:len(blocks) if strategy.block == "all" else blocks.index(strategy.block) + 1]
    else:
        pretrained = blocks
    keep_stats = set(pretrained) if tuning.batchnorm == "frozen" else set()
    factors = {**decay_factors(blocks, rates.lr_decay), HEAD: 1.0}
    l2sp = L2SP(tuning.l2sp[0], tuning.l2sp[1], pretrained) if tuning.l2sp is not None else None

    def stage(index: int, name: str, trainable: set[str], n: int, rate: float) -> Stage:
        flags = {b: b in trainable for b in blocks}
        flags[HEAD] = True
        fixed = tuple(b for b in blocks if not flags[b] or b in keep_stats)
        return Stage(index, name, flags, n, rate, fixed, {b: f for b, f in factors.items() if flags[b]},
                     tuning.params, rates.schedule, l2sp)

    everything = set(blocks)
    rest = tuple(b for b in blocks if b not in pretrained) + (HEAD,)
    probe = stage(0, "head", set(), epochs, lr)
    if kind == "scratch":
        stages = (stage(0, "train", everything, epochs, lr),)
    elif kind == "feature-extractor":
        stages = (probe,)
    elif kind == "finetune":
        tail = set(blocks[blocks.index(strategy.block):])
        stages = (probe, stage(1, "finetune", tail, finetune_epochs, finetune_lr))
    elif kind == "lp-ft":
        stages = (stage(0, "probe", set(), epochs, lr), stage(1, "finetune", everything, finetune_epochs, finetune_lr))
    elif kind == "surgical":
        stages = (probe, stage(1, "surgical", {str(strategy.block)}, finetune_epochs, finetune_lr))
    elif kind == "gradual":
        lowest = blocks.index(strategy.block) if strategy.block else 0
        order = list(reversed(blocks[lowest:]))  # the top block first
        stages = (probe, *(stage(k, f"unfreeze-{b}", set(order[:k]), rates.gradual_epochs, finetune_lr)
                           for k, b in enumerate(order, start=1)))
    else:  # transfer
        stages = (stage(0, "train", everything, epochs, lr),)
    return Plan(strategy, blocks, pretrained, rest, stages)
