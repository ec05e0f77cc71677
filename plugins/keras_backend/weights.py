"""Starting weights: ImageNet through keras.applications, a user's Keras file, or an earlier run's file.

* ``imagenet``: keras.applications loads its own file; this module first checks
  Keras's cache (``$KERAS_HOME`` or ``~/.keras``, then ``models/<file>``) so that
  offline an absent file is a :class:`tle.UserError` naming the file and its URL
  instead of a download traceback.
* files, read by layer name (Keras's layer names are stable, its weight-file
  paths are not): Keras's legacy HDF5 layout (``.h5``: keras.applications'
  files, ``model.save_weights`` of Keras 2, full ``model.save`` ``.h5``), a
  ``.keras`` model archive, and this backend's own ``save_weights`` output,
  which uses the legacy layout keyed by layer name plus ``tle.*`` attributes.
  Keras 3 ``.weights.h5`` files are keyed by object paths, not names: they are
  loaded with Keras's own loader into the backbone (same architecture only).
  A block is loaded whole or not at all; a shape mismatch names the layer.
  The head is kept only when the file's classes equal the new data's.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from tle import UserError
from tle.contract.records import same_classes
from tle_keras import registry

SAVED_NAME = "weights.h5"
BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
_V2_ROWS = (96, 128, 160, 192, 224)


# -- ImageNet -------------------------------------------------------------------


def imagenet_file(name: str, size: int = 224, top: bool = False) -> tuple[str, str]:
    """(file name in Keras's cache, URL) of keras.applications' ImageNet weights for ``name``."""
    fam = registry.family(name)
    name = registry.application(name)  # keras_vgg16 -> vgg16: Keras's own file names
    if fam in ("vgg", "resnet", "densenet"):
        folder = {"vgg": name, "resnet": "resnet", "densenet": "densenet"}[fam]
        fname = f"{name}_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5"
        return fname, f"{BASE}{folder}/{fname}"
    if name == "mobilenet_v2":
        rows = size if size in _V2_ROWS else 224  # what keras.applications.MobileNetV2 picks
        fname = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}{'' if top else '_no_top'}.h5"
        return fname, f"{BASE}mobilenet_v2/{fname}"
    kind = "small" if name.endswith("small") else "large"
    fname = f"weights_mobilenet_v3_{kind}_224_1.0_float{'' if top else '_no_top_v2'}.h5"
    return fname, f"{BASE}mobilenet_v3/{fname}"


def keras_cache_dirs() -> list[Path]:
    home = os.environ.get("KERAS_HOME")
    dirs = [Path(home)] if home else [Path.home() / ".keras"]
    dirs.append(Path("/tmp/.keras"))  # where Keras caches when the home directory is not writable
    return [d / "models" for d in dirs]


def require_imagenet(name: str, size: int, top: bool = False) -> Path:
    if name in registry.SMALL:
        raise UserError(f"{name} has no ImageNet weights (it is a small test-sized model)",
                        "use --weights none, a weights file, or runs:/RUN_ID of an earlier run")
    if registry.layout(name) == "torchvision":
        raise UserError(f"ImageNet weights for {name} (torchvision's layout) are not available in the keras backend "
                        "yet", f"use --model keras_{name} for keras.applications' architecture and weights, or "
                               f"--backend torch" if f"keras_{name}" in registry.names() else "use --backend torch")
    fname, url = imagenet_file(name, size, top)
    for folder in keras_cache_dirs():
        if (folder / fname).is_file():
            return folder / fname
    if os.environ.get("TLE_OFFLINE", "") not in ("", "0") or not _online():
        raise UserError(f"ImageNet weights for {name} are not in the Keras cache and cannot be downloaded: "
                        f"expected {keras_cache_dirs()[0] / fname}",
                        f"download {url} on a machine with internet and copy it to {keras_cache_dirs()[0]}/")
    return keras_cache_dirs()[0] / fname  # keras.applications downloads it there


def _online(host: str = "storage.googleapis.com") -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


# -- reading files --------------------------------------------------------------


def read_named(path: Path, source: str) -> tuple[dict[str, list[np.ndarray]], dict]:
    """``({layer name: [arrays in layer.weights order]}, tle attributes)`` from a file keyed by layer name."""
    import h5py

    if zipfile.is_zipfile(path):
        return _read_keras_archive(path, source), {}
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                return {}, {"keras3": True}
            out = {}
            for layer in _decode(group.attrs["layer_names"]):
                g = group[layer]
                out[layer] = [np.asarray(g[w]) for w in _decode(g.attrs.get("weight_names", []))]
            attrs = {k[4:]: _text(v) for k, v in f.attrs.items() if k.startswith("tle.")}
            return out, attrs
    except OSError:
        raise UserError(f"cannot read weights file {source} (not an HDF5 file or a .keras archive)",
                        "use a .h5/.weights.h5 file or a .keras model saved by Keras") from None


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_keras_archive(path: Path, source: str) -> dict[str, list[np.ndarray]]:
    import keras

    from tle_keras import preprocess  # noqa: F401  registers the Preprocess layer for files of this backend

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise UserError(f"cannot load {source} as a Keras model ({str(exc).splitlines()[0][:200]})",
                        "save it with model.save('file.keras')") from None
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in _all_layers(model)}


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested application model
            yield from _all_layers(layer)
        else:
            yield layer


# -- loading into a model -------------------------------------------------------


def load_file(knet, path: Path, source: str) -> bool:
    """Load a weights file into ``knet``; return whether its head was kept (the classes the file names, by the core's
    rule :func:`tle.contract.records.same_classes`, and layers that fit)."""
    named, attrs = read_named(Path(path), source)
    if attrs.get("keras3"):
        return _load_keras3(knet, Path(path), source)
    loaded, missing = [], []
    for block in knet.block_names:
        if _load_block(knet, block, knet.layers_of(block), named, source):
            loaded.append(block)
        else:
            missing.append(block)
    if not loaded:
        example = next(iter(named), "nothing")
        raise UserError(f"{source} holds none of the backbone blocks of {knet.model_name} (it has e.g. {example!r})",
                        f"use a file saved from keras.applications' {knet.model_name} or a keras run of it")
    if missing:
        warnings.warn(f"{source} has no weights for {', '.join(missing)} of {knet.model_name}; "
                      "those blocks start fresh", stacklevel=2)
    _load_reused_top(knet, named, source)
    saved_classes = class_names_of(attrs)
    keep = same_classes(saved_classes, knet.class_names)
    if keep:
        head = [layer for layer in knet.layers_of("head") if layer.weights]
        keep = all(layer.name in named and _fits(layer, named[layer.name]) for layer in head)
        if keep:
            for layer in head:
                layer.set_weights(named[layer.name])
    return keep


def class_names_of(attrs: dict):
    if "class_names" in attrs:
        return tuple(json.loads(attrs["class_names"]))
    return None


def _fits(layer, arrays) -> bool:
    return len(arrays) == len(layer.weights) and all(
        tuple(a.shape) == tuple(w.shape) for a, w in zip(arrays, layer.weights))


def _load_block(knet, block: str, layers, named, source: str) -> bool:
    with_weights = [layer for layer in layers if layer.weights]
    present = [layer for layer in with_weights if layer.name in named]
    if not present:
        return False
    absent = [layer for layer in with_weights if layer.name not in named]
    if absent:
        raise UserError(f"{source} holds only part of {block} of {knet.model_name}: layer {absent[0].name} is missing",
                        "use a file saved from the same architecture")
    for layer in with_weights:
        arrays = named[layer.name]
        if not _fits(layer, arrays):
            want = [tuple(w.shape) for w in layer.weights]
            got = [tuple(a.shape) for a in arrays]
            raise UserError(f"weights in {source} do not fit {knet.model_name}: layer {layer.name} ({block}) is "
                            f"{got} in the file but {want} in the model",
                            "use weights saved from the same architecture")
    for layer in with_weights:
        layer.set_weights(named[layer.name])
    return True


def _load_reused_top(knet, named, source: str) -> None:
    """The ``original`` head's pretrained layers (fc1, fc2, conv_2) when the file has them."""
    for layer in knet.layers_of("head"):
        if layer.weights and layer.name not in knet.new_head and layer.name in named:
            if not _fits(layer, named[layer.name]):
                raise UserError(f"weights in {source} do not fit layer {layer.name} of the original head of "
                                f"{knet.model_name} at {knet.input_shape[0]}x{knet.input_shape[1]}",
                                "use the model's default image size or another head")
            layer.set_weights(named[layer.name])


def _load_keras3(knet, path: Path, source: str) -> bool:
    import keras

    backbone = keras.Model(knet.net.input, knet.cuts[-1])
    try:
        backbone.load_weights(str(path))
    except Exception:
        try:
            knet.net.load_weights(str(path))
            return True
        except Exception as exc:
            raise UserError(f"{source} (a Keras 3 .weights.h5 file) does not fit {knet.model_name} "
                            f"({str(exc).splitlines()[0][:200]})",
                            "Keras 3 weight files load only into the same architecture; save a .keras model or "
                            "a legacy .h5 instead") from None
    return False


# -- saving -----------------------------------------------------------------------


def save(knet, directory) -> str:
    """Keras's legacy HDF5 weights layout, keyed by layer name, plus the model name and classes."""
    import h5py
    import keras

    path = Path(directory) / SAVED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = [layer for layer in knet.net.layers if layer.weights]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        f.attrs["backend"] = keras.backend.backend().encode()
        f.attrs["keras_version"] = keras.__version__.encode()
        f.attrs["tle.model"] = knet.model_name
        f.attrs["tle.class_names"] = json.dumps(knet.class_names or [])
        f.attrs["tle.head"] = json.dumps([layer.name for layer in knet.layers_of("head")])
        for layer in layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/{i}_{v.name}" for i, v in enumerate(layer.weights)]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, v in zip(names, layer.weights):
                g.create_dataset(n, data=np.asarray(v))
    return str(path)
