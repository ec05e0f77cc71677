"""The example NumPy backend (examples/numpy_backend), hook by hook, on real digits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pluggy
import pytest

from tle import UserError
from tle.contract import hookspecs
from tle.contract.records import Blueprint, ExportMetadata, ResolvedWeights, Trained
from tle.data import Dataset
from tle.contract.initializers import InitSpec
from tle.contract.spec import HeadSpec, TrainSpec
from tle.contract.strategy import HEAD, Stage, Rates, build_plan

try:
    import tle_numpy  # noqa: F401
except ImportError:  # not pip-installed: test the source tree directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "numpy_backend"))
from tle_numpy import plugin  # noqa: E402


def manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("tle")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin)  # validates every hookimpl's argument names against its spec
    return pm


# Called the way the core calls them: through pluggy, every argument by name.
hook = manager().hook
SHAPE = (8, 8, 1)
HEAD_SPEC = HeadSpec()  # dense, 256 hidden, dropout 0.5


class StubLoop:
    """Records what the backend tells the core's loop."""

    def __init__(self, start_epoch: int = 0, stop_after: int | None = None, checkpoint_path=None,
                 resume_from=None):
        self.start_epoch = start_epoch
        self.checkpoint_path = checkpoint_path
        self.resume_from = resume_from
        self.stop_after = stop_after
        self.started: list[tuple[int, int]] = []
        self.ended: list[tuple[int, dict]] = []
        self.batches = 0

    def epoch_start(self, epoch, batches):
        self.started.append((epoch, batches))

    def batch_end(self):
        self.batches += 1

    def epoch_end(self, epoch, metrics):
        self.ended.append((epoch, dict(metrics)))

    @property
    def should_stop(self):
        return self.stop_after is not None and len(self.ended) >= self.stop_after


