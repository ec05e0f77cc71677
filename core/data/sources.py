"""Dataset sources: the built-in readers (digits, synthetic images, image folders, npz files, arrays).

A source yields labels for its full, ordered sample list plus a ``fetch``
that produces images for given positions, so only the images a split selects
are ever decoded, generated or converted to float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from tle.data.dataset import SPLITS
from tle.data.images import IMAGE_SUFFIXES, load_image, probe
from tle.errors import UserError
from tle.progress import track
from tle.contract.spec import DataSpec, SyntheticSpec

Loader = Callable[[str, DataSpec], object]  # returns a tle.contract.records.ImageSet or a Source
BUILTIN = ("mnist", "fashion_mnist", "cifar10", "cifar100", "emnist_letters")
KNOWN = ("digits[:CLASSES]", "synthetic", "folder:PATH", "npz:PATH", *(f"{b}[:CLASSES]" for b in BUILTIN))
KNOWN_PREFIXES = {"digits", "synthetic", "folder", "npz", *BUILTIN}
# The progress display of the load in flight; sources that decode files show their loop on it.
_progress: ContextVar[Progress | None] = ContextVar("tle_data_progress", default=None)


@dataclass
class Source:
    labels: np.ndarray  # int64, one per sample, in the source's fixed order
    class_names: list[str]
    fetch: Callable[[np.ndarray], np.ndarray]  # positions -> float32 NHWC in [0, 1]
    given: dict[str, np.ndarray] | None = None  # positions of splits the source defines itself
    skipped: int = 0


class Unreadable(Exception):
    """Files that passed the header check but failed to decode (source positions)."""

    def __init__(self, positions: list[int]):
        super().__init__(f"{len(positions)} unreadable files")
        self.positions = np.asarray(positions, dtype=np.int64)


# -- digits ---------------------------------------------------------------------


def digits(arg: str, what: str) -> Source:
    from sklearn.datasets import load_digits
    from sklearn.utils import Bunch

    bunch = load_digits()
    assert isinstance(bunch, Bunch)  # not the tuple of return_X_y=True
    images = bunch.images.astype(np.float32)[..., None] / 16.0
    src = Source(bunch.target.astype(np.int64), [str(d) for d in range(10)], lambda idx: images[idx])
    return select_classes(src, arg, what) if arg else src


def select_classes(src: Source, arg: str, what: str) -> Source:
    """The samples of the classes ``arg`` names (``0-4``, ``a-j``, ``0,3,7``: class names, else indices),
    relabelled 0..k-1 in the source's class order."""
    names = list(src.class_names)
    chosen = _chosen_classes(arg, names, what)
    keep = np.flatnonzero(np.isin(src.labels, chosen))
    labels = np.searchsorted(chosen, src.labels[keep]).astype(np.int64)
    given = None
    if src.given:
        given = {s: np.searchsorted(keep, g[np.isin(g, keep)]) for s, g in src.given.items()}
    return Source(labels, [names[i] for i in chosen], lambda idx: src.fetch(keep[idx]), given, src.skipped)


def _chosen_classes(arg: str, names: list[str], what: str) -> np.ndarray:
    def position(token: str) -> int | None:
        if token in names:
            return names.index(token)
        return int(token) if token.isdigit() and int(token) < len(names) else None

    chosen: set[int] = set()
    for part in arg.split(","):
        lo, dash, hi = part.strip().partition("-")
        a, b = position(lo.strip()), position((hi if dash else lo).strip())
        if a is None or b is None or a > b:
            chosen.clear()
            break
        chosen.update(range(a, b + 1))
    if len(chosen) < 2:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise UserError(f"bad classes {arg!r} in {what}",
                        f"name at least two classes by name or index, e.g. {what.partition(':')[0]}:0-4 "
                        f"(its classes: {shown})")
    return np.array(sorted(chosen), dtype=np.int64)


# -- synthetic ------------------------------------------------------------------


