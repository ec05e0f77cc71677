"""ONNX export of every model family: NHWC [0, 1] in, logits out, dynamic batch, parity with evaluate()."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tle.contract.records import Blueprint, ExportMetadata, ResolvedWeights  # noqa: E402
from tle.interop.serving import check_parity, open_model  # noqa: E402
from tle.contract.spec import HeadSpec  # noqa: E402
from tle_torch import plugin  # noqa: E402


@pytest.mark.parametrize("model, size, channels, head", [
    ("vgg_small", 32, 1, "dense"),
    ("resnet_small", 32, 3, "linear"),
    ("alexnet", 64, 3, "original"),  # adaptive pooling below 224 px: the legacy exporter's failure case
    ("densenet121", 32, 3, "original"),
    ("mobilenet_v3_small", 32, 3, "original"),
    ("vgg_small", 32, 3, "original"),
])
def test_onnx_parity(tmp_path, model, size, channels, head):
    net = plugin.load_backbone(blueprint=Blueprint(model=model, class_names=[f"class{i}" for i in range(6)],
                                                   input_shape=(size, size, channels), head=HeadSpec(kind=head),
                                                   device="cpu", precision="fp32", seed=0),
                               weights=ResolvedWeights(kind="none"))
    rng = np.random.default_rng(0)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        net.train()(torch.from_numpy(rng.random((8, size, size, channels), dtype=np.float32)))
    sample = rng.random((5, size, size, channels), dtype=np.float32)
    names = [f"class{i}" for i in range(6)]
    meta = ExportMetadata(class_names=names, image_size=(size, size), channels=channels, backend="torch",
                          model=model, extra={"run_id": "abc"})
    path = plugin.export_onnx(model=net, path=tmp_path / "model.onnx", sample=sample, metadata=meta)
    assert not list(tmp_path.glob("*.data"))  # one self-contained file

    reference = plugin.evaluate(model=net, images=sample, labels=np.zeros(5, np.int64), batch_size=5).logits
    onnx_model = open_model(path, prefer_gpu=False)
    parity = check_parity(onnx_model, sample, reference, atol=1e-4, rtol=1e-3)
    assert parity.ok, parity.max_abs_diff
    # The batch axis is dynamic and the input is NHWC.
    shape = onnx_model.session.get_inputs()[0].shape
    assert not isinstance(shape[0], int) and shape[1:] == [size, size, channels]
    assert np.allclose(onnx_model.logits(sample[:3]), reference[:3], atol=1e-4, rtol=1e-3)
    assert onnx_model.class_names == names and onnx_model.metadata["tle.run_id"] == "abc"
    assert json.loads(onnx_model.metadata["tle.image_size"]) == [size, size]
