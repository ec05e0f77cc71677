"""Loading a dataset: the source the spec names (a built-in reader or a plugin's loader), capped, converted,
resized and split the same way for every backend (:func:`load_dataset`)."""

from __future__ import annotations

import numpy as np
from rich.progress import Progress

from tle.contract.records import ImageSet
from tle.contract.spec import DataSpec
from tle.data.dataset import SPLITS, Dataset, fingerprint
from tle.data.images import resize_batch, to_channels
from tle.data.plugin import LOADERS
from tle.data.sources import KNOWN, KNOWN_PREFIXES, Loader, Source, Unreadable, _progress, arrays
from tle.data.split import SplitRule, split_given, stratified_split
from tle.errors import UserError


def load_dataset(spec: DataSpec, seed: int, extra_sources: dict[str, Loader] | None = None,
                 progress: Progress | None = None) -> Dataset:
    """Load ``spec.source``, cap, convert, resize and split it.

    The split seed is ``spec.seed``, else ``seed``. ``Dataset.indices`` are
    positions in the source's list of readable samples. ``progress`` shows
    the decoding of image files.
    """
    _progress.set(progress)
    src = open_source(spec, extra_sources or {})
    keep = np.arange(len(src.labels))
    skipped = src.skipped
    while True:
        labels, idx = _split(src, spec, seed, keep)
        try:
            x = {s: _finish(src.fetch(keep[idx[s]]), spec) for s in SPLITS}
        except Unreadable as bad:
            # Rare (a header that reads but a body that does not): drop those files and split again.
            keep = np.setdiff1d(keep, bad.positions)
            skipped += len(bad.positions)
            continue
        break
    y = {s: labels[idx[s]] for s in SPLITS}
    return Dataset(
        name=spec.source,
        class_names=list(src.class_names),
        x_train=x["train"], y_train=y["train"],
        x_val=x["val"], y_val=y["val"],
        x_test=x["test"], y_test=y["test"],
        indices=idx,
        skipped=skipped,
    )


def split_fingerprint(spec: DataSpec, seed: int, extra_sources: dict[str, Loader] | None = None) -> str:
    """The fingerprint :func:`load_dataset` would give, without decoding an image (for resuming sweeps).

    Equal to ``load_dataset(...).fingerprint()`` unless a file's body turns out
    unreadable while its header read fine; then a sweep reruns that cell.
    """
    src = open_source(spec, extra_sources or {})
    labels, idx = _split(src, spec, seed, np.arange(len(src.labels)))
    return fingerprint(idx, {s: labels[idx[s]] for s in SPLITS})


def _split(src: Source, spec: DataSpec, seed: int, keep: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    seed = spec.seed if spec.seed is not None else seed
    sizes = {"train": spec.train, "val": spec.val, "test": spec.test}
    opts = {"seed": seed, "max_per_class": spec.max_per_class, "class_names": src.class_names}
    labels = src.labels[keep]
    if src.given:
        given = {s: np.searchsorted(keep, g[np.isin(g, keep)]) for s, g in src.given.items()}
        return labels, split_given(labels, given, SplitRule(**sizes, **opts))
    return labels, stratified_split(labels, **sizes, **opts)


def _finish(images: np.ndarray, spec: DataSpec) -> np.ndarray:
    # Both steps are linear per pixel, so their order changes nothing but the cost: run the
    # one that shrinks the data first.
    size = (spec.image_size, spec.image_size) if spec.image_size else (int(images.shape[1]), int(images.shape[2]))
    channels = spec.channels or {2: 1, 4: 3}.get(images.shape[-1], int(images.shape[-1]))  # drop alpha
    if channels >= images.shape[-1]:
        images = to_channels(resize_batch(images, size), channels)
    else:
        images = resize_batch(to_channels(images, channels), size)
    return np.ascontiguousarray(images, dtype=np.float32)


def loader_for(spec: DataSpec, extra: dict[str, Loader] | None) -> Loader:
    """The loader of ``spec.source``'s prefix (a plugin's, else a built-in one), without loading anything; one line
    when no loader has that prefix."""
    extra = {**LOADERS, **(extra or {})}
    prefix = spec.source.partition(":")[0]
    if prefix not in extra:
        known = ", ".join([*KNOWN, *(f"{p}:..." for p in sorted(extra) if p not in KNOWN_PREFIXES)])
        raise UserError(f"unknown dataset source {spec.source!r}", f"use one of {known}")
    return extra[prefix]


def open_source(spec: DataSpec, extra: dict[str, Loader] | None) -> Source:
    """The source ``spec.source`` names: a loader the plugins registered (``extra``) or a built-in one."""
    prefix, _, arg = spec.source.partition(":")
    loaded = loader_for(spec, extra)(arg, spec)
    if isinstance(loaded, Source):
        return loaded
    if isinstance(loaded, ImageSet):
        names = list(loaded.class_names) if loaded.class_names is not None else None
        return arrays([(None, loaded.images, loaded.labels)], names, f"dataset {spec.source}")
    raise UserError(f"the loader of dataset source {prefix!r} returned a {type(loaded).__name__}",
                    "a register_datasets loader returns tle.contract.records.ImageSet(images, labels, class_names)")
