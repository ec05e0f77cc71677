"""One factor per parent run, chosen on the parents' validation splits, that puts their scores on one scale.

Bagging and the fused model compare the parents' scores image by image. When
the parents read the same features (S2's nets share conv1-conv2) the margin
between the best score of one parent and of the other is about 1 % of the
scores themselves (digits 0-4 / 5-9 and digits -> printed letters, README,
S2), so any factor a few percent off hands every image to one parent. A
factor from the weights alone (the mean synapse) is right when the two tasks'
images look alike and 8-10 % off when they do not. The factor here is
measured instead: on each parent's validation images (held out from its
training, never a test image), bagging with parent ``i``'s scores multiplied
by ``factors[i]``; the factors kept are those under which the task served
worst keeps the largest share of what its own run knows above chance there
(ties: the best mean share, then the middle of the grid points that tie).
Parent 0 keeps factor 1; the others are searched on a log grid one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tle.errors import UserError
from tle.studies.vote import bagging_accuracy, named_accuracy

RANGE = 2.0  # factors searched in [1/RANGE, RANGE]
POINTS = 601  # log-spaced: steps of 0.23 %, a fifth of the margins measured between spiking nets
ROUNDS = 2  # coordinate passes over parents 1..n-1 (one suffices for two)


@dataclass
class Calibration:
    factors: list[float]
    shares: list[float]  # per task, the share of its own run's accuracy above chance that bagging keeps on val
    bagging: list[float]  # per task, bagging's validation accuracy under ``factors``


def calibrate(logits: list[list[np.ndarray]], names: list[list[str]], classes: list[str],
              truths: list[list[str]]) -> Calibration:
    """``logits[i][t]``: parent i's scores on task t's validation images; ``truths[t]``: their labels as the
    fusion names them; bagging is the vote the fusion scores (:func:`tle.studies.vote.bagging_accuracy`)."""
    n = len(logits)
    empty = [i for i, t in enumerate(truths) if not len(t)]
    if empty:
        raise UserError(f"--normalise validation needs validation images, the run of task {empty[0] + 1} has none",
                        "fuse runs trained with a validation split (dataset.val > 0), or pass --normalise "
                        "weights|none")
    chance = [1 / len(set(n_)) for n_ in names]
    own = [named_accuracy(logits[t][t], names[t], truths[t]) for t in range(n)]

    def measure(factors):
        acc = bagging_accuracy(logits, factors, names, classes, truths)
        shares = [(a - c) / (o - c) if o > c else 1.0 for a, c, o in zip(acc, chance, own)]
        return shares, acc

    factors = [1.0] * n
    grid = np.exp(np.linspace(-np.log(RANGE), np.log(RANGE), POINTS))
    for _ in range(ROUNDS if n > 2 else 1):
        for i in range(1, n):
            keys = []
            for f in grid:
                shares, _ = measure(factors[:i] + [float(f)] + factors[i + 1:])
                keys.append((round(min(shares), 9), round(float(np.mean(shares)), 9)))
            best = max(keys)
            tied = [k for k, key in enumerate(keys) if key == best]
            factors[i] = float(grid[tied[len(tied) // 2]])
    shares, acc = measure(factors)
    return Calibration(factors, shares, acc)
