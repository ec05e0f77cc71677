"""Strategy grammar and the per-stage plan it expands to, for any backbone.

A backbone is an ordered list of named blocks (``block1``..``blockN``; spiking
nets use ``conv1``..). Grammar::

    scratch                      every block from --init, all trainable
    feature-extractor | freeze   pretrained backbone frozen, new head trained
    finetune:BLOCK               stage 1 = feature-extractor; stage 2 unfreezes
                                 BLOCK..end at finetune_lr for finetune_epochs
    transfer:BLOCK               blocks 1..BLOCK pretrained, the rest from
                                 --init, all trainable
    transfer:all                 every block pretrained, all trainable

The head (``head``) is always new and always trainable.

Normalisation statistics (BatchNorm's running mean and variance) follow
``batchnorm``: ``frozen`` keeps those of every block that starts pretrained
fixed (inference mode) in every stage, while its gamma/beta train when the
block does, as the Keras transfer-learning guide prescribes; ``train``
re-estimates them on the new data whenever the block trains (PyTorch's
fine-tuning tutorial). Frozen blocks and re-initialised ones are the same in
both modes: the first keep their statistics, the second learn them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tle.errors import UserError

HEAD = "head"
KINDS = ("scratch", "feature-extractor", "finetune", "transfer")
_ALIASES = {"freeze": "feature-extractor", "feature_extractor": "feature-extractor",
            "fine-tune": "finetune", "fine_tune": "finetune"}
_BLOCK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GRAMMAR = "scratch, feature-extractor (freeze), finetune:BLOCK, transfer:BLOCK, transfer:all"
BATCHNORM = ("frozen", "train")


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
    if kind in ("scratch", "feature-extractor"):
        if sep:
            raise ValueError(f"strategy {kind!r} takes no block")
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

    @property
    def trainable_blocks(self) -> list[str]:
        return [b for b, on in self.trainable.items() if on]


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
    ``finetune_lr`` for a fine-tuning stage (the spec's ``train`` fields of the same names)."""

    epochs: int
    lr: float
    finetune_epochs: int = 2
    finetune_lr: float = 1e-5


def build_plan(strategy: Strategy | str, blocks: list[str] | tuple[str, ...], rates: Rates, *,
               batchnorm: str = "frozen", model: str = "the model") -> Plan:
    strategy = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    epochs, lr, finetune_epochs, finetune_lr = rates.epochs, rates.lr, rates.finetune_epochs, rates.finetune_lr
    blocks = tuple(blocks)
    if strategy.block and strategy.block != "all" and strategy.block not in blocks:
        raise UserError(f"strategy {strategy} names block {strategy.block!r}, which {model} does not have",
                        f"its blocks are {', '.join(blocks)}")
    if batchnorm not in BATCHNORM:
        raise UserError(f"unknown batchnorm mode {batchnorm!r}", f"use one of {', '.join(BATCHNORM)}")

    kind = strategy.kind
    if kind == "scratch":
        pretrained: tuple[str, ...] = ()
    elif kind == "transfer":
        pretrained = blocks[:len(blocks) if strategy.block == "all" else blocks.index(strategy.block) + 1]
    else:
        pretrained = blocks
    keep_stats = set(pretrained) if batchnorm == "frozen" else set()

    def stage(index: int, name: str, trainable: set[str], n: int, rate: float) -> Stage:
        flags = {b: b in trainable for b in blocks}
        flags[HEAD] = True
        fixed = tuple(b for b in blocks if not flags[b] or b in keep_stats)
        return Stage(index, name, flags, n, rate, fixed)

    everything = set(blocks)
    rest = tuple(b for b in blocks if b not in pretrained) + (HEAD,)
    if kind == "scratch":
        return Plan(strategy, blocks, pretrained, rest, (stage(0, "train", everything, epochs, lr),))
    if kind == "feature-extractor":
        return Plan(strategy, blocks, pretrained, rest, (stage(0, "head", set(), epochs, lr),))
    if kind == "finetune":
        tail = set(blocks[blocks.index(strategy.block):])
        stages = (stage(0, "head", set(), epochs, lr), stage(1, "finetune", tail, finetune_epochs, finetune_lr))
        return Plan(strategy, blocks, pretrained, rest, stages)
    return Plan(strategy, blocks, pretrained, rest, (stage(0, "train", everything, epochs, lr),))
