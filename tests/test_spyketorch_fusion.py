"""S2's fusion (the backend's ``fuse``), the ONNX graph's parity, the NIR export and the initialisers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tle import UserError  # noqa: E402
from tle.contract.records import Blueprint, ExportMetadata, ResolvedWeights  # noqa: E402
from tle.contract.initializers import InitSpec  # noqa: E402
from tle.interop.serving import check_parity, open_model  # noqa: E402
from tle.contract.spec import HeadSpec  # noqa: E402
from tle_spyketorch import plugin  # noqa: E402
from tle_spyketorch.fusion import importance  # noqa: E402


def build(classes, seed=0, size=16, channels=1, model="mozafari_small"):
    return plugin.load_backbone(blueprint=Blueprint(model=model, class_names=list(classes),
                                                    input_shape=(size, size, channels), head=HeadSpec(), device="cpu",
                                                    precision="fp32", seed=seed), weights=ResolvedWeights("none"))


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
    fused = plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names],
                        images=None, options={"keep": 0.5, "ratio": 0.1, "normalise": False}).model
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
    fused = plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names], images=None, options={}).model
    assert fused.class_names == ["x", "y", "z"] and fused.per_class == 20
    parents = [p for p, _ in fused.provenance]
    assert parents[20:40].count(0) == 10 and parents[20:40].count(1) == 10  # the shared class: half from each
    assert set(parents[:20]) == {0} and set(parents[40:]) == {1}


def test_fusion_refuses_networks_with_different_features():
    a, b = build(["0", "1"], seed=1), build(["2", "3"], seed=2)
    with pytest.raises(UserError, match="share conv1-conv2"):
        plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names], images=None, options={})


def test_index_alignment_gives_every_output_the_top_half_of_each_network():
    """S2's protocol: class k of A and class k of B share output k, which gets A's 10 and B's 10 best neurons."""
    from tle.studies.fusion import aligned_names

    a = build(["0", "1", "2"], seed=1)
    a.head.data.uniform_(0.2, 0.8, generator=torch.Generator().manual_seed(5))
    b = sibling(a, ["a", "b", "c"], seed=2)
    names = aligned_names([a.class_names, b.class_names], "index")
    assert names == [["0/a", "1/b", "2/c"]] * 2
    fused = plugin.fuse(models=[a, b], class_names=names, images=None, options={"normalise": False}).model
    assert fused.class_names == ["0/a", "1/b", "2/c"] and fused.per_class == 20 and fused.head.shape[0] == 60
    for k in range(3):
        rows = fused.provenance[k * 20:(k + 1) * 20]
        for parent, source in enumerate((a, b)):
            block = importance(source.head, 0.1)[k * 20:(k + 1) * 20]
            top = (torch.argsort(block, descending=True)[:10] + k * 20).tolist()
            mine = [n for p, n in rows if p == parent]
            assert mine == sorted(top, key=lambda n: -float(block[n - k * 20]))  # ranked, most important first
        assert [p for p, _ in rows] == [0] * 10 + [1] * 10
    for row, (parent, neuron) in enumerate(fused.provenance):
        assert torch.equal(fused.head[row], (a, b)[parent].head[neuron])


