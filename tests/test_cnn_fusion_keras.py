"""CNN fusion with the keras backend (``tle fuse``), in a pytest process of its own.

TensorFlow in the test process and triton later (torch's ONNX exporter in
another module) crash that process, so ``test_keras_fusion_in_own_process``
starts a child pytest (``TLE_KERAS_INPROC=1``) that runs the tests marked
``own_process`` here; ``tests/test_cnn_fusion.py`` is the torch twin.
"""

from __future__ import annotations

import json
import os
from importlib.util import find_spec

import numpy as np
from tle.contract.records import Blueprint
import pytest

from conftest import run_own_process

IN_CHILD = os.environ.get("TLE_KERAS_INPROC") == "1"
pytestmark = pytest.mark.skipif(find_spec("tensorflow") is None or find_spec("keras") is None,
                                reason="tensorflow/keras not installed")
child = pytest.mark.own_process
# Models this small gain nothing from a second thread; on shared CI cores extra threads only contend.
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}
A_CLASSES, B_CLASSES = ["0", "1", "2"], ["3", "4", "5", "6"]


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_keras_fusion_in_own_process():
    run_own_process(__file__, durations=5, env=ONE_THREAD)


def build(classes, seed=0, kind="dense", hidden=8, model="vgg_small"):
    from tle.contract.records import Blueprint, ResolvedWeights
    from tle.contract.spec import HeadSpec
    from tle_keras import plugin

    return plugin.load_backbone(blueprint=Blueprint(model=model, class_names=list(classes), input_shape=(32, 32, 1),
                                                    head=HeadSpec(kind=kind, hidden=hidden), device="cpu",
                                                    precision="fp32", seed=seed), weights=ResolvedWeights("none"))


def sibling(knet, classes, seed, kind="dense", hidden=8):
    """A head of its own on ``knet``'s backbone (what --strategy feature-extractor --weights runs:/NET gives)."""
    other = build(classes, seed=seed, kind=kind, hidden=hidden)
    for block in knet.block_names:
        for source, target in zip(knet.layers_of(block), other.layers_of(block)):
            if source.weights:
                target.set_weights(source.get_weights())
    return other


def logits(knet, x):
    from tle_keras import plugin

    return plugin.evaluate(model=knet, images=x, labels=None, batch_size=len(x)).logits


def images(n=6, seed=0):
    return np.random.default_rng(seed).random((n, 32, 32, 1), dtype=np.float32)


@child
def test_fused_head_keeps_the_top_units_of_each_model_wired_to_their_classes():
    from tle.contract.head_fusion import ranked
    from tle_keras import plugin
    from tle_keras.fusion import backbone_hash

    a = build(A_CLASSES, seed=1)
    b = sibling(a, B_CLASSES, seed=2)
    rng = np.random.default_rng(3)
    for net in (a, b):  # biases too, so that carrying them over is checked
        kernel, bias = net.net.get_layer("head_logits").get_weights()
        net.net.get_layer("head_logits").set_weights([kernel, rng.uniform(-1, 1, bias.shape).astype(np.float32)])
    fused = plugin.fuse(models=[a, b], class_names=[A_CLASSES, B_CLASSES], options={"keep": 0.5, "ratio": 0.1}).model
    assert fused.class_names == A_CLASSES + B_CLASSES
    w1, _ = fused.net.get_layer("head_fc1").get_weights()
    w2, b2 = fused.net.get_layer("head_logits").get_weights()
    assert w1.shape[1] == 8  # the size of one model's hidden layer
    for parent, source in enumerate((a, b)):
        sw1, _ = source.net.get_layer("head_fc1").get_weights()
        sw2, sb2 = source.net.get_layer("head_logits").get_weights()
        top = ranked(sw1.T, 0.1)[:4]
        assert [u for p, u in fused.provenance if p == parent] == top
        cols = [i for i, (p, _) in enumerate(fused.provenance) if p == parent]
        assert np.array_equal(w1[:, cols], sw1[:, top])
        own = slice(0, 3) if parent == 0 else slice(3, 7)
        other = slice(3, 7) if parent == 0 else slice(0, 3)
        assert np.array_equal(w2[cols][:, own], sw2[top])
        assert not w2[cols][:, other].any()  # a unit speaks only for its own model's classes
        assert np.array_equal(b2[own], sb2)
    assert backbone_hash(fused) == backbone_hash(a)


@child
def test_concatenation_reproduces_each_model_on_its_classes():
    from tle_keras import plugin

    x = images()
    a = build(A_CLASSES, seed=1)
    b = sibling(a, B_CLASSES, seed=2)
    both = plugin.fuse(models=[a, b], class_names=[A_CLASSES, B_CLASSES], options={"concatenate": True}).model
    assert both.net.get_layer("head_fc1").get_weights()[0].shape[1] == 16
    out = logits(both, x)
    assert np.allclose(out[:, :3], logits(a, x), atol=1e-5) and np.allclose(out[:, 3:], logits(b, x), atol=1e-5)


