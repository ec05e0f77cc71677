"""ONNX export with Keras 3's own ``model.export(format="onnx")`` (tf2onnx underneath).

The exported graph is the whole model: NHWC float32 [0, 1] in (the
``Preprocess`` layer inside does channel repetition and normalisation), logits
out, batch axis dynamic (``None`` in the input signature). The input's name is
whatever the exporter gives it; readers take it from the session.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from tle_keras.runtime import keras as _keras

keras = _keras()


def export(knet, path, sample, metadata) -> str:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, c = knet.input_shape
    # tf2onnx prints its progress; the core owns the console.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation noise
        knet.net.export(str(path), format="onnx", verbose=False,
                        input_signature=[keras.InputSpec(shape=(None, h, w, c), dtype="float32")])
    proto = onnx.load(str(path))
    for key, value in (metadata.as_props() if metadata is not None else {}).items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return str(path)
