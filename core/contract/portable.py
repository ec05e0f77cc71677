"""Weights every framework reads: the portable file, in torchvision's names and torch's array layout.

A model name is one architecture in every backend (README, "One weight file,
every framework"), so one weight file can serve all of them. The file is a NumPy
``.npz`` (no framework needed to read or write it) holding:

* the backbone under torchvision's ``state_dict()`` keys of that model
  (``features.0.weight``, ``layer1.0.bn1.running_var``,
  ``features.denseblock1.denselayer1.conv1.weight`` ...; the small models use
  the keys of the torchvision classes they are built from), with torch's
  layouts: conv kernels ``(out, in, kh, kw)``, linear weights ``(out, in)``,
  a linear layer that follows a flatten of a conv map takes its inputs in
  ``(c, h, w)`` order, BatchNorm as ``weight``/``bias``/``running_mean``/
  ``running_var`` (``num_batches_tracked`` is left out);
* the classifier under ``head.`` + the torch backend's head module path
  (``head.fc1.weight``, ``head.fc2.bias`` for a dense head, ``head.fc.*`` for a
  linear one, ``head.classifier.6.weight`` / ``head.fc.weight`` for the
  original one), same layouts;
* ``__meta__``: JSON with the model name, head kind, class names and the
  backend that wrote it.

Backends convert their native models to and from this dict of arrays
(``tle_torch.portable``, ``tle_keras.portable``); the core only moves files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tle.errors import UserError

SUFFIX = ".tle.npz"
META = "__meta__"
HEAD_PREFIX = "head."


@dataclass
class PortableWeights:
    model: str
    arrays: dict[str, np.ndarray]
    head: str = "dense"  # the head kind of the model the arrays came from (tle.contract.spec.HeadSpec.kind)
    class_names: tuple[str, ...] | None = None
    backend: str = ""  # the backend that wrote them
    extra: dict = field(default_factory=dict)

    @property
    def backbone(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.arrays.items() if not k.startswith(HEAD_PREFIX)}

    @property
    def head_arrays(self) -> dict[str, np.ndarray]:
        return {k[len(HEAD_PREFIX):]: v for k, v in self.arrays.items() if k.startswith(HEAD_PREFIX)}


def is_portable(path: Path | str) -> bool:
    return str(path).endswith(SUFFIX)


def write(path: Path | str, weights: PortableWeights) -> Path:
    path = Path(path)
    if not is_portable(path):
        path = path.with_name(path.name + SUFFIX)
    meta = {"model": weights.model, "head": weights.head, "backend": weights.backend,
            "class_names": list(weights.class_names) if weights.class_names is not None else None, **weights.extra}
    arrays: dict[str, np.ndarray] = {k: np.ascontiguousarray(v) for k, v in weights.arrays.items()}
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, allow_pickle=True, **arrays)  # allow_pickle: as by default (named, so that no array is taken for it)
    return path


def read(path: Path | str, source: str | None = None) -> PortableWeights:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != META}
            meta = json.loads(bytes(data[META]).decode()) if META in data.files else None
    except (OSError, ValueError) as exc:
        raise UserError(f"{source or path} is not a readable portable weight file ({exc})",
                        "write one with `tle convert` or use a run made by tle run") from None
    if meta is None:
        raise UserError(f"{source or path} has no {META} entry", "write portable files with tle.contract.portable.write")
    names = meta.pop("class_names", None)
    return PortableWeights(model=meta.pop("model"), arrays=arrays, head=meta.pop("head", "dense"),
                           class_names=tuple(names) if names is not None else None,
                           backend=meta.pop("backend", ""), extra=meta)


def check_model(weights: PortableWeights, model: str, source: str) -> None:
    """The file must hold the architecture asked for: a name is one architecture in every backend."""
    if weights.model != model:
        raise UserError(f"weights in {source} are for model {weights.model!r}, not {model!r}",
                        f"use --model {weights.model}, or weights of a {model} run")