def test_activity_ranking_keeps_the_neurons_that_decide_on_their_own_training_images():
    """rank=activity: per class, each net's neurons ordered by how many of its own training images they decide
    (ties by S2's sum of the top synapses); without images the ranking is S2's sum alone."""
    from tle.studies.fusion import aligned_names
    from tle_spyketorch.fusion import decisions
    from tle_torch.testing import digits_dataset

    a = build(["0", "1", "2"], seed=1)
    a.head.data.uniform_(0.2, 0.8, generator=torch.Generator().manual_seed(5))
    b = sibling(a, ["a", "b", "c"], seed=2)
    x_a, x_b = digits_dataset(range(3), size=16).x_train[:60], digits_dataset(range(3, 6), size=16).x_train[:60]
    names = aligned_names([a.class_names, b.class_names], "index")
    answer = plugin.fuse(models=[a, b], class_names=names, images=[x_a, x_b], options={"normalise": False})
    assert answer.ranked_by == "activity"
    fused = answer.model
    for parent, (net, x) in enumerate(((a, x_a), (b, x_b))):
        counts, score = decisions(net, x), importance(net.head, 0.1)
        value, best = net.final_potentials(torch.from_numpy(np.ascontiguousarray(x))).flatten(2).amax(2).max(1)
        assert int(counts.sum()) == int((value > 0).sum()) > 0  # each image that fires is decided by one neuron
        assert torch.equal(counts, torch.bincount(best[value > 0], minlength=len(counts)))
        for k in range(3):
            mine = [n for p, n in fused.provenance[k * 20:(k + 1) * 20] if p == parent]
            expected = sorted(range(k * 20, (k + 1) * 20), key=lambda i: (-int(counts[i]), -float(score[i]), i))
            assert mine == expected[:10]
    assert plugin.fuse(models=[a, b], class_names=names, images=[x_a, x_b],
                       options={"rank": "weights"}).ranked_by == "weights"


def test_index_alignment_refuses_what_it_cannot_align():
    from tle.studies.fusion import aligned_names

    with pytest.raises(UserError, match="as many classes, these have A 3, B 2") as err:
        aligned_names([["0", "1", "2"], ["a", "b"]], "index")
    assert "--align names" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="class '1' is class 1 of run A and class 0 of run B"):
        aligned_names([["0", "1"], ["1", "2"]], "index")
    assert aligned_names([["x", "y"], ["x", "z"]], "index") == [["x", "y/z"]] * 2  # a shared class keeps one name
    assert aligned_names([["0", "1"], ["2"]], "names") == [["0", "1"], ["2"]]
    with pytest.raises(UserError, match="not one of index, names"):
        aligned_names([["0"], ["1"]], "position")
    from tle.studies.fusion import FusionRequest, run_fusion

    with pytest.raises(UserError, match="--rank 'often' is not one of activity, weights"):
        run_fusion(["run_a", "run_b"], FusionRequest(rank="often"))  # refused before any store is opened
    with pytest.raises(UserError, match="--normalise 'mean' is not one of validation, weights, none"):
        run_fusion(["run_a", "run_b"], FusionRequest(normalise="mean"))