def digits(classes: int = 10) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits(n_class=classes)
    x = (d.images.reshape(-1, *SHAPE) / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_val = n_test = len(y) // 10
    val, test, tr = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    return Dataset(f"digits:{classes}", [str(i) for i in range(classes)], x[tr], y[tr], x[val], y[val],
                   x[test], y[test], indices={"train": tr, "val": val, "test": test})


@pytest.fixture(scope="module")
def data() -> Dataset:
    return digits()


def build(data, model="mlp", weights=None, head=HEAD_SPEC, seed=0, shape=SHAPE, classes=None, names=None):
    names = names or (data.class_names if classes is None else [str(i) for i in range(classes)])
    return hook.load_backbone(blueprint=Blueprint(model=model, class_names=names, input_shape=shape, head=head,
                                                  device="auto", precision="fp32", seed=seed),
                              weights=weights or ResolvedWeights(kind="none"))


def stage_for(trainable: dict[str, bool], epochs=5, lr=1e-3) -> Stage:
    return Stage(0, "train", trainable, epochs, lr)


def arrays(net) -> dict[str, np.ndarray]:
    return {f"{layer.name}.{k}": getattr(layer, k).copy() for layer in net.layers for k in ("W", "b")}


@pytest.fixture(scope="module")
def trained(data):
    net = build(data)
    stage = build_plan("scratch", ("block1", "block2"), Rates(5, 1e-3)).stages[0]
    loop = StubLoop()
    hook.train(model=net, data=data, stage=stage, train=TrainSpec(epochs=5, seed=0), loop=loop)
    return net, loop


def test_backend_info_and_models():
    info = hook.backend_info()
    assert (info.name, info.framework, info.framework_version) == ("numpy", "numpy", np.__version__)
    assert "onnx" in info.capabilities
    models = {m.name: m.blocks for batch in hook.register_models() for m in batch}
    assert models == {"mlp": ("block1", "block2"), "mlp3": ("block1", "block2", "block3")}
    assert hook.fuse(models=[], class_names=[], options={}, images=None) is None


def test_scratch_training_learns_digits_and_reports_every_epoch(data, trained):
    net, loop = trained
    batches = -(-len(data.y_train) // 32)
    assert loop.started == [(e, batches) for e in range(5)]
    assert loop.batches == 5 * batches
    assert [e for e, _ in loop.ended] == list(range(5))
    for _, metrics in loop.ended:
        assert set(metrics) == {"train_loss", "train_acc", "val_loss", "val_acc", "lr"}
        assert all(np.isfinite(v) for v in metrics.values())
    assert loop.ended[-1][1]["val_acc"] > 0.85
    assert loop.ended[-1][1]["train_loss"] < loop.ended[0][1]["train_loss"]

    ev = hook.evaluate(model=net, images=data.x_val, labels=data.y_val, batch_size=50)
    assert ev.logits.shape == (len(data.y_val), 10)
    assert ev.loss == pytest.approx(loop.ended[-1][1]["val_loss"], rel=1e-5)
    assert (ev.predictions == data.y_val).mean() == pytest.approx(loop.ended[-1][1]["val_acc"])


def test_resume_and_early_stop_follow_the_loop(data):
    loop = StubLoop(start_epoch=3)
    result = hook.train(model=build(data), data=data, stage=stage_for({"block1": True, "block2": True, HEAD: True}),
                        train=TrainSpec(), loop=loop)
    assert [e for e, _ in loop.ended] == [3, 4]
    assert result == Trained(epochs=2, stopped_early=False)
    loop = StubLoop(stop_after=1)
    result = hook.train(model=build(data), data=data, stage=stage_for({"block1": True, "block2": True, HEAD: True}),
                        train=TrainSpec(), loop=loop)
    assert len(loop.ended) == 1
    assert result == Trained(epochs=1, stopped_early=True)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_frozen_blocks_stay_bit_identical(data, optimizer):
    net = build(data)
    trainable = {"block1": False, "block2": True, HEAD: True}
    hook.freeze_policy(model=net, trainable=trainable, fixed_stats=(), params="all")
    before = arrays(net)
    hook.train(model=net, data=data, stage=stage_for(trainable, epochs=1, lr=1e-2),
                 train=TrainSpec(optimizer=optimizer, weight_decay=1e-3), loop=StubLoop())
    after = arrays(net)
    for name in before:
        if name.startswith("block1."):
            assert np.array_equal(before[name], after[name]), name
        else:
            assert not np.array_equal(before[name], after[name]), name


def test_count_parameters_follow_freeze_policy(data):
    net = build(data)
    block1, block2 = 64 * 128 + 128, 128 * 64 + 64
    head = (64 * 256 + 256) + (256 * 10 + 10)
    counts = hook.count_parameters(model=net)
    assert [(c.name, c.total, c.trainable) for c in counts] == [
        ("block1", block1, block1), ("block2", block2, block2), (HEAD, head, head)]
    hook.freeze_policy(model=net, trainable={"block1": False, "block2": True, HEAD: True}, fixed_stats=("block1",),
                       params="all")
    assert [c.trainable for c in hook.count_parameters(model=net)] == [0, block2, head]
    linear = build(data, head=HeadSpec(kind="linear"))
    assert hook.count_parameters(model=linear)[-1].total == 64 * 10 + 10


@pytest.mark.parametrize("name", ["glorot_uniform", "he_normal", "lecun_normal", "normal:0.02"])
def test_initialiser_std_matches_its_definition(data, name):
    net = build(data, shape=(32, 32, 1))  # block1 is 1024 x 128
    block2 = arrays(net)["block2.W"]
    init = InitSpec.parse(name)
    assert hook.apply_init(model=net, blocks=["block1"], init=init, seed=3) is True
    layer = net.layers[0]
    assert layer.W.std() == pytest.approx(init.expected_std(1024, 128), rel=0.03)
    assert abs(layer.W.mean()) < 0.02 * layer.W.std()
    assert not layer.b.any()
    assert np.array_equal(net.layers[1].W, block2)  # other blocks untouched
    if name.endswith("_normal"):  # truncated at 2 sigma of the widened normal
        assert np.abs(layer.W).max() <= 2 * init.expected_std(1024, 128) / 0.87962566 + 1e-6


def test_onnx_export_matches_evaluate_with_a_dynamic_batch(data, trained, tmp_path):
    import onnx
    import onnxruntime as ort

    net, _ = trained
    meta = ExportMetadata(class_names=data.class_names, image_size=(8, 8), channels=1, backend="numpy", model="mlp")
    path = hook.export_onnx(model=net, path=tmp_path / "model.onnx", sample=data.x_test[:4], metadata=meta)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["tle.class_names"]) == data.class_names
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["N", 8, 8, 1]
    for n in (1, 7):
        images = data.x_test[:n]
        (logits,) = session.run(["logits"], {"images": images})
        expected = hook.evaluate(model=net, images=images, labels=data.y_test[:n], batch_size=32).logits
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)


