"""MNIST, Fashion-MNIST, CIFAR-10/100 and EMNIST letters from the Keras cache, without importing Keras.

Files live where ``keras.datasets`` keeps them (``$KERAS_HOME`` or
``~/.keras``, then ``datasets/``), so a set either library downloaded serves
both. When absent they are fetched from the URLs Keras uses; offline, the
error names the file to place and where to get it.

Keras has no EMNIST: its letters split (S2's second task) is read from the
four IDX files of NIST's ``gzip.zip`` placed in ``datasets/emnist/``, and
fetched from NIST's archive when they are not there.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from tle.data.sources import arrays
from tle.errors import UserError

KERAS_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CIFAR_BASE = "https://www.cs.toronto.edu/~kriz/"
EMNIST_ZIP = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_LETTERS = [chr(ord("a") + i) for i in range(26)]
FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def datasets_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "datasets"


def load_builtin(name: str):
    loader = {"mnist": _mnist, "fashion_mnist": _fashion, "cifar10": _cifar10, "cifar100": _cifar100,
              "emnist_letters": _emnist_letters}[name]
    parts, class_names = loader(datasets_dir())
    return arrays(parts, class_names, name)


def _mnist(root: Path):
    path = _download(root / "mnist.npz", KERAS_BASE + "mnist.npz", "mnist")
    with np.load(path, allow_pickle=False) as f:
        parts = [(s, f[f"x_{s}"], f[f"y_{s}"]) for s in ("train", "test")]
    return parts, [str(d) for d in range(10)]


def _fashion(root: Path):
    def read(stem: str, offset: int) -> np.ndarray:
        name = f"{stem}-ubyte.gz"
        path = _download(root / "fashion-mnist" / name, KERAS_BASE + name, "fashion_mnist")
        with gzip.open(path, "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    parts = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = read(f"{prefix}-labels-idx1", 8)
        parts.append((split, read(f"{prefix}-images-idx3", 16).reshape(len(labels), 28, 28), labels))
    return parts, FASHION_NAMES


def _emnist_letters(root: Path):
    names = [f"emnist-letters-{split}-{kind}-ubyte.gz" for split in ("train", "test")
             for kind in ("images-idx3", "labels-idx1")]
    # gzip.zip unpacked in place leaves its files in emnist/gzip/.
    folder = next((f for f in (root / "emnist", root / "emnist" / "gzip") if (f / names[0]).is_file()),
                  root / "emnist")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        archive = _download(folder / "gzip.zip", EMNIST_ZIP, "emnist_letters", hint_path=folder / missing[0])
        try:
            with zipfile.ZipFile(archive) as z:
                for n in missing:
                    with z.open(f"gzip/{n}") as src, open(folder / n, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise UserError(f"cannot extract the EMNIST letters files from {archive}: {exc}",
                            "delete it so that it is downloaded again") from None

    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(folder / name, "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    parts = []
    for split in ("train", "test"):
        labels = read(f"emnist-letters-{split}-labels-idx1-ubyte.gz", 8).astype(np.int64) - 1  # 1..26 on disk
        images = read(f"emnist-letters-{split}-images-idx3-ubyte.gz", 16).reshape(len(labels), 28, 28)
        # NIST stores each image transposed relative to MNIST.
        parts.append((split, np.ascontiguousarray(images.transpose(0, 2, 1)), labels))
    return parts, EMNIST_LETTERS


def _cifar10(root: Path):
    folder = _cifar_folder(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar10", "test_batch")
    parts = [("train", *_cifar_batch(folder / f"data_batch_{i}", b"labels")) for i in range(1, 6)]
    parts.append(("test", *_cifar_batch(folder / "test_batch", b"labels")))
    return parts, CIFAR10_NAMES


def _cifar100(root: Path):
    folder = _cifar_folder(root, "cifar-100-python", "cifar-100-python.tar.gz", "cifar100", "test")
    parts = [(s, *_cifar_batch(folder / s, b"fine_labels")) for s in ("train", "test")]
    meta = folder / "meta"
    names = [n.decode() for n in _unpickle(meta)[b"fine_label_names"]] if meta.is_file() else None
    return parts, names


def _cifar_folder(root: Path, inner: str, archive: str, name: str, probe: str) -> Path:
    # Keras 3 extracts into "<inner>-target/<inner>", Keras 2 into "<inner>".
    target = root / f"{inner}-target"
    for folder in (target / inner, root / inner):
        if (folder / probe).is_file():
            return folder
    tarball = _download(root / f"{inner}-target_archive", CIFAR_BASE + archive, name, hint_path=target / inner)
    try:
        with tarfile.open(tarball) as tar:
            try:
                tar.extractall(target, filter="data")
            except TypeError:  # Pythons before 3.10.12 lack extraction filters
                tar.extractall(target)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot extract {tarball}: {exc}", "delete it so that it is downloaded again") from None
    return target / inner


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(batch[label_key], dtype=np.int64)


class _Unpickler(pickle.Unpickler):
    # The CIFAR pickles hold dicts, lists and NumPy arrays; refuse anything else.
    # (_codecs.encode: how Python 3 writes array bytes into a protocol-2 pickle.)
    _allowed = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{mod}", fn) for core in ("core", "_core")
        for mod, fn in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))
    }

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _Unpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}", "delete the cached folder so that it is fetched again") from None


def _download(path: Path, url: str, name: str, hint_path: Path | None = None) -> Path:
    if path.is_file():
        return path
    part = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
        part.replace(path)
    except OSError as exc:  # URLError, HTTPError and timeouts are all OSErrors
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        where = f"extract it so that {hint_path} exists" if hint_path else f"save it as {path}"
        raise UserError(f"{name} is not cached at {hint_path or path} and cannot be downloaded ({reason})",
                        f"fetch {url} on a machine with internet access and {where}") from None
    return path
