"""The keras backend's hooks on small models and the digits data.

TensorFlow imported in the test process and triton later (torch's ONNX
exporter in another test module) crashes that process, so these tests run in
a pytest child process of their own: ``test_keras_backend_in_own_process``
starts it, and the child (``TLE_KERAS_INPROC=1``) runs the rest. Run them
directly with ``TLE_KERAS_INPROC=1 pytest tests/test_keras_backend.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import child, in_own_process, needs
from tle import UserError
from tle.contract.records import Blueprint, ExportMetadata, ResolvedWeights
from tle.contract.initializers import InitSpec
from tle.contract.loop import Checkpointing, Listeners, TrainLoop
from tle.contract.spec import DataSpec, HeadSpec, TrainSpec
from tle.contract.strategy import HEAD, Rates, Tuning, build_plan
from tle_keras import plugin as P

pytestmark = needs("tensorflow", "keras")
test_keras_backend_in_own_process = in_own_process(__file__, durations=8)

NONE = ResolvedWeights(kind="none")


def build(name, classes=10, shape=(32, 32, 3), head=None, weights=NONE, seed=0, class_names=None):
    return P.load_backbone(blueprint=Blueprint(model=name,
                                               class_names=class_names or [str(i) for i in range(classes)],
                                               input_shape=shape, head=head or HeadSpec(), device="cpu",
                                               precision="auto", seed=seed), weights=weights)


def loop_for(stage, start_epoch=0, resume_from=None, checkpoint_path=None):
    records = []
    loop = TrainLoop(stage, listeners=Listeners(on_epoch=records.append),
                     checkpointing=Checkpointing(checkpoint_path, resume_from, start_epoch))
    return loop, records


def counts(knet):
    return {c.name: (c.total, c.trainable) for c in P.count_parameters(model=knet)}


@pytest.fixture(scope="module")
def digits():
    from tle.data import load_dataset

    return load_dataset(DataSpec(source="digits", image_size=32), seed=0)


def test_plugin_import_does_not_load_tensorflow():
    code = ("import sys, tle_keras.plugin as p; p.backend_info(); p.register_models(); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_registry_lists_unavailable_models_with_reason():
    infos = {m.name: m for m in P.register_models()}
    # torchvision's names (its architectures, built in Keras), keras.applications' own under keras_*, the small ones.
    for name in ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
                 "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet161",
                 "densenet169", "densenet201", "keras_vgg16", "keras_vgg19", "keras_resnet50", "keras_resnet101",
                 "keras_resnet152", "keras_densenet121", "keras_densenet169", "keras_densenet201",
                 "keras_mobilenet_v2", "keras_mobilenet_v3_small", "keras_mobilenet_v3_large", "vgg_small",
                 "resnet_small"):
        assert infos[name].available and infos[name].blocks == tuple(f"block{i}" for i in range(1, 6))
    for name in ("mobilenet_v3_small", "mobilenet_v3_large"):
        assert not infos[name].available and f"keras_{name}" in infos[name].reason
    assert P.backend_info().status == "ok"


@child
def test_vgg16_trainable_counts_per_strategy():
    knet = build("vgg16")
    blocks = {"block1": 38_720, "block2": 221_440, "block3": 1_475_328, "block4": 5_899_776, "block5": 7_079_424}
    head = 512 * 256 + 256 + 256 * 10 + 10  # 1x1x512 flattened at 32 px
    assert sum(blocks.values()) == 14_714_688  # S3's conv base
    want_trainable = {
        "scratch": [set(blocks)],
        "feature-extractor": [set()],
        "finetune:block5": [set(), {"block5"}],
        "transfer:block3": [set(blocks)],
    }
    for strategy, stages in want_trainable.items():
        plan = build_plan(strategy, list(blocks), Rates(1, 1e-3))
        for stage, on in zip(plan.stages, stages, strict=True):
            P.freeze_policy(model=knet, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
            got = counts(knet)
            assert got[HEAD] == (head, head)
            for b, total in blocks.items():
                assert got[b] == (total, total if b in on else 0), (strategy, stage.index, b)
    # S3: everything before block5's first conv frozen, block5 trainable (torchvision's features.24 .. 28).
    block5 = build_plan("finetune:block5", list(blocks), Rates(1, 1)).stages[1]
    P.freeze_policy(model=knet, fixed_stats=(), trainable=dict(block5.trainable))
    assert [layer.name for layer in knet.layers_of("block5") if layer.weights] == [
        "features_24", "features_26", "features_28"]
    assert not knet.net.get_layer("features_21").trainable and knet.net.get_layer("features_24").trainable


@child
@pytest.mark.parametrize("name", ["keras_resnet50", "keras_densenet121", "keras_mobilenet_v2",
                                  "keras_mobilenet_v3_small", "keras_mobilenet_v3_large"])
def test_block_maps_cover_the_application(name):
    import keras

    knet = build(name)
    got = counts(knet)
    assert all(got[b][0] > 0 for b in knet.block_names)
    non_trainable = sum(int(np.prod(v.shape)) for v in knet.net.non_trainable_weights)
    assert sum(t for t, _ in got.values()) == knet.net.count_params() - non_trainable
    first = {b: next(layer.name for layer in knet.layers_of(b) if layer.weights) for b in knet.block_names}
    expect = {"keras_resnet50": ["conv1_conv", "conv2_block1_1_conv", "conv3_block1_1_conv", "conv4_block1_1_conv",
                           "conv5_block1_1_conv"],
              "keras_densenet121": ["conv1_conv", "conv2_block1_0_bn", "conv3_block1_0_bn", "conv4_block1_0_bn",
                              "conv5_block1_0_bn"],
              "keras_mobilenet_v2": ["Conv1", "block_1_expand", "block_3_expand", "block_6_expand", "block_13_expand"]}
    if name in expect:
        assert list(first.values()) == expect[name]
    if name.startswith("keras_mobilenet"):
        # Grouped by stride: every block after the first starts with the unit that halves the resolution.
        for b in knet.block_names[1:]:
            assert any(getattr(layer, "strides", (1, 1)) == (2, 2) for layer in knet.layers_of(b)
                       if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))), (name, b)


@child
def test_initialiser_std_matches_spec():
    knet = build("vgg16")
    layer = knet.net.get_layer("features_24")  # block5's first conv, 3x3x512x512: 2.4M weights
    fan = 3 * 3 * 512
    for text in ("glorot_uniform", "he_normal", "lecun_normal", "normal:0.02", "uniform:0.1", "glorot_normal"):
        init = InitSpec.parse(text)
        P.apply_init(model=knet, blocks=["block5"], init=init, seed=1)
        kernel, bias = (np.asarray(w) for w in layer.weights)
        assert kernel.std() == pytest.approx(init.expected_std(fan, fan), rel=0.02), text
        assert abs(kernel.mean()) < 1e-3 and not bias.any()
    before = np.asarray(knet.net.get_layer("features_0").kernel).copy()
    P.apply_init(model=knet, blocks=["block5"], init=InitSpec(name="he_normal"), seed=1)
    again = np.asarray(layer.kernel).copy()
    P.apply_init(model=knet, blocks=["block5"], init=InitSpec(name="he_normal"), seed=1)
    assert np.array_equal(again, np.asarray(layer.kernel))  # seeded
    assert np.array_equal(before, np.asarray(knet.net.get_layer("features_0").kernel))  # other blocks untouched


@child
def test_frozen_batchnorm_stays_in_inference_mode(digits):
    knet = build("resnet_small", shape=digits.input_shape)
    P.freeze_policy(model=knet, trainable={"block1": False, "block2": False, "block3": True, "block4": True,
                                           "block5": True, HEAD: True}, fixed_stats=("block1", "block2"))
    frozen, live = knet.net.get_layer("conv1_bn"), knet.net.get_layer("conv3_block1_1_bn")
    frozen_before = [np.asarray(v).copy() for v in frozen.weights]
    live_before = np.asarray(live.moving_mean).copy()
    x = digits.x_train[:8]
    prefix = knet.prefix_model(2)
    assert np.allclose(prefix(x, training=True), prefix(x, training=False), atol=1e-6)
    stage = build_plan("scratch", knet.block_names, Rates(1, 1e-3)).stages[0]
    stage = type(stage)(0, "train", {**stage.trainable, "block1": False, "block2": False}, 1, 1e-3)
    loop, _ = loop_for(stage)
    P.train(model=knet, data=digits, stage=stage, train=TrainSpec(epochs=1, cache_features=False), loop=loop)
    assert all(np.array_equal(a, np.asarray(v)) for a, v in zip(frozen_before, frozen.weights))
    assert not np.array_equal(live_before, np.asarray(live.moving_mean))


@child
@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_batchnorm_statistics_of_pretrained_trainable_blocks(digits, batchnorm):
    # finetune:block4: block2 stays frozen, blocks 4-5 start pretrained and train in stage 2.
    knet = build("resnet_small", shape=digits.input_shape)
    plan = build_plan("finetune:block4", knet.block_names, Rates(1, 1e-3, finetune_epochs=1, finetune_lr=1e-3),
                      Tuning(batchnorm=batchnorm))
    frozen, live = knet.net.get_layer("conv2_block1_1_bn"), knet.net.get_layer("conv5_block1_1_bn")
    stats = lambda layer: [np.asarray(v).copy() for v in (layer.moving_mean, layer.moving_variance)]  # noqa: E731
    frozen_before, live_before, gamma_before = stats(frozen), stats(live), np.asarray(live.gamma).copy()
    spec = TrainSpec(epochs=1, batch_size=64, cache_features=False, batchnorm=batchnorm)  # every block, every batch
    for stage in plan.stages:
        P.freeze_policy(model=knet, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
        loop, _ = loop_for(stage)
        P.train(model=knet, data=digits, stage=stage, train=spec, loop=loop)
    assert all(np.array_equal(a, b) for a, b in zip(stats(frozen), frozen_before))
    kept = all(np.array_equal(a, b) for a, b in zip(stats(live), live_before))
    assert kept is (batchnorm == "frozen")  # bit-identical when frozen, re-estimated when trained
    assert not np.array_equal(np.asarray(live.gamma), gamma_before)  # gamma trains in both modes


# Learning, per-epoch reports and evaluate's shapes: tle.testing's suite (tests/test_conformance_keras.py).


@child
@pytest.mark.parametrize("name,channels", [("vgg_small", 1), ("resnet_small", 3), ("resnet18", 3),
                                           ("keras_mobilenet_v2", 1)])
def test_onnx_parity(name, channels, tmp_path):
    import onnxruntime as ort

    knet = build(name, classes=4, shape=(32, 32, channels))
    x = np.random.default_rng(0).random((5, 32, 32, channels), dtype=np.float32)
    meta = ExportMetadata(class_names=list("abcd"), image_size=(32, 32), channels=channels, backend="keras",
                          model=name)
    path = P.export_onnx(model=knet, path=tmp_path / "m.onnx", sample=x, metadata=meta)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    assert spec.type == "tensor(float)" and list(spec.shape[1:]) == [32, 32, channels]
    assert not isinstance(spec.shape[0], int)  # dynamic batch
    reference = P.evaluate(model=knet, images=x, labels=np.zeros(5, np.int64), batch_size=5).logits
    for batch in (x, x[:1]):
        out = session.run(None, {spec.name: batch})[0]
        np.testing.assert_allclose(out, reference[:len(batch)], atol=1e-4, rtol=1e-3)
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["tle.class_names"]) == list("abcd") and props["tle.input_layout"] == "NHWC"


@child
def test_save_and_load_round_trip(digits, tmp_path):
    names = digits.class_names
    knet = build("vgg_small", shape=digits.input_shape, class_names=names)
    path = P.save_weights(model=knet, directory=tmp_path)
    assert path.endswith("weights.h5")
    x = digits.x_test[:16]
    same = build("vgg_small", shape=digits.input_shape, class_names=names, seed=5,
                 weights=ResolvedWeights(kind="file", source="runs:/x", path=path, class_names=tuple(names)))
    assert same.new_head == []
    np.testing.assert_array_equal(P.evaluate(model=same, images=x, labels=digits.y_test[:16], batch_size=8).logits,
                                  P.evaluate(model=knet, images=x, labels=digits.y_test[:16], batch_size=8).logits)
    other = build("vgg_small", classes=3, shape=digits.input_shape, class_names=["a", "b", "c"], seed=5,
                  weights=ResolvedWeights(kind="file", source="runs:/x", path=path, class_names=tuple(names)))
    assert other.new_head
    for layer in knet.layers_of("block3"):
        for a, b in zip(layer.weights, other.net.get_layer(layer.name).weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert other.net.get_layer("head_logits").kernel.shape[-1] == 3
    fresh_fc1 = build("vgg_small", classes=3, shape=digits.input_shape, seed=5).net.get_layer("head_fc1").kernel
    np.testing.assert_array_equal(np.asarray(other.net.get_layer("head_fc1").kernel), np.asarray(fresh_fc1))
    # A Keras model archive of the same architecture is read by layer name too.
    knet.net.save(tmp_path / "model.keras")
    from_archive = build("vgg_small", shape=digits.input_shape, seed=7,
                         weights=ResolvedWeights(kind="file", source="model.keras", path=tmp_path / "model.keras"))
    np.testing.assert_array_equal(np.asarray(from_archive.net.get_layer("block5_conv3").kernel),
                                  np.asarray(knet.net.get_layer("block5_conv3").kernel))
    with pytest.raises(UserError, match="block1_conv1"):
        build("resnet_small", shape=digits.input_shape, weights=ResolvedWeights(kind="file", source="f", path=path))


@child
def test_resume_restores_optimizer_state_and_continues_exactly(digits, tmp_path):
    # A dense head (dropout) and augmentation: a resumed stage must see the batches, augmented images and
    # dropout masks of the uninterrupted one.
    ckpt, after2 = tmp_path / "ckpt.npz", tmp_path / "after2.npz"
    spec = TrainSpec(epochs=3, batch_size=64, augment=True)
    head = HeadSpec(kind="dense")
    knet = build("vgg_small", shape=digits.input_shape, head=head)
    stage3 = build_plan("scratch", knet.block_names, Rates(3, 1e-3)).stages[0]
    steps = -(-len(digits.y_train) // 64)
    saved = {}

    def after_epoch(record):  # the checkpoint of epoch 2 and the state it must hold
        if record.epoch == 1:
            shutil.copy(ckpt, after2)
            saved["optimizer"] = [np.asarray(v).copy() for v in knet.optimizer.variables]
            saved["weights"] = [np.asarray(v).copy() for v in knet.net.weights]
            saved["iterations"] = int(knet.optimizer.iterations)

    loop = TrainLoop(stage3, listeners=Listeners(on_epoch=after_epoch), checkpointing=Checkpointing(ckpt))
    P.train(model=knet, data=digits, stage=stage3, train=spec, loop=loop)
    assert saved["iterations"] == 2 * steps

    resumed = build("vgg_small", shape=digits.input_shape, head=head, seed=3)
    loop, records = loop_for(stage3, start_epoch=2, resume_from=after2)
    trained = P.train(model=resumed, data=digits, stage=stage3, train=spec, loop=loop)
    assert [r.epoch for r in records] == [2] and trained.epochs == 1 and not trained.stopped_early
    assert int(resumed.optimizer.iterations) == 3 * steps  # continued from the saved counter
    images = digits.x_test[:32]
    np.testing.assert_allclose(P.evaluate(model=resumed, images=images, labels=None, batch_size=32).logits,
                               P.evaluate(model=knet, images=images, labels=None, batch_size=32).logits, atol=1e-5)
    # Loading alone restores everything exactly.
    again = build("vgg_small", shape=digits.input_shape, head=head, seed=4)
    from tle_keras.train import load_checkpoint, make_optimizer

    opt = make_optimizer(spec, 1e-3)
    assert load_checkpoint(after2, again, opt, again.net.trainable_variables) == 2
    assert all(np.array_equal(a, np.asarray(v)) for a, v in zip(saved["weights"], again.net.weights))
    restored = [np.asarray(v) for v in opt.variables]
    assert len(restored) == len(saved["optimizer"])
    assert all(np.array_equal(a, b) for a, b in zip(saved["optimizer"], restored))


@child
def test_feature_cache_matches_full_forward(digits):
    results = {}
    for cache in (True, False):
        knet = build("resnet_small", shape=digits.input_shape, seed=0)
        plan = build_plan("feature-extractor", knet.block_names, Rates(3, 3e-3))
        stage = plan.stages[0]
        P.freeze_policy(model=knet, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
        loop, records = loop_for(stage)
        out = P.train(model=knet, data=digits, stage=stage, train=TrainSpec(cache_features=cache), loop=loop)
        last = records[-1].metrics
        results[cache] = (out.metrics["cached_blocks"], last["val_acc"], last["train_loss"])
    assert results[True][0] == 5 and results[False][0] == 0
    # Same start, same data order and dropout seeds; only float summation order differs.
    assert abs(results[True][1] - results[False][1]) < 0.05
    assert results[True][2] == pytest.approx(results[False][2], rel=0.05)


@child
def test_imagenet_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("TLE_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        build("keras_vgg16", weights=ResolvedWeights(kind="imagenet", source="imagenet"))
    text = str(info.value) + str(getattr(info.value, "hint", "")) + repr(info.value.args)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in text
    assert "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" in text
    with pytest.raises(UserError, match="no ImageNet weights"):
        build("vgg_small", weights=ResolvedWeights(kind="imagenet", source="imagenet"))


@child
def test_original_head():
    knet = build("keras_vgg16", head=HeadSpec(kind="original"))
    assert [layer.name for layer in knet.layers_of(HEAD) if layer.weights] == ["fc1", "fc2", "head_logits"]
    assert knet.new_head == ["head_logits"]
    assert np.asarray(knet.net.get_layer("head_logits").kernel).std() == pytest.approx(0.01, rel=0.05)
    small = build("vgg_small", head=HeadSpec(kind="original"))
    # torch's vgg_small classifier: 32 -> 64 -> 64 -> 10, only the last layer new.
    assert [layer.name for layer in small.layers_of(HEAD) if layer.weights] == ["fc1", "fc2", "head_logits"]
    assert small.new_head == ["head_logits"]
    counts = {c.name: c.total for c in P.count_parameters(model=small)}
    assert counts[HEAD] == (32 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)