def test_weights_round_trip_keeps_the_head_only_for_the_same_classes(data, trained, tmp_path):
    net, _ = trained
    path = hook.save_weights(model=net, directory=tmp_path)
    assert path == tmp_path / "weights.npz"
    assert {"block1.W", "block2.b", "head.hidden.W", "head.out.b"} <= set(np.load(path).files)

    same = ResolvedWeights(kind="file", path=path, class_names=tuple(data.class_names))
    restored = build(data, weights=same, seed=7)
    for images in (data.x_test, data.x_val):
        a = hook.evaluate(model=net, images=images, labels=None, batch_size=64).logits
        b = hook.evaluate(model=restored, images=images, labels=None, batch_size=64).logits
        assert np.array_equal(a, b)

    fewer = ResolvedWeights(kind="file", path=path, class_names=tuple("01234"))
    five = build(data, weights=fewer, seed=7, classes=5)
    fresh = build(data, seed=7, classes=5)
    old, new, untouched = arrays(net), arrays(five), arrays(fresh)
    for name in new:
        if name.startswith("block"):
            assert np.array_equal(new[name], old[name]), name
        else:
            assert np.array_equal(new[name], untouched[name]), name
    assert new["head.out.W"].shape == (256, 5)

    reordered = build(data, weights=same, seed=7, names=list(reversed(data.class_names)))
    assert np.array_equal(arrays(reordered)["head.out.W"], arrays(build(data, seed=7))["head.out.W"])

    unknown = ResolvedWeights(kind="file", path=path, class_names=None)  # a bare file: classes unknown
    kept = arrays(build(data, weights=unknown, seed=7))["head.out.W"]
    assert np.array_equal(kept, arrays(build(data, seed=7))["head.out.W"])


def test_weights_that_do_not_fit_name_the_layer(data, trained, tmp_path):
    path = hook.save_weights(model=trained[0], directory=tmp_path)
    with pytest.raises(UserError, match=r"block1\.W"):
        build(data, weights=ResolvedWeights(kind="file", path=path), shape=(16, 16, 1))
    with pytest.raises(UserError, match=r"block1\.W"):  # mlp3's block1 is 256 wide
        build(data, model="mlp3", weights=ResolvedWeights(kind="file", path=path))
    partial = tmp_path / "partial.npz"
    np.savez(partial, **{k: v for k, v in np.load(path).items() if not k.startswith("block2.")})
    with pytest.raises(UserError, match=r"no layer block2\.W"):
        build(data, weights=ResolvedWeights(kind="file", path=partial))


def test_user_errors(data):
    with pytest.raises(UserError, match="ImageNet"):
        build(data, weights=ResolvedWeights(kind="imagenet", source="imagenet"))
    with pytest.raises(UserError, match="mlp, mlp3"):
        build(data, model="resnet50")
    with pytest.raises(UserError, match="CPU"):
        hook.resolve_device(device="cuda")
    assert hook.resolve_device(device="auto") == "cpu"
