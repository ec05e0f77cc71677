"""ONNX Runtime ÷ torch eager inference time at batch 1 and 32 (same weights, same inputs)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from common import build, median_after_warmup, report, timed  # noqa: E402

from tle.contract.records import ExportMetadata  # noqa: E402
from tle.data import load_dataset  # noqa: E402
from tle.interop.serving import open_model  # noqa: E402
from tle.contract.spec import ExperimentSpec  # noqa: E402

MODELS = (("resnet18", 112), ("vgg_small", 32))
REPEAT = 15


def main() -> None:
    rows = []
    for model, size in MODELS:
        spec = ExperimentSpec(backend="torch", model=model, dataset={
            "source": "synthetic", "synthetic": {"classes": 10, "per_class": 4, "size": size}},
            train={"device": "cpu"})
        data = load_dataset(spec.dataset, seed=0)
        backend, _, net = build(spec, data)
        batches = {b: np.ascontiguousarray(np.resize(data.x_train, (b, size, size, 3))) for b in (1, 32)}
        # Torch first, before any ONNX Runtime session exists: ORT's spinning worker threads would
        # otherwise compete with torch's for the same two cores.
        eager = {b: median_after_warmup(timed(
            lambda: backend.hook.evaluate(model=net, images=x, labels=None, batch_size=len(x)), REPEAT))
            for b, x in batches.items()}
        with tempfile.TemporaryDirectory() as tmp:
            meta = ExportMetadata(list(data.class_names), (size, size), 3, "torch", model)
            path = backend.hook.export_onnx(model=net, path=Path(tmp) / "m.onnx", sample=data.x_train[:2],
                                            metadata=meta)
            session = open_model(path, prefer_gpu=False)
            for b, x in batches.items():
                ort = median_after_warmup(timed(lambda: session.logits(x), REPEAT))
                rows.append((f"{model} {size}px batch {b}: torch eager / ORT",
                             f"{eager[b] * 1e3:.1f} ms / {ort * 1e3:.1f} ms = {ort / eager[b]:.2f}"))
    report("ONNX Runtime (CPU provider) vs torch eager, CPU", rows)


if __name__ == "__main__":
    main()
