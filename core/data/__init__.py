"""Framework-neutral data: sources, decoding/resizing and the seeded split."""

from tle.data.dataset import SPLITS, Dataset
from tle.data.images import IMAGE_SUFFIXES
from tle.data.load import load_dataset

__all__ = ["IMAGE_SUFFIXES", "SPLITS", "Dataset", "load_dataset"]
