"""The names a sweep's axes are read by: the seed axis (averaged over), the pretraining cells, column titles."""

from __future__ import annotations

PRETRAIN = "pretrain"
SEED_AXIS = "train.seed"


def short(key: str) -> str:
    """A column title for an axis key."""
    return {"dataset.source": "dataset", "train.seed": "seed"}.get(key, key)
