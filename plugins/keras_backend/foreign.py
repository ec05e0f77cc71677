"""Starting weights from another framework: a portable file, a torchvision ``.pth``, torchvision's ImageNet file.

A portable file (``tle.contract.portable``: a run of another backend handed over by the
core, or ``tle convert``) loads through ``portable.py``. Files only torch can
read (a ``.pt``/``.pth`` state dict, torchvision's ImageNet weights in the
torch hub cache) are first turned into a portable file by the torch backend in
a worker process of its own (``tle.contract.helpers.portable_from_backend``):
TensorFlow and torch's exporter never share a process. The head is kept only
for the same classes and the same head kind; otherwise the ``original`` head's
pretrained layers (VGG's fc1/fc2) come along and its last layer is new.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tle import UserError
from tle.contract.helpers import portable_from_backend
from tle.contract.records import ForeignWeights, same_classes
from tle.contract.portable import check_model, is_portable, read
from tle_keras import registry
from tle_keras.portable import HEAD, from_portable

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def wants_torch(name: str, kind: str, path: Path | None) -> bool:
    """Weights only the torch backend reads, for a model whose torchvision counterpart it has."""
    if registry.layout(name) == "keras":
        return False
    return kind == "imagenet" or (kind == "file" and path is not None and Path(path).suffix in TORCH_SUFFIXES)


def load_through_torch(knet, weights, head, class_names) -> None:
    name = knet.model_name
    folder = Path(tempfile.mkdtemp(prefix="tle-foreign-"))
    try:
        text = "imagenet" if weights.kind == "imagenet" else str(weights.path)
        path = portable_from_backend(ForeignWeights("torch", text, name, head, tuple(knet.input_shape),
                                                    knet.num_classes, folder, source=str(weights.source or text)))
        load_portable(knet, path, str(weights.source or text), class_names, head)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_portable(knet, path: Path, source: str, class_names, head) -> None:
    weights = read(path, source)
    check_model(weights, knet.model_name, source)
    # Beside the core's class rule, the head's layers must be the ones of the same head kind.
    same = same_classes(weights.class_names, class_names) and weights.head == head.kind
    from_portable(knet, weights.arrays, source, keep_head=same)
    if not same:
        _reused_head(knet, weights.arrays, source)


def _reused_head(knet, arrays, source: str) -> None:
    """The head's layers that are not new (the original classifier's hidden layers), when the file has them."""
    from tle_keras.portable import torch_path, _import_layer, _param_names

    kind = getattr(knet, "head_kind", "dense")
    for layer in knet.layers_of(HEAD):
        if not layer.weights or layer.name in knet.new_head:
            continue
        prefix = torch_path(knet.model_name, kind, HEAD, layer)
        keys = [f"{prefix}.{p}" for p in _param_names(layer)]
        if not all(k in arrays for k in keys):
            continue
        values = _import_layer(layer, {p: arrays[k] for p, k in zip(_param_names(layer), keys)})
        if [tuple(v.shape) for v in values] != [tuple(v.shape) for v in layer.weights]:
            raise UserError(f"weights in {source} do not fit layer {layer.name} of the original head of "
                            f"{knet.model_name} at {knet.input_shape[0]}x{knet.input_shape[1]}",
                            "use the model's default image size or another head")
        layer.set_weights(values)


__all__ = ["is_portable", "load_portable", "load_through_torch", "wants_torch"]