def test_normalise_brings_both_networks_to_the_lighter_ones_mean_synapse():
    """Potentials grow with a net's synaptic mass: the heavier net would answer every image. One factor per net
    puts both on the lighter one's scale, from the weights alone; each net's own decisions stay as they were."""
    from tle.studies.fusion import aligned_names

    a = build(["0", "1", "2"], seed=1)
    a.head.data.uniform_(0.2, 0.8, generator=torch.Generator().manual_seed(5))
    b = sibling(a, ["a", "b", "c"], seed=2)
    b.head.data.mul_(0.9)  # B's synapses lighter on the whole
    answer = plugin.fuse(models=[a, b], class_names=aligned_names([a.class_names, b.class_names], "index"),
                         images=None, options={})  # the hook's default: from the weights
    fused = answer.model
    expected = float(b.head.detach().double().mean()) / float(a.head.detach().double().mean())
    assert answer.scales == pytest.approx((expected, 1.0)) and expected < 0.95
    assert float(fused.head.max()) <= 1.0 and float(fused.head.min()) >= 0.0
    for row, (parent, neuron) in enumerate(fused.provenance):
        assert torch.allclose(fused.head[row], (a, b)[parent].head[neuron] * answer.scales[parent])
    from tle_torch.testing import digits_dataset

    x = digits_dataset(range(3), size=16).x_test[:16]
    raw = plugin.evaluate(model=a, images=x, labels=None, batch_size=16).logits
    scaled = build(["0", "1", "2"], seed=1)
    scaled.load_state_dict(a.state_dict())
    scaled.head.data.mul_(answer.scales[0])
    assert np.array_equal(plugin.evaluate(model=scaled, images=x, labels=None, batch_size=16).logits.argmax(1),
                          raw.argmax(1))
    off = plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names], images=None,
                      options={"normalise": False})
    assert off.scales == (1.0, 1.0)
    # Factors the core measured (tle fuse --normalise validation) replace the weights' ones, over their largest
    # so that no synapse exceeds 1: the same comparisons between the nets.
    given = plugin.fuse(models=[a, b], class_names=[a.class_names, b.class_names], images=None,
                        options={"scales": (1.0, 1.25)})
    assert given.scales == pytest.approx((0.8, 1.0))
    for row, (parent, neuron) in enumerate(given.model.provenance):
        assert torch.allclose(given.model.head[row], (a, b)[parent].head[neuron] * given.scales[parent])


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
    limit = (6 / (9 * 16 + 9 * 64)) ** 0.5 + 2**-17  # conv2's synapses sit on its grid (2**-16 for 144 inputs)
    assert float(net.conv2.detach().min()) >= 0.8 - limit and float(net.conv2.detach().max()) <= 0.8 + limit
    assert torch.equal(net.conv2.detach(), torch.round(net.conv2.detach() * 2**16) / 2**16)
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
    from tle.contract.spec import TrainSpec
    from tle.contract.strategy import Rates, build_plan
    from tle_torch.testing import digits_dataset, recording_loop

    data = digits_dataset(range(3), size=16)
    data.x_train, data.y_train = data.x_train[:200], data.y_train[:200]  # a CI-sized budget
    stage = build_plan("scratch", ["conv1", "conv2"], Rates(3, 1e-3)).stages[0]
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
    cut = build_plan("scratch", ["conv1", "conv2"], Rates(2, 1e-3)).stages[0]
    loop, _ = recording_loop(cut, checkpoint_path=tmp_path / "cut")
    plugin.train(model=fresh(), data=data, stage=cut, train=spec, loop=loop)
    resumed = fresh()
    loop, later = recording_loop(stage, start_epoch=2, resume_from=tmp_path / "cut")
    plugin.train(model=resumed, data=data, stage=stage, train=spec, loop=loop)
    assert [r.epoch for r in later] == [2]
    assert torch.equal(resumed.head, whole.head) and torch.equal(resumed.conv2, whole.conv2)


# -- through the CLI: S2 in small, aligned by index ---------------------------------------------------------------


def _cli_run(env, *args, seed=0) -> str:
    from conftest import spiking_run

    return spiking_run(env, *args, experiment="snn-align", seed=seed)["run_id"]


@pytest.fixture(scope="module")
def s2_index(store):
    import json

    from conftest import tle

    env = {"MLFLOW_TRACKING_URI": store}
    # Seed 0 of examples/s2_fusion.sh (which runs seeds 0-2 for the README's mean ± sd). Not mozafari_small: its
    # fused net measured 0.11 / 0.14 below bagging (4 epochs), the half of its neurons that fusion prunes carries
    # more of its decisions.
    out, pairs = {}, []
    for seed in (0,):
        a = _cli_run(env, "--dataset", "digits:0-4", "--epochs", 10, seed=seed)
        b = _cli_run(env, "--dataset", "digits:5-9", "--epochs", 10, "--strategy", "feature-extractor",
                     "--weights", f"runs:/{a}", seed=seed)
        pairs.append((a, b))
        modes = (("index", "validation", "activity"), ("index", "validation", "weights"),
                 ("index", "none", "activity"), ("names", "validation", "activity"))
        for align, normalise, rank in modes:
            proc = tle("--quiet", "fuse", a, b, "--align", align, "--normalise", normalise, "--rank", rank,
                       "--no-export", "--json", env=env, check_rc=0)
            out[align, normalise, rank] = json.loads(proc.stdout)
    return env, *pairs[0], out


