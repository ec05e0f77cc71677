"""The keras backend against tle's conformance suite (``tle.testing``).

TensorFlow must not share a process with torch's exporter (another test
module), so the suite runs in a child pytest process of its own, as
tests/test_keras_backend.py does; run it directly with
``TLE_KERAS_INPROC=1 pytest tests/test_conformance_keras.py``.
"""

import os
from importlib.util import find_spec

import pytest

IN_CHILD = os.environ.get("TLE_KERAS_INPROC") == "1"
pytestmark = pytest.mark.skipif(find_spec("tensorflow") is None or find_spec("keras") is None,
                                reason="tensorflow/keras not installed")

from conftest import run_own_process  # noqa: E402
from tle.testing import BackendConformance  # noqa: E402


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_keras_conformance_in_own_process():
    run_own_process(__file__, durations=5, env={"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"})


@pytest.mark.own_process
class TestKerasConformance(BackendConformance):
    backend = "keras"
    model = "resnet_small"
    image_size = 32
    lr = 3e-3
    min_accuracy = 0.6
