"""ONNX Runtime: provider choice, the parity check, and reading tle's metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tle.errors import UserError

if TYPE_CHECKING:  # imported where a session is opened: reading the spec must not load onnxruntime
    from onnxruntime import InferenceSession

# Preference order; the actual list is whatever onnxruntime reports here. TensorRT is left out on
# purpose: it builds engines for minutes on first use.
PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")


def providers(prefer_gpu: bool = True) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in PREFERRED if p in available and (prefer_gpu or p == "CPUExecutionProvider")]
    return wanted or list(available)


@dataclass
class OnnxModel:
    session: InferenceSession
    path: Path
    metadata: dict[str, str]

    @property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    @property
    def class_names(self) -> list[str]:
        raw = self.metadata.get("tle.class_names")
        if raw:
            return json.loads(raw)
        n = self.session.get_outputs()[0].shape[-1]
        return [str(i) for i in range(n if isinstance(n, int) else 0)]

    @property
    def image_size(self) -> tuple[int, int] | None:
        raw = self.metadata.get("tle.image_size")
        if raw:
            return tuple(json.loads(raw))
        shape = self.session.get_inputs()[0].shape
        return (shape[1], shape[2]) if all(isinstance(d, int) for d in shape[1:3]) else None

    @property
    def channels(self) -> int | None:
        raw = self.metadata.get("tle.channels")
        return int(raw) if raw else None

    @property
    def used_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        out = [np.asarray(self.session.run(None, {self.input_name: images[i:i + batch_size]})[0])
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


def open_model(path: str | Path, prefer_gpu: bool = True) -> OnnxModel:
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist", "give a .onnx file or a run id")
    try:
        session = ort.InferenceSession(str(path), providers=providers(prefer_gpu))
    except Exception as exc:
        raise UserError(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0]}",
                        "export it again with 'tle export RUN'") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return OnnxModel(session, path, meta)


@dataclass
class Parity:
    max_abs_diff: float
    ok: bool
    providers: list[str]
    batch: int


def check_parity(model: OnnxModel, images: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> Parity:
    """Compare the framework's logits with ONNX Runtime's on the same batch."""
    got = model.logits(images)
    if got.shape != reference.shape:
        return Parity(float("inf"), False, model.used_providers, len(images))
    diff = float(np.max(np.abs(got - reference))) if got.size else 0.0
    ok = bool(np.allclose(got, reference, atol=atol, rtol=rtol))
    return Parity(diff, ok, model.used_providers, len(images))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
