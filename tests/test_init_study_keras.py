"""The keras backend's init-study hooks, called directly in a pytest process of their own.

TensorFlow in the test process and triton later (torch's ONNX exporter in
another module) crash that process, so ``test_keras_init_study_in_own_process``
starts a child pytest (``TLE_KERAS_INPROC=1``) that runs the tests marked
``own_process`` here.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import child, in_own_process, needs
from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.initializers import InitSpec
from tle.contract.spec import HeadSpec
from tle.studies.init_study import BlockAccumulator, dense_summary, study_inputs

pytestmark = needs("tensorflow", "tle_keras")
test_keras_init_study_in_own_process = in_own_process(__file__, timeout=600)


@pytest.fixture(scope="module")
def hook():
    from tle.backends.manager import load_backend

    return load_backend("keras").hook


@child
def test_dense_layer_saturates_with_normal_1_not_with_glorot(hook):
    x = study_inputs(300, 784, seed=0)
    sat = {}
    for text in ("normal:1", "glorot_uniform", "glorot_normal"):
        a = hook.dense_activations(inputs=x, units=256, activation="sigmoid", init=InitSpec.parse(text), seed=0)
        assert a.shape == (300, 256) and a.dtype == np.float32
        sat[text] = dense_summary(a, "sigmoid")["saturated_fraction"]
    assert sat["normal:1"] > 0.8 and sat["glorot_uniform"] < 0.05 and sat["glorot_normal"] < 0.05, sat


@child
def test_dense_layer_draws_the_initialiser_with_zero_bias(hook):
    x = study_inputs(400, 200, seed=1)
    for text in ("glorot_uniform", "he_normal"):
        a = hook.dense_activations(inputs=x, units=50, activation="linear", init=InitSpec.parse(text), seed=0)
        w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))].astype(np.float64), a.astype(np.float64), rcond=None)
        assert w[:-1].std() == pytest.approx(InitSpec.parse(text).expected_std(200, 50), rel=0.04), text
        assert np.abs(w[-1]).max() < 1e-3, text


@child
def test_vgg_small_gives_every_block_channels_last(hook):
    from tle.backends.manager import load_backend

    net = hook.load_backbone(blueprint=Blueprint(model="vgg_small", class_names=[str(i) for i in range(10)],
                                                 input_shape=(32, 32, 1), head=HeadSpec(), device="cpu",
                                                 precision="fp32", seed=0), weights=ResolvedWeights(kind="none"))
    blocks = load_backend("keras").model("vgg_small").blocks
    images = np.random.default_rng(0).random((6, 32, 32, 1), dtype=np.float32)
    std = {}
    for text in ("he_normal", "glorot_uniform"):
        hook.apply_init(model=net, blocks=list(blocks), init=InitSpec.parse(text), seed=0)
        out = hook.block_activations(model=net, images=images, blocks=None)
        assert list(out) == list(blocks)
        assert [v.shape for v in out.values()] == [(6, 16, 16, 8), (6, 8, 8, 16), (6, 4, 4, 32), (6, 2, 2, 32),
                                                   (6, 1, 1, 32)]
        acc = BlockAccumulator()
        acc.add(out["block5"])
        std[text] = acc.summary()["std"]
    # The last block's output is the model's own backbone output.
    np.testing.assert_allclose(out["block5"], net.prefix_model(5)(images).numpy(), rtol=1e-5, atol=1e-7)
    assert std["he_normal"] > 10 * std["glorot_uniform"], std