def synthetic(cfg: SyntheticSpec) -> Source:
    """Procedural images: per class a blob at its own place, stripes at its own angle, its own colour.

    Jitter, brightness and noise vary per image. The generator is seeded with 0
    and the synthetic spec only, so the images never change with the split or
    training seed; that seed only decides which image lands in which split.
    """
    k, per, s, c = cfg.classes, cfg.per_class, cfg.size, cfg.channels
    key = [0, k, per, s, c]
    rng = np.random.default_rng(key)
    centres = rng.uniform(0.25, 0.75, (k, 2))
    angles = rng.uniform(0.0, np.pi, k)
    colours = rng.uniform(0.3, 1.0, (k, c)).astype(np.float32)
    labels = np.repeat(np.arange(k, dtype=np.int64), per)
    jitter = rng.uniform(-0.06, 0.06, (k * per, 2))
    gain = rng.uniform(0.75, 1.0, k * per)
    yy, xx = (np.mgrid[0:s, 0:s] + 0.5) / s

    def fetch(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), s, s, c), dtype=np.float32)
        for j, i in enumerate(idx):
            y = labels[i]
            cy, cx = centres[y] + jitter[i]
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.15**2))
            stripes = 0.5 + 0.5 * np.cos(2 * np.pi * 3 * (xx * np.cos(angles[y]) + yy * np.sin(angles[y])))
            base = (gain[i] * (0.6 * blob + 0.4 * stripes)).astype(np.float32)
            noise = np.random.default_rng([*key, int(i)]).normal(0.0, 0.08, (s, s, c)).astype(np.float32)
            out[j] = np.clip(base[..., None] * colours[y] + noise, 0.0, 1.0)
        return out

    return Source(labels, [f"class{i}" for i in range(k)], fetch)


# -- folder ---------------------------------------------------------------------


def folder(arg: str, spec: DataSpec) -> Source:
    """One subfolder per class, optionally under ``train/``, ``val/``, ``test/``."""
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist", "give folder:PATH with one subfolder per class")
    layout = {s: root / s for s in SPLITS if _class_dirs(root / s)}
    parts = [(s, layout[s]) for s in SPLITS if s in layout] if "train" in layout else [(None, root)]
    class_names = [d.name for d in _class_dirs(parts[0][1])]
    if not class_names:
        raise UserError(f"{root} has no class subfolders", f"put each class's images in a folder, e.g. {root}/cat/")
    for _, d in parts[1:]:
        extra = sorted({p.name for p in _class_dirs(d)} - set(class_names))
        if extra:
            raise UserError(f"{d} has classes {extra} that {parts[0][1]} lacks", "use the same classes in every split")

    files: list[Path] = []
    labels: list[int] = []
    given: dict[str, np.ndarray] = {}
    skipped, colour, first_size = 0, False, None
    for split, d in parts:
        start = len(files)
        for k, name in enumerate(class_names):
            found = 0
            for path in sorted((d / name).rglob("*")) if (d / name).is_dir() else []:
                if path.name.startswith(".") or path.is_dir():
                    continue
                info = probe(path) if path.suffix.lower() in IMAGE_SUFFIXES else None
                if info is None:
                    skipped += 1
                    continue
                first_size = first_size or info[0]
                colour |= info[1]
                files.append(path)
                labels.append(k)
                found += 1
            if not found and split in (None, "train"):
                raise UserError(f"class folder {d / name} has no readable images", "add images to it or remove it")
        if split is not None:
            given[split] = np.arange(start, len(files))

    channels = spec.channels or (3 if colour else 1)
    assert first_size is not None  # every class folder of the training split holds an image (checked above)
    size = (spec.image_size, spec.image_size) if spec.image_size else first_size

    def fetch(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *size, channels), dtype=np.float32)
        bad = []
        for j, i in track(enumerate(idx), _progress.get(), len(idx), f"decoding {len(idx)} images"):
            try:
                out[j] = load_image(files[i], size, channels)
            except UserError:
                bad.append(int(i))
        if bad:
            raise Unreadable(bad)
        return out

    return Source(np.asarray(labels, dtype=np.int64), class_names, fetch, given or None, skipped)


def _class_dirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


# -- arrays: npz, built-in sets, plugin loaders -----------------------------------


def npz(arg: str) -> Source:
    path = Path(arg).expanduser()
    hint = "save arrays x and y (or x_train, y_train[, x_val, y_val, x_test, y_test]) with numpy.savez"
    if not path.is_file():
        raise UserError(f"npz file {path} does not exist", hint)
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile/pickle/format errors all mean the same to the user
        raise UserError(f"cannot read {path}: {exc}", hint) from None
    names = [str(n) for n in data["class_names"]] if "class_names" in data else None
    for x, y in (("x", "y"), ("images", "labels")):
        if x in data and y in data:
            return arrays([(None, data[x], data[y])], names, str(path))
    if "x_train" in data and "y_train" in data:
        parts = [(s, data[f"x_{s}"], data[f"y_{s}"]) for s in SPLITS if f"x_{s}" in data and f"y_{s}" in data]
        return arrays(parts, names, str(path))
    raise UserError(f"{path} holds {sorted(data)}, not the expected arrays", hint)


