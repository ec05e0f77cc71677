"""Frozen-prefix caching: run frozen blocks 1..K once per stage, then train blocks K+1.. on their outputs.

Frozen blocks hold no dropout and their BatchNorm layers run in inference
mode, so their outputs are the same every epoch; computing them once turns
S1's feature extractor and S3's stage 1 into head-only training. Skipped when
the data is augmented or when the features would exceed ``TLE_KERAS_CACHE_GB``
(default 4 GiB of host memory).
"""

from __future__ import annotations

import os
import warnings

import numpy as np


def budget_bytes() -> int:
    return int(float(os.environ.get("TLE_KERAS_CACHE_GB", "4")) * 2**30)


def frozen_features(knet, arrays, k: int, batch_size: int, track=None) -> list[np.ndarray] | None:
    """Outputs of blocks 1..k for each NHWC array in ``arrays``, or None when over budget."""
    total = sum(len(a) for a in arrays)
    if total == 0:
        return None
    prefix = knet.prefix_model(k)
    per_sample = int(np.prod(prefix.output.shape[1:])) * 4
    if per_sample * total > budget_bytes():
        warnings.warn(f"frozen-prefix cache would take {per_sample * total / 2**30:.1f} GiB "
                      "(> TLE_KERAS_CACHE_GB); running the frozen blocks every epoch instead", stacklevel=2)
        return None
    track = track or (lambda it, total, description: it)
    run = knet.inference(k)  # prefix(x, training=False), traced once per model and k
    out = []
    for name, a in zip(("train", "val", "test"), arrays):
        starts = range(0, len(a), batch_size)
        parts = [np.asarray(run(np.ascontiguousarray(a[i:i + batch_size], dtype=np.float32)), dtype=np.float32)
                 for i in track(starts, len(starts), f"caching blocks 1-{k} ({name})")]
        out.append(np.concatenate(parts) if parts else np.zeros((0, *prefix.output.shape[1:]), np.float32))
    return out
