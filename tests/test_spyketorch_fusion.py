"""S2's fusion (the backend's ``fuse``), the ONNX graph's parity, the NIR export and the initialisers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tle import UserError  # noqa: E402
from tle.contracts import ExportMetadata, ResolvedWeights  # noqa: E402
from tle.initializers import InitSpec  # noqa: E402
from tle.serving import check_parity, open_model  # noqa: E402
from tle.spec import HeadSpec  # noqa: E402
from tle_spyketorch import plugin  # noqa: E402
from tle_spyketorch.fusion import importance  # noqa: E402


def build(classes, seed=0, size=16, channels=1, model="mozafari_small"):
    return plugin.load_backbone(model=model, num_classes=len(classes), class_names=list(classes),
                                input_shape=(size, size, channels), head=HeadSpec(), weights=ResolvedWeights("none"),
                                device="cpu", seed=seed)


def sibling(net, classes, seed):
    """Network B: A's conv1-conv2, a head of its own (S2's feature-extractor transfer)."""
    other = build(classes, seed=seed)
    other.conv1.data.copy_(net.conv1)
    other.conv2.data.copy_(net.conv2)
    g = torch.Generator().manual_seed(seed)
    other.head.data.uniform_(0.2, 0.8, generator=g)
    return other


def test_fusion_keeps_the_top_neurons_per_class_in_the_class_layout():
    a = build(["0", "1", "2"], seed=1)
    a.head.data.uniform_(0.2, 0.8, generator=torch.Generator().manual_seed(5))
    b = sibling(a, ["3", "4", "5", "6"], seed=2)
    fused = plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names], options={"keep": 0.5, "ratio": 0.1})
    assert fused.class_names == ["0", "1", "2", "3", "4", "5", "6"]
    assert fused.per_class == 10 and fused.head.shape[0] == 70  # half of 20 per class, same layout
    assert torch.equal(fused.conv1, a.conv1) and torch.equal(fused.conv2, a.conv2)
    for row, (parent, neuron) in enumerate(fused.provenance):
        source = (a, b)[parent]
        cls = fused.class_names[row // fused.per_class]
        assert source.class_names[neuron // source.per_class] == cls  # index // per_class is still the class
        assert torch.equal(fused.head[row], source.head[neuron])
    for parent, source in enumerate((a, b)):
        score = importance(source.head, 0.1)
        for c, name in enumerate(source.class_names):
            block = score[c * 20:(c + 1) * 20]
            kept = {n - c * 20 for p, n in fused.provenance if p == parent and c * 20 <= n < (c + 1) * 20}
            assert kept == set(torch.argsort(block, descending=True)[:10].tolist())


def test_fusion_of_overlapping_tasks_tops_up_every_class_to_one_size():
    a = build(["x", "y"], seed=1)
    b = sibling(a, ["y", "z"], seed=2)
    fused = plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names], options={})
    assert fused.class_names == ["x", "y", "z"] and fused.per_class == 20
    parents = [p for p, _ in fused.provenance]
    assert parents[20:40].count(0) == 10 and parents[20:40].count(1) == 10  # the shared class: half from each
    assert set(parents[:20]) == {0} and set(parents[40:]) == {1}


def test_fusion_refuses_networks_with_different_features():
    a, b = build(["0", "1"], seed=1), build(["2", "3"], seed=2)
    with pytest.raises(UserError, match="share conv1-conv2"):
        plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names], options={})


@pytest.mark.parametrize("channels", [1, 3])
def test_onnx_parity_and_nir(tmp_path, channels):
    rng = np.random.default_rng(0)
    net = build([f"c{i}" for i in range(4)], seed=3, channels=channels)
    g = torch.Generator().manual_seed(0)
    for w, share in ((net.conv1, 0.3), (net.conv2, 0.15)):
        w.data.copy_(torch.where(torch.rand(w.shape, generator=g) < share, 0.9, 0.01))
    from tle_torch.testing import digits_dataset

    sample = digits_dataset(range(4), size=16, channels=channels).x_test[:12]
    sample = np.concatenate([sample, rng.random((4, 16, 16, channels), dtype=np.float32)])
    meta = ExportMetadata(class_names=net.class_names, image_size=(16, 16), channels=channels, backend="spyketorch",
                          model="mozafari_small")
    path = plugin.export_onnx(model=net, path=tmp_path / "model.onnx", sample=sample, metadata=meta)
    reference = plugin.evaluate(model=net, images=sample, labels=None, batch_size=5)
    parity = check_parity(open_model(path, prefer_gpu=False), sample, reference.logits, atol=1e-4, rtol=1e-3)
    assert parity.ok and parity.max_abs_diff == 0.0  # every sum is exact, so ONNX Runtime agrees bit for bit
    assert len(np.unique(reference.logits.argmax(1))) > 1
    assert sum(reference.extras["firing_counts"]) + round(reference.extras["silent_rate"] * 16) == 16

    nir = pytest.importorskip("nir")
    written = plugin.export_extras(model=net, directory=tmp_path)
    graph = nir.read(written[0])
    assert np.array_equal(graph.nodes["conv3"].weight.shape, net.head.shape)
    assert float(graph.nodes["if1"].v_threshold.flat[0]) == 15.0


def test_initialisers_are_centred_on_the_synaptic_mean():
    net = build(["0", "1"])
    plugin.apply_init(model=net, blocks=["conv1"], init=InitSpec(name="normal", scale=0.05), seed=0)
    w = net.conv1.detach()
    assert abs(float(w.mean()) - 0.8) < 0.01 and abs(float(w.std()) - 0.05) < 0.01  # Mozafari's N(0.8, 0.05)
    plugin.apply_init(model=net, blocks=["conv2"], init=InitSpec(name="glorot_uniform"), seed=0)
    limit = (6 / (9 * 16 + 9 * 64)) ** 0.5
    assert float(net.conv2.detach().min()) >= 0.8 - limit - 1e-6 and float(net.conv2.detach().max()) <= 0.8 + limit + 1e-6
    plugin.apply_init(model=net, blocks=["conv1"], init=InitSpec(name="he_normal"), seed=0)
    assert float(net.conv1.detach().min()) >= 0.0  # synapses stay non-negative
    with pytest.raises(UserError, match="no block"):
        plugin.apply_init(model=net, blocks=["block9"], init=InitSpec(name="zeros"), seed=0)


def test_freeze_policy_and_counts_follow_the_plan():
    net = build(["0", "1"])
    plugin.freeze_policy(model=net, trainable={"conv1": False, "conv2": False, "head": True})
    counts = {c.name: (c.total, c.trainable) for c in plugin.count_parameters(model=net)}
    assert counts == {"conv1": (16 * 6 * 25, 0), "conv2": (64 * 16 * 9, 0), "head": (40 * 64 * 9, 40 * 64 * 9)}


def test_training_reports_each_epoch_and_resumes_exactly(tmp_path):
    from tle.spec import TrainSpec
    from tle.strategy import build_plan
    from tle_torch.testing import digits_dataset, recording_loop

    data = digits_dataset(range(3), size=16)
    data.x_train, data.y_train = data.x_train[:200], data.y_train[:200]  # a CI-sized budget
    stage = build_plan("scratch", ["conv1", "conv2"], epochs=3, lr=1e-3).stages[0]
    spec = TrainSpec(batch_size=16, epochs=3)

    def fresh():
        return build([str(c) for c in range(3)], seed=4)

    whole = fresh()
    loop, records = recording_loop(stage, checkpoint_path=tmp_path / "last")
    plugin.train(model=whole, data=data, stage=stage, train=spec, loop=loop)
    assert [r.epoch for r in records] == [0, 1, 2]
    assert {"train_acc", "val_acc", "convergence", "conv1_convergence", "conv2_stdp_passes"} <= set(records[0].metrics)
    assert records[-1].metrics["val_acc"] > 0.5  # three classes: chance is 1/3

    # Interrupted after epoch 1: the checkpoint written then, and a fresh model, finish like the whole run.
    cut = build_plan("scratch", ["conv1", "conv2"], epochs=2, lr=1e-3).stages[0]
    loop, _ = recording_loop(cut, checkpoint_path=tmp_path / "cut")
    plugin.train(model=fresh(), data=data, stage=cut, train=spec, loop=loop)
    resumed = fresh()
    loop, later = recording_loop(stage, start_epoch=2, resume_from=tmp_path / "cut")
    plugin.train(model=resumed, data=data, stage=stage, train=spec, loop=loop)
    assert [r.epoch for r in later] == [2]
    assert torch.equal(resumed.head, whole.head) and torch.equal(resumed.conv2, whole.conv2)
