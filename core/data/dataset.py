"""The split dataset every backend receives."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Images as float32 NHWC in [0, 1], labels as int64 in ``0..num_classes-1``.

    ``indices[split]`` are positions in the source's full, ordered sample list:
    they depend only on the source and the seed, so two backends (or two
    processes) given the same spec get the same images in the same order.
    """

    name: str
    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: int = 0  # unreadable or non-image files left out

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        height, width, channels = self.x_train.shape[1:]  # NHWC
        return int(height), int(width), int(channels)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in SPLITS:
            raise KeyError(name)
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def sizes(self) -> dict[str, int]:
        return {s: int(len(self.split(s)[1])) for s in SPLITS}

    def fingerprint(self) -> str:
        """Hash of the split indices and labels: equal across backends for one spec."""
        return fingerprint(self.indices, {s: self.split(s)[1] for s in SPLITS})


def fingerprint(indices: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for s in SPLITS:
        digest.update(np.asarray(indices.get(s, []), dtype=np.int64).tobytes())
        digest.update(np.asarray(labels.get(s, []), dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]
