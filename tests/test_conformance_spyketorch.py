"""The spiking backend against tle's conformance suite (``tle.testing``)."""

import pytest

pytest.importorskip("torch")

from tle.testing import BackendConformance  # noqa: E402


class TestSpyketorchConformance(BackendConformance):
    backend = "spyketorch"
    model = "mozafari_small"
    max_per_class = 40
    epochs = 2
    # STDP by presentations: ~3,000 images (the set presented over and over) settle the feature layers.
    spec_overrides = {"train": {"stdp": {"presentations": 3000}}}
    min_accuracy = 0.45
    init = "normal"
