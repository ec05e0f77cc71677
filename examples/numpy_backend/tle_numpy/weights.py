"""weights.npz: one array per parameter, named ``<layer>.W`` / ``<layer>.b``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tle.contract.records import ResolvedWeights
from tle.errors import UserError
from tle_numpy.model import HEAD, Net

FILENAME = "weights.npz"


def save(net: Net, directory: str | Path) -> Path:
    path = Path(directory) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{layer.name}.{k}": getattr(layer, k) for layer in net.layers for k in ("W", "b")})
    return path


def load(net: Net, weights: ResolvedWeights, class_names: list[str] | None) -> None:
    """Copy the backbone from ``weights.path``, and the head when it was trained on the same classes."""
    path = Path(weights.path)
    if path.is_dir():
        path = path / FILENAME
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read weights file {path}: {exc}",
                        f"give a {FILENAME} written by the numpy backend's save_weights") from None

    def target(layer):
        return ((f"{layer.name}.{k}", getattr(layer, k)) for k in ("W", "b"))

    backbone = [pair for layer in net.layers if layer.block != HEAD for pair in target(layer)]
    head = [pair for layer in net.layers if layer.block == HEAD for pair in target(layer)]
    for name, param in backbone:  # check everything before changing anything
        if name not in arrays:
            raise UserError(f"weights file {path} has no layer {name} for {net.model}",
                            f"it was saved from another model; use weights of a {net.model} run")
        if arrays[name].shape != param.shape:
            raise UserError(f"layer {name} in {path} has shape {arrays[name].shape}, but {net.model} on "
                            f"{net.input_shape} inputs needs {param.shape}",
                            "use the image size, channels and model of the run that saved the weights")
    # The core's rule (a head only for the classes, in the order, it was trained on); the shapes are ours to check.
    if weights.keeps_head(class_names) and all(name in arrays and arrays[name].shape == param.shape for name, param in head):
        backbone += head
    for name, param in backbone:
        param[...] = arrays[name]