@pytest.mark.slow
def test_index_fusion_stays_near_bagging_on_both_tasks(s2_index):
    import mlflow

    _, a, b, out = s2_index
    fused = out["index", "validation", "activity"]
    acc = fused["accuracy"]
    print({k: v["accuracy"] for k, v in out.items()})
    assert fused["align"] == "index" and fused["classes"] == [f"{k}/{k + 5}" for k in range(5)]
    assert fused["tasks"] == ["digits:0-4", "digits:5-9", "union"]
    # Each net alone answers the other's images with its own indices (S2's B on digits): near chance, not 0.
    assert acc["A"][0] > 0.6 and acc["B"][1] > 0.5 and 0 < acc["A"][1] < 0.5 and 0 < acc["B"][0] < 0.5, acc
    # S2: fusion costs 3-4 points against bagging. Ranked by activity (how often a neuron decides on its net's own
    # training images) the fused net is within 0.03 of bagging on seeds 0-2 (README); by S2's weight sum, which
    # ties at R-STDP's bound, one seed's gap was up to 0.15, its mean over seeds 0-2 0.07 / 0.10.
    weights = out["index", "validation", "weights"]
    assert fused["ranked_by"] == "activity" and weights["ranked_by"] == "weights"
    for task in (0, 1):
        assert acc["bagging"][task] - acc["fused"][task] < 0.08, (task, acc)
        assert acc["fused"][task] > 0.5, acc
    # By the weight sum one task may gain a little at the other's expense (seed 0, MozafariDeep's geometry:
    # 0.683 / 0.765 against activity's 0.861 / 0.743, which equals bagging): compared over both tasks.
    assert sum(acc["fused"][:2]) >= sum(weights["accuracy"]["fused"][:2]) - 0.04, (acc, weights["accuracy"])
    assert fused["sizes"]["fused"] == fused["sizes"]["A"]
    assert fused["warnings"] == [], fused["warnings"]  # each net keeps its task: not a lost one (tle.studies.fusion.LOST)
    run = mlflow.MlflowClient().get_run(fused["run_id"])
    assert run.data.params["fusion.align"] == "index" and run.data.tags["tle.fusion.align"] == "index"
    assert run.data.params["fusion.normalise"] == "validation" and run.data.params["fusion.rank"] == "activity"
    assert "tle.warning" not in run.data.tags
    assert run.data.metrics["fused_acc_task2"] == acc["fused"][1] and "bagging_acc_task1" in run.data.metrics
    # The factors were measured on the validation splits: bagging there keeps most of each net's task.
    assert max(fused["scales"]) == 1.0 and len(fused["calibration"]["factors"]) == 2
    assert min(fused["calibration"]["val_shares"]) > 0.5, fused["calibration"]
    assert run.data.metrics["bagging_val_acc_task2"] == fused["calibration"]["val_bagging_acc"][1]
    # S2's raw potentials: the nets keep their own scales (factors 1); by names each image meets 10 classes.
    assert out["index", "none", "activity"]["scales"] == [1.0, 1.0]
    names = out["names", "validation", "activity"]
    assert names["align"] == "names" and names["classes"] == [str(d) for d in range(10)]
    assert names["accuracy"]["A"][1] == 0.0 and names["accuracy"]["B"][0] == 0.0


@pytest.mark.slow
def test_index_fusion_of_runs_with_other_class_counts_exits_2_and_logs_nothing(s2_index, store):
    import mlflow

    from conftest import tle_inprocess

    env, a, _, _ = s2_index
    # Five R-STDP epochs: after one, 36 images in two batches leave conv3's 16 positions to one neuron (a
    # FAILED run, see train.check_decisions).
    three = _cli_run(env, "--dataset", "digits:5-7", "--epochs", 5, "--set", "dataset.max_per_class=20",
                     "--strategy", "feature-extractor", "--weights", f"runs:/{a}")
    client = mlflow.MlflowClient()
    before = len(client.search_runs([client.get_experiment_by_name("snn-align").experiment_id]))
    proc = tle_inprocess("fuse", a, three, "--align", "index", env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "as many classes, these have A 5, B 3" in lines[0] and "--align names" in lines[0]
    assert len(client.search_runs([client.get_experiment_by_name("snn-align").experiment_id])) == before
