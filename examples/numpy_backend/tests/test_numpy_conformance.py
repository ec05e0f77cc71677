"""The contract every backend keeps, checked on this one by tle's conformance suite (``pytest -k conformance``).

A third party's backend needs only this file to be checked the way the built-in ones are.
"""

from tle.testing import BackendConformance


class TestNumpyConformance(BackendConformance):
    backend = "numpy"
    model = "mlp"
    image_size = 8  # the digits' own size; the MLP flattens what it gets
    epochs = 3
    lr = 1e-2
    min_accuracy = 0.8