def arrays(parts: Sequence[tuple[str | None, np.ndarray, np.ndarray]], class_names: list[str] | None,
           what: str) -> Source:
    """A source over in-memory arrays: NHW or NHWC, uint8/int (0..255 or 0..65535) or float in [0, 1].

    ``parts`` are ``(split or None, images, labels)``; several parts may share a
    split (CIFAR-10's five batches), so nothing is concatenated.
    """
    xs = [np.asarray(x) for _, x, _ in parts]
    xs = [x[..., None] if x.ndim == 3 else x for x in xs]
    shapes = {x.shape[1:] for x in xs}
    if any(x.ndim != 4 for x in xs) or len(shapes) != 1 or next(iter(shapes))[-1] not in (1, 2, 3, 4):
        raise UserError(f"{what}: images must be N x H x W or N x H x W x C arrays of one shape, got {sorted(shapes)}",
                        "reshape them to NHWC")
    scales = {_scale(x, what) for x in xs}
    if len(scales) > 1:
        raise UserError(f"{what}: the splits' images use different value ranges", "store all as uint8 or all as floats")
    scale = scales.pop()
    ys = [np.asarray(y) for _, _, y in parts]
    if any(len(x) != len(y) for x, y in zip(xs, ys)):
        counts = f"{[len(x) for x in xs]} images but {[len(y) for y in ys]} labels"
        raise UserError(f"{what}: {counts}", "give one label per image")
    labels, class_names = _labels(np.concatenate([y.reshape(len(y), -1) for y in ys]), class_names, what)
    offsets = np.cumsum([0] + [len(x) for x in xs])
    given: dict[str, list[np.ndarray]] = {}
    for (split, _, _), a, b in zip(parts, offsets[:-1], offsets[1:]):
        if split is not None:
            given.setdefault(split, []).append(np.arange(a, b))

    def fetch(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *xs[0].shape[1:]), dtype=np.float32)
        part = np.searchsorted(offsets, idx, side="right") - 1
        for p, x in enumerate(xs):
            sel = part == p
            if sel.any():
                out[sel] = x[idx[sel] - offsets[p]]
        if scale != 1.0:
            out *= scale
        return out

    return Source(labels, class_names, fetch, {s: np.concatenate(v) for s, v in given.items()} or None)


def _scale(x: np.ndarray, what: str) -> float:
    if x.dtype == np.uint8:
        return 1 / 255
    if np.issubdtype(x.dtype, np.integer) and x.size:
        return 1 / 255 if x.max() <= 255 else 1 / 65535
    if np.issubdtype(x.dtype, np.floating) and x.size:
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise UserError(f"{what}: float images range over [{lo:g}, {hi:g}], not [0, 1]",
                            "divide by 255 or store them as uint8")
        return 1.0
    if x.size and not np.issubdtype(x.dtype, np.bool_):
        raise UserError(f"{what}: images of dtype {x.dtype} are not supported", "use uint8 or float32 in [0, 1]")
    return 1.0


def _labels(y: np.ndarray, class_names: list[str] | None, what: str) -> tuple[np.ndarray, list[str]]:
    """Labels 0..k-1 and their names, from class indices, arbitrary ints, strings or one-hot rows."""
    y = y.argmax(axis=1) if y.shape[1] > 1 else y[:, 0]
    if y.dtype.kind in "USO":
        y = y.astype(str)
        names = list(class_names) if class_names is not None else sorted(set(y.tolist()))
        lookup = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(y.tolist()) - lookup.keys())
        if unknown:
            raise UserError(f"{what}: labels {unknown[:5]} are not in class_names", "fix the labels or class_names")
        return np.array([lookup[v] for v in y.tolist()], dtype=np.int64), names
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise UserError(f"{what}: labels must be integers or strings", "store class indices 0..N-1")
    y = y.astype(np.int64)
    if class_names is None:
        # Arbitrary ids (say 3, 5, 9) become 0..k-1 named after the ids.
        values, labels = np.unique(y, return_inverse=True)
        return labels.astype(np.int64), [str(v) for v in values]
    if y.size and (y.min() < 0 or y.max() >= len(class_names)):
        raise UserError(f"{what}: labels must lie in 0..{len(class_names) - 1} for {len(class_names)} class names",
                        "fix the labels or class_names")
    return y, list(class_names)
