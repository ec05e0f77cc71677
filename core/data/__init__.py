"""Framework-neutral data: sources, decoding/resizing and the seeded split."""

from tle.data.dataset import SPLITS, Dataset

__all__ = ["SPLITS", "Dataset"]
