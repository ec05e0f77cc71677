"""Transfer metrics from two learning curves (Torrey & Shavlik's three effects, as in S0).

``run`` and ``base`` are validation-accuracy curves, one value per epoch; the
baseline is normally the ``scratch`` run of the same backend, model and data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TransferMetrics:
    jumpstart: float  # first-epoch gain
    asymptote_gain: float  # best-value gain
    threshold: float  # the accuracy both curves are timed to
    epochs_to_threshold: float  # of the run (inf if never)
    base_epochs_to_threshold: float
    speedup: float  # base epochs / run epochs to the threshold ("slope")
    auc_ratio: float  # mean accuracy over the common epochs, run / base

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def epochs_to(curve: list[float], threshold: float) -> float:
    return next((i + 1.0 for i, v in enumerate(curve) if v >= threshold), math.inf)


def transfer_metrics(run: list[float], base: list[float], fraction: float = 0.9) -> TransferMetrics:
    if not run or not base:
        raise ValueError("both learning curves need at least one epoch")
    threshold = fraction * max(max(run), max(base))
    mine, theirs = epochs_to(run, threshold), epochs_to(base, threshold)
    n = min(len(run), len(base))
    base_area = sum(base[:n])
    return TransferMetrics(
        jumpstart=run[0] - base[0],
        asymptote_gain=max(run) - max(base),
        threshold=threshold,
        epochs_to_threshold=mine,
        base_epochs_to_threshold=theirs,
        speedup=theirs / mine if math.isfinite(mine) else 0.0,
        auc_ratio=sum(run[:n]) / base_area if base_area else math.inf,
    )
