"""Small helpers for this backend's tests and benchmarks: a digits Dataset and a recording TrainLoop.

The dataset is built here from scikit-learn's 8x8 digits rather than through
``tle.data`` so that the tests' numbers do not move when the core's sources do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle.data import Dataset
from tle.contract.loop import Checkpointing, Listeners, TrainLoop


def digits_dataset(classes=range(10), size: int = 32, seed: int = 0, val: float = 0.2, test: float = 0.2,
                   channels: int = 1) -> Dataset:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = list(classes)
    keep = np.isin(digits.target, classes)
    images = digits.images[keep].astype(np.float32) / 16.0
    labels = np.searchsorted(classes, digits.target[keep]).astype(np.int64)
    if size != 8:
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
    images = np.clip(images, 0.0, 1.0)[..., None].astype(np.float32)
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = round(test * len(idx)), round(val * len(idx))
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test:n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val:].tolist()
    split = {k: rng.permutation(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}
    return Dataset(name=f"digits:{','.join(map(str, classes))}", class_names=[str(c) for c in classes],
                   x_train=np.ascontiguousarray(images[split["train"]]), y_train=labels[split["train"]],
                   x_val=np.ascontiguousarray(images[split["val"]]), y_val=labels[split["val"]],
                   x_test=np.ascontiguousarray(images[split["test"]]), y_test=labels[split["test"]],
                   indices=split)


def recording_loop(stage, start_epoch: int = 0, checkpoint_path: Path | None = None,
                   resume_from: Path | None = None, patience: int | None = None) -> tuple[TrainLoop, list]:
    """The core's real TrainLoop without progress display; the list receives each EpochRecord."""
    records: list = []
    loop = TrainLoop(stage, patience=patience, listeners=Listeners(on_epoch=records.append),
                     checkpointing=Checkpointing(checkpoint_path, resume_from, start_epoch))
    return loop, records
