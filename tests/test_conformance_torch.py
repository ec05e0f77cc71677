"""The torch backend against tle's conformance suite (``tle.testing``), as a third party's backend would be."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from tle.testing import BackendConformance  # noqa: E402


class TestTorchConformance(BackendConformance):
    backend = "torch"
    model = "resnet_small"
    image_size = 32
    lr = 3e-3
    min_accuracy = 0.6