@child
def test_fusion_refuses_other_backbones_and_heads():
    from tle import UserError
    from tle_keras import plugin

    a = build(A_CLASSES, seed=1)
    with pytest.raises(UserError, match="backbone weights differ") as err:
        plugin.fuse(models=[a, build(B_CLASSES, seed=2)], class_names=[A_CLASSES, B_CLASSES], options={})
    assert "\n" not in str(err.value) and "feature-extractor" in str(err.value)
    with pytest.raises(UserError, match="kind 'original'.*supported: 'dense'"):
        plugin.fuse(models=[a, sibling(a, B_CLASSES, seed=2, kind="original")],
                    class_names=[A_CLASSES, B_CLASSES], options={})


# -- end to end: tle run x3 in this process, tle fuse through the CLI ------------------------------------------


def run(source, strategy="scratch", weights="none", epochs=3, lr=1e-3, train=40, head="dense"):
    from tle.run.runner import RunOptions, run_experiment
    from tle.contract.spec import build_spec

    spec = build_spec({"backend": "keras", "model": "vgg_small", "export": {"onnx": False},
                       "tracking": {"experiment": "cnn-fusion-keras"}, "strategy": strategy, "weights": weights,
                       "dataset": {"source": source, "image_size": 32, "train": train},
                       "head": {"kind": head}, "train": {"epochs": epochs, "lr": lr, "batch_size": 16}})
    return run_experiment(spec, RunOptions(quiet=True))


@child
@pytest.mark.slow
def test_tle_fuse_logs_a_fused_run_beside_bagging_and_the_concatenation(store):
    import mlflow

    from conftest import tle, tle_inprocess

    env = {"MLFLOW_TRACKING_URI": store, **ONE_THREAD}
    # A linear head on the backbone, so that A's dense head starts new like B's (a head for the same classes
    # would come back with the weights) and the two heads' logits have comparable scales.
    backbone = run("digits:0-4", epochs=6, head="linear")
    # Heads train on cached features of the frozen backbone: the whole train split costs little.
    a = run("digits:0-4", "feature-extractor", f"runs:/{backbone.run_id}", epochs=8, lr=3e-3, train=None)
    b = run("digits:5-9", "feature-extractor", f"runs:/{backbone.run_id}", epochs=8, lr=3e-3, train=None)
    fused = json.loads(tle("--quiet", "fuse", a.run_id, b.run_id, "--align", "names", "--export", "--json", env=env,
                           check_rc=0).stdout)
    acc = fused["accuracy"]
    print(json.dumps(fused))
    assert list(acc) == ["A", "B", "bagging", "concatenation", "fused"]
    assert a.test.accuracy > 0.6 and b.test.accuracy > 0.6, (a.test.accuracy, b.test.accuracy)  # chance is 0.2
    # Over the ten classes chance is 0.1. B's task is the hard one: the backbone learned 0-4's features, on which
    # A's head is confident about 5-9 images too (bagging loses them the same way).
    assert acc["fused"][0] > 0.5 and acc["fused"][1] > 0.15 and acc["fused"][2] > 0.35, acc
    # On disjoint tasks the concatenation computes each model's own logits: it decides as bagging does.
    assert all(abs(c - g) < 0.01 for c, g in zip(acc["concatenation"], acc["bagging"])), acc
    assert fused["sizes"]["fused"] - fused["sizes"]["A"] == 5 * (256 + 1)
    assert fused["onnx_max_abs_diff"] is not None and fused["onnx_max_abs_diff"] < 1e-4
    run_ = mlflow.MlflowClient().get_run(fused["run_id"])
    assert run_.info.status == "FINISHED" and run_.data.metrics["concatenation_acc_union"] == acc["concatenation"][2]

    # --weights runs:/FUSED rebuilds the fused model with its head for the same ten classes.
    from tle.contract.spec import HeadSpec
    from tle.run.weights import resolve_weights
    from tle_keras import plugin

    weights = resolve_weights(f"runs:/{fused['run_id']}", "keras")
    again = plugin.load_backbone(blueprint=Blueprint(model="vgg_small", class_names=list(weights.class_names),
                                                     input_shape=(32, 32, 1), head=HeadSpec(), device="cpu",
                                                     precision="fp32", seed=9), weights=weights)
    assert again.new_head == [] and again.class_names == [str(d) for d in range(10)]

    # Runs on other backbones: one line, exit 2.
    other = run("digits:5-9", epochs=1, train=10)
    proc = tle_inprocess("fuse", a.run_id, other.run_id, env=env)  # this child process has TensorFlow already
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "backbone weights differ" in proc.stderr

    # --align index (S2's protocol): five outputs, class k of A and of B on output k, each task on its own labels.
    index = json.loads(tle("--quiet", "fuse", a.run_id, b.run_id, "--align", "index", "--json", env=env,
                           check_rc=0).stdout)
    print(json.dumps(index))
    assert index["align"] == "index" and index["classes"] == [f"{k}/{k + 5}" for k in range(5)]
    assert index["sizes"]["fused"] == index["sizes"]["A"]  # one model's size: same outputs, same hidden layer
    iacc = index["accuracy"]
    assert iacc["A"][0] == acc["A"][0] and iacc["A"][1] > 0  # A answers 5-9 images with its own indices
    assert iacc["fused"][0] > 0.5 and iacc["bagging"][1] >= acc["bagging"][1] - 0.02, (iacc, acc)
