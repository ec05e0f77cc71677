"""ONNX export: torch's TorchScript exporter first, the dynamo exporter (needs ``onnxscript``) when it fails.

The exported graph is the whole wrapper (NHWC [0, 1] in, normalisation inside,
logits out) with a dynamic batch axis. The TorchScript exporter takes ~0.3 s
for a small model where dynamo takes 2.5-5 s even in a warm process, which is
most of a sweep cell's fixed cost; it cannot export VGG/AlexNet's adaptive
pooling below 224 px, and dynamo can, so that is the fallback. The core's
parity check judges either graph. One self-contained file unless the weights
pass ONNX's 2 GB protobuf limit (dynamo only: it writes external data).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch

PROTOBUF_LIMIT = 2 * 10**9 - 64 * 2**20  # leave room for the graph itself


def export(net, path, sample, metadata) -> str:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A float32, contiguous CPU copy: the training copy may be channels_last on a GPU.
    model = copy.deepcopy(net).to("cpu", memory_format=torch.contiguous_format).float().eval()
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    if x.shape[0] < 2:
        # torch.export specialises a size-1 dimension to a constant; two rows keep the batch axis symbolic.
        x = x.repeat(2, 1, 1, 1) if x.shape[0] == 1 else torch.zeros((2, *net.input_shape))
    x = x[:2]
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > PROTOBUF_LIMIT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if big or not _torchscript(model, x, path):
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
                              external_data=big, verbose=False, report=False)
    proto = onnx.load(str(path), load_external_data=False)
    for key, value in (metadata.as_props() if metadata is not None else {}).items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return str(path)


def _torchscript(model, x, path: Path) -> bool:
    """Export with the TorchScript exporter; False when it cannot trace this model."""
    try:
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=18)
    except Exception:
        path.unlink(missing_ok=True)
        return False
    return True
