"""The seeded, stratified split: indices depend only on labels, sizes and seed.

Per class (in label order) one permutation from ``np.random.default_rng(seed)``
is cut into ``test``, then ``val``, then ``train``; each split is then shuffled
once more by the same generator so it does not arrive grouped by class.
Sizes are per class: an int is a count, a float a rounded fraction of the
class, ``None`` the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tle.errors import UserError

Size = int | float | None


@dataclass(frozen=True)
class SplitRule:
    """How much of each class goes to ``train``, ``val`` and ``test`` (an int a count, a float a fraction, None the
    rest), drawn from ``seed``; ``max_per_class`` first keeps that many (seeded) samples of each class;
    ``class_names`` name the classes in the messages."""

    train: Size
    val: Size
    test: Size
    seed: int
    max_per_class: int | None = None
    class_names: Sequence[str] | None = None


def stratified_split(labels: np.ndarray, **sizes: Any) -> dict[str, np.ndarray]:
    """Return ``{"train", "val", "test"}`` -> int64 positions into ``labels``.

    ``sizes`` are :class:`SplitRule`'s fields (``train``, ``val``, ``test``,
    ``seed``, ``max_per_class``, ``class_names``): this is the split of a
    source whose only given split is everything. ``max_per_class`` first keeps
    that many (seeded) samples of each class; fractions apply to what is kept.
    """
    return split_given(labels, {"train": np.arange(len(labels), dtype=np.int64)}, SplitRule(**sizes))


def split_given(labels: np.ndarray, given: dict[str, np.ndarray], rule: SplitRule) -> dict[str, np.ndarray]:
    """Split a source that already defines some splits (``given`` always holds ``train``).

    Missing ``val``/``test`` are cut from the given train split as above. A
    given val/test split is kept whole unless its size is an int count (a
    fraction of an already-held-out split means nothing); ``max_per_class``
    caps each given split separately.
    """
    train, seed, max_per_class, class_names = rule.train, rule.seed, rule.max_per_class, rule.class_names
    base = given["train"]
    sizes = {"train": train, "val": rule.val, "test": rule.test}
    plan = [(s, sizes[s]) for s in ("test", "val") if s not in given] + [("train", train)]
    out = {s: base[i] for s, i in _per_class(labels[base], plan, seed, max_per_class, class_names).items()}
    for s in ("val", "test"):
        if s in given:
            size = sizes[s] if isinstance(sizes[s], int) else None
            picked = _per_class(labels[given[s]], ((s, size),), seed, max_per_class, class_names)
            out[s] = given[s][picked[s]]
    return out


def _per_class(labels, plan, seed, max_per_class, class_names) -> dict[str, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_classes + 1))
    parts: dict[str, list[np.ndarray]] = {name: [] for name, _ in plan}
    for k in range(n_classes):
        members = order[bounds[k] : bounds[k + 1]]
        members = members[rng.permutation(len(members))][:max_per_class]
        n = len(members)
        counts = [_count(size, n) for _, size in plan]
        fixed = sum(c for c in counts if c is not None)
        if fixed > n:
            name = class_names[k] if class_names is not None else str(k)
            asked = " + ".join(f"{s}={c}" for (s, _), c in zip(plan, counts) if c is not None)
            raise UserError(
                f"class {name!r} has {n} images but {asked} = {fixed} per class are requested",
                "lower dataset.train/val/test, use fractions, or add images",
            )
        start = 0
        for (split, _), c in zip(plan, counts):
            stop = n if c is None else start + c
            parts[split].append(members[start:stop])
            start = stop
    return {s: rng.permutation(np.concatenate(p) if p else np.empty(0, np.int64)) for s, p in parts.items()}


def _count(size: Size, n: int) -> int | None:
    if size is None:
        return None
    if isinstance(size, float):
        return int(np.floor(size * n + 0.5))  # half up: Python's round() would round half to even
    return int(size)
