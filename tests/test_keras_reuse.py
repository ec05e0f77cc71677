"""A warm worker's reused Keras model trains exactly as a freshly built one.

With ``TLE_REUSE_MODELS=1`` (what ``tle.run.worker`` sets around a cell) the
keras backend hands a cell the KerasNet it built for the previous cell of the
same architecture, with a new build's variables copied in, and ``fit`` reuses
the stage model whose train step it traced before. These tests run cells the
way the runner does (load_backbone, apply_init, per stage freeze_policy +
train, evaluate) and require bit-identical logits, metrics and weights against
the same cell on a model built from scratch: across strategies that freeze
different blocks, another seed in between, and BatchNorm fixed or trained.

Like tests/test_keras_backend.py they run in a child pytest process
(TensorFlow and triton must not share one); run them directly with
``TLE_KERAS_INPROC=1 pytest tests/test_keras_reuse.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import child, in_own_process, needs
from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.initializers import InitSpec
from tle.contract.loop import History, TrainLoop
from tle.contract.spec import DataSpec, HeadSpec, TrainSpec
from tle.contract.strategy import HEAD, Rates, Tuning, build_plan

pytestmark = needs("tensorflow", "keras")
test_keras_reuse_in_own_process = in_own_process(__file__, durations=5)


@pytest.fixture(scope="module")
def digits():
    from tle.data import load_dataset

    return load_dataset(DataSpec(source="digits", image_size=32), seed=0)


@pytest.fixture()
def reuse(monkeypatch):
    """Switch reuse on or off for the next cells; the kept model is dropped before and after."""
    from tle_keras import models

    models.forget()

    def switch(on: bool) -> None:
        if on:
            monkeypatch.setenv(models.REUSE_ENV, "1")
        else:
            monkeypatch.delenv(models.REUSE_ENV, raising=False)

    yield switch
    models.forget()


def cell(digits, model, strategy, seed, batchnorm="frozen", cache_features=True):
    """One cell as tle.run.runner runs it; returns the model and everything it produced."""
    from tle_keras import plugin as P

    knet = P.load_backbone(blueprint=Blueprint(model=model, class_names=list(digits.class_names),
                                               input_shape=digits.input_shape, head=HeadSpec(), device="cpu",
                                               precision="auto", seed=seed), weights=ResolvedWeights(kind="none"))
    plan = build_plan(strategy, knet.block_names, Rates(1, 1e-3, finetune_epochs=1, finetune_lr=1e-4),
                      Tuning(batchnorm=batchnorm))
    P.apply_init(model=knet, blocks=[b for b in plan.reinit if b != HEAD], init=InitSpec(name="glorot_uniform"),
                 seed=seed)
    spec = TrainSpec(epochs=1, batch_size=64, seed=seed, batchnorm=batchnorm, cache_features=cache_features)
    history, counts = History(), []
    for stage in plan.stages:
        P.freeze_policy(model=knet, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
        counts.append([(c.name, c.total, c.trainable) for c in P.count_parameters(model=knet)])
        loop = TrainLoop(stage, history)
        P.train(model=knet, data=digits, stage=stage, train=spec, loop=loop)
        loop.close()
    logits = P.evaluate(model=knet, images=digits.x_test, labels=digits.y_test, batch_size=64).logits
    metrics = [{k: v for k, v in r.metrics.items() if k != "epoch_seconds"} for r in history.records]
    return knet, {"logits": logits, "metrics": metrics, "counts": counts,
                  "weights": [np.asarray(v).copy() for v in knet.net.variables]}


def assert_identical(got, want):
    np.testing.assert_array_equal(got["logits"], want["logits"])
    assert got["metrics"] == want["metrics"]
    assert got["counts"] == want["counts"]
    assert len(got["weights"]) == len(want["weights"])
    for a, b in zip(got["weights"], want["weights"]):
        np.testing.assert_array_equal(a, b)


@child
def test_reused_vgg_small_matches_fresh_across_strategies_and_seeds(digits, reuse):
    # Fresh references, each on a model built for it alone.
    reuse(False)
    cells = [("scratch", 0), ("finetune:block4", 1), ("feature-extractor", 2), ("scratch", 3)]
    fresh = {c: cell(digits, "vgg_small", *c)[1] for c in cells[:3]}
    fresh_first = fresh[cells[0]]
    # The same cells in a warm worker: one model, reset each time; the last cell's strategy ran before.
    reuse(True)
    knets, traced = [], {}
    for c in cells + [cells[0], cells[1]]:
        knet, got = cell(digits, "vgg_small", *c)
        knets.append(knet)
        if c in fresh:
            assert_identical(got, fresh[c])
        for key, (model, _, _) in knet.trainers.items():
            traced.setdefault(key, model.train_function)
            assert model.train_function is traced[key]  # traced once, reused by later cells
    assert all(k is knets[0] for k in knets)
    assert len(knets[0].trainers) >= 3  # scratch; finetune stage 2; head-only stages (finetune 1, feature-extractor)
    assert any(model.train_function is not None for model, _, _ in knets[0].trainers.values())
    # Nothing the previous cells did leaks into a fresh build either.
    reuse(False)
    assert_identical(cell(digits, "vgg_small", *cells[0])[1], fresh_first)


@child
def test_reused_resnet_small_resets_batchnorm_patches(digits, reuse):
    # finetune:block4 with BatchNorm statistics fixed (patched BatchNorm calls) and then trained: a reused
    # model must neither keep the patch nor the first cell's statistics, optimiser moments or dropout seeds.
    args = dict(cache_features=False)  # every block runs every batch, so fixed/trained statistics matter
    reuse(False)
    want_train = cell(digits, "resnet_small", "finetune:block4", 1, batchnorm="train", **args)[1]
    want_frozen = cell(digits, "resnet_small", "finetune:block4", 0, batchnorm="frozen", **args)[1]
    reuse(True)
    first, got_frozen = cell(digits, "resnet_small", "finetune:block4", 0, batchnorm="frozen", **args)
    again, got_train = cell(digits, "resnet_small", "finetune:block4", 1, batchnorm="train", **args)
    assert again is first
    import keras

    patched = {layer.name for layer in again.net.layers if "call" in vars(layer)}
    assert patched == {layer.name for b in again.fixed for layer in again.layers_of(b)
                       if isinstance(layer, keras.layers.BatchNormalization)}  # the last stage's, no other
    assert again.fixed == frozenset(f"block{i}" for i in (1, 2, 3))  # with batchnorm: train, the frozen blocks
    assert_identical(got_frozen, want_frozen)
    assert_identical(got_train, want_train)
    assert not np.array_equal(got_frozen["logits"], got_train["logits"])


@child
def test_no_reuse_without_the_worker_flag_or_across_architectures(digits, reuse):
    from tle_keras import plugin as P

    def build(classes=10, head=None, seed=0):
        return P.load_backbone(blueprint=Blueprint(model="vgg_small", class_names=[str(i) for i in range(classes)],
                                                   input_shape=digits.input_shape, head=head or HeadSpec(),
                                                   device="cpu", precision="auto", seed=seed),
                               weights=ResolvedWeights(kind="none"))

    reuse(False)
    assert build() is not build()  # fusion, export, tests: every model its own
    reuse(True)
    a = build()
    assert build(seed=1) is a
    assert build(classes=4) is not a and build(head=HeadSpec(kind="linear")) is not build(classes=4)


@child
@pytest.mark.parametrize("name", ["vgg_small", "resnet_small"])
def test_traced_inference_equals_the_eager_call(digits, name):
    # evaluate and the frozen-prefix cache run one traced function per model; it must give the eager call's
    # numbers bit for bit (grappler's fused kernels could have changed them).
    from tle_keras import plugin as P

    knet = P.load_backbone(blueprint=Blueprint(model=name, class_names=list(digits.class_names),
                                               input_shape=digits.input_shape, head=HeadSpec(), device="cpu",
                                               precision="auto", seed=3), weights=ResolvedWeights(kind="none"))
    x = digits.x_test[:100]
    got = P.evaluate(model=knet, images=x, labels=digits.y_test[:100], batch_size=32).logits
    want = np.concatenate([np.asarray(knet.net(x[i:i + 32], training=False)) for i in range(0, len(x), 32)])
    np.testing.assert_array_equal(got, want)
    for k in (2, 5):
        np.testing.assert_array_equal(np.asarray(knet.inference(k)(x)),
                                      np.asarray(knet.prefix_model(k)(x, training=False)))


@child
def test_backend_seeding_draws_what_keras_seeding_draws_without_flushing_traced_functions():
    # Every cell seeds before building and before fit. keras.utils.set_random_seed flushes TensorFlow's kernel
    # cache, so a reused model's traced steps were instantiated again in every cell (~2 s); the backend's
    # set_random_seed must draw the same numbers for a seed (shuffles, Keras's draws) and keep instantiated
    # functions, which a stateful kernel's counter shows. (Augmentation is stateless, drawn from the epoch's seed
    # and each image's place: no process-wide seed reaches it.)
    import random

    import keras

    from tle_keras.runtime import set_random_seed, tf as _tf

    tf = _tf()
    images = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)

    def draws():
        data = tf.data.Dataset.from_tensor_slices((images, np.arange(6))).shuffle(6, seed=7,
                                                                                  reshuffle_each_iteration=True)
        epochs = [[(np.asarray(x).tolist(), int(y)) for x, y in data] for _ in range(2)]
        kernel = np.asarray(keras.initializers.GlorotUniform()((3, 4))).tolist()  # seed from Python's random
        return (epochs, kernel, np.asarray(keras.random.uniform((3,))).tolist(), random.random(),
                float(np.random.rand()))

    for seed in (5, 6):
        keras.utils.set_random_seed(seed)
        want = draws()
        set_random_seed(seed)
        assert draws() == want
        set_random_seed(seed)
        assert draws() == want
    assert want[0][0] != want[0][1]  # reshuffled per epoch

    counter = tf.function(lambda: tf.random.uniform((1,), seed=1))
    first = float(counter()[0])
    keras.utils.set_random_seed(5)
    assert float(counter()[0]) == first  # flushed: the function's kernel starts again
    set_random_seed(5)
    assert float(counter()[0]) != first  # kept: the same instantiated function goes on
