"""CNN fusion with the torch backend: heads trained on one frozen backbone merged S2-style (``tle fuse``).

The unit tests build models by hand and check the ranking, the layout of the
fused head and the refusals; the slow test trains a small backbone, two heads
on it (digits 0-4 and 5-9) and fuses them through the real CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from conftest import tle, tle_inprocess  # noqa: E402
from tle import UserError  # noqa: E402
from tle.contract.records import Blueprint, ResolvedWeights  # noqa: E402
from tle.contract.spec import HeadSpec  # noqa: E402
from tle.contract.head_fusion import importance, ranked  # noqa: E402
from tle_torch import plugin  # noqa: E402
from tle_torch.fusion import backbone_hash  # noqa: E402

A_CLASSES, B_CLASSES = ["0", "1", "2"], ["3", "4", "5", "6"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Models this small gain nothing from a second thread, and on shared CI cores OpenMP's spinning threads
    # make them several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"OMP_NUM_THREADS": "1"}
    torch.set_num_threads(threads)


def build(classes, seed=0, kind="dense", hidden=8):
    return plugin.load_backbone(blueprint=Blueprint(model="vgg_small", class_names=list(classes),
                                                    input_shape=(32, 32, 1), head=HeadSpec(kind=kind, hidden=hidden),
                                                    device="cpu", precision="fp32", seed=seed),
                                weights=ResolvedWeights("none"))


def sibling(net, classes, seed, kind="dense", hidden=8):
    """A head of its own on ``net``'s backbone (what --strategy feature-extractor --weights runs:/NET gives)."""
    other = build(classes, seed=seed, kind=kind, hidden=hidden)
    other.load_state_dict({k: v for k, v in net.state_dict().items() if k.startswith("body.")}, strict=False)
    return other


def images(n=6, seed=0):
    return np.random.default_rng(seed).random((n, 32, 32, 1), dtype=np.float32)


def logits(net, x):
    return plugin.evaluate(model=net, images=x, labels=None, batch_size=len(x)).logits


def test_ranking_sums_the_largest_magnitudes():
    w = np.zeros((4, 10), dtype=np.float32)
    w[0, :] = 0.1  # many small weights: top 10 % is one 0.1
    w[1, 3] = -0.9  # one strong inhibitory weight counts by its magnitude
    w[2, :2] = 0.5
    w[3, 7] = 0.4
    assert np.allclose(importance(w, 0.1), [0.1, 0.9, 0.5, 0.4])
    assert ranked(w, 0.1) == [1, 2, 3, 0]
    assert ranked(w, 0.2) == [2, 1, 3, 0]  # two weights each: 1.0 beats 0.9
    assert ranked(np.zeros((3, 4)), 0.5) == [0, 1, 2]  # ties keep the lower index first


def test_fused_head_keeps_the_top_units_of_each_model_wired_to_their_classes():
    a = build(A_CLASSES, seed=1)
    b = sibling(a, B_CLASSES, seed=2)
    with torch.no_grad():  # biases too, so that carrying them over is checked
        a.head.fc2.bias.uniform_(-1, 1)
        b.head.fc2.bias.uniform_(-1, 1)
    fused = plugin.fuse(models=[a, b], class_names=[A_CLASSES, B_CLASSES], options={"keep": 0.5, "ratio": 0.1}).model
    assert fused.num_classes == 7 and fused.head.fc1.out_features == 8  # the size of one model's head
    w1, w2 = fused.head.fc1.weight.detach(), fused.head.fc2.weight.detach()
    for parent, source in enumerate((a, b)):
        top = ranked(source.head.fc1.weight.detach().numpy(), 0.1)[:4]
        rows = [u for p, u in fused.provenance if p == parent]
        assert rows == top
        cols = [i for i, (p, _) in enumerate(fused.provenance) if p == parent]
        assert torch.equal(w1[cols], source.head.fc1.weight.detach()[top])
        own = slice(0, 3) if parent == 0 else slice(3, 7)
        other = slice(3, 7) if parent == 0 else slice(0, 3)
        assert torch.equal(w2[own][:, cols], source.head.fc2.weight.detach()[:, top])
        assert not w2[other][:, cols].any()  # a unit speaks only for its own model's classes
        assert torch.equal(fused.head.fc2.bias.detach()[own], source.head.fc2.bias.detach())
    assert backbone_hash(fused) == backbone_hash(a)


def test_concatenation_and_linear_heads_reproduce_each_model_on_its_classes():
    x = images()
    a = build(A_CLASSES, seed=1)
    b = sibling(a, B_CLASSES, seed=2)
    both = plugin.fuse(models=[a, b], class_names=[A_CLASSES, B_CLASSES], options={"concatenate": True}).model
    assert both.head.fc1.out_features == 16
    out = logits(both, x)
    assert np.allclose(out[:, :3], logits(a, x), atol=1e-5) and np.allclose(out[:, 3:], logits(b, x), atol=1e-5)

    la = build(A_CLASSES, seed=3, kind="linear")
    lb = sibling(la, B_CLASSES, seed=4, kind="linear")
    merged = plugin.fuse(models=[la, lb], class_names=[A_CLASSES, B_CLASSES], options={}).model
    out = logits(merged, x)
    assert np.allclose(out[:, :3], logits(la, x), atol=1e-5) and np.allclose(out[:, 3:], logits(lb, x), atol=1e-5)


def test_index_alignment_puts_class_k_of_every_model_on_output_k():
    """S2's protocol for heads: output k reads A's kept units through A's class-k weights and B's through B's
    (each halved, the biases averaged), so the full concatenation's logit k is the mean of A's and B's."""
    from tle.studies.fusion import aligned_names

    names = aligned_names([A_CLASSES, ["a", "b", "c"]], "index")
    assert names == [["0/a", "1/b", "2/c"]] * 2
    a = build(A_CLASSES, seed=1)
    b = sibling(a, ["a", "b", "c"], seed=2)
    with torch.no_grad():
        a.head.fc2.bias.uniform_(-1, 1)
        b.head.fc2.bias.uniform_(-1, 1)
    fused = plugin.fuse(models=[a, b], class_names=names, options={"keep": 0.5}).model
    assert fused.num_classes == 3 and fused.head.fc1.out_features == 8
    w2 = fused.head.fc2.weight.detach()
    for parent, source in enumerate((a, b)):
        top = ranked(source.head.fc1.weight.detach().numpy(), 0.1)[:4]
        cols = [i for i, (p, _) in enumerate(fused.provenance) if p == parent]
        assert [u for p, u in fused.provenance if p == parent] == top
        assert torch.allclose(w2[:, cols], source.head.fc2.weight.detach()[:, top] / 2)
    assert torch.allclose(fused.head.fc2.bias.detach(), (a.head.fc2.bias.detach() + b.head.fc2.bias.detach()) / 2)
    x = images()
    both = plugin.fuse(models=[a, b], class_names=names, options={"concatenate": True}).model
    assert np.allclose(logits(both, x), (logits(a, x) + logits(b, x)) / 2, atol=1e-5)


def test_fusion_refuses_other_backbones_heads_and_models():
    a = build(A_CLASSES, seed=1)
    with pytest.raises(UserError, match="backbone weights differ") as err:
        plugin.fuse(models=[a, build(B_CLASSES, seed=2)], class_names=[A_CLASSES, B_CLASSES], options={})
    assert "\n" not in str(err.value) and "feature-extractor" in str(err.value)
    original = sibling(a, B_CLASSES, seed=2, kind="original")
    with pytest.raises(UserError, match="kind 'original'.*supported: 'dense'"):
        plugin.fuse(models=[a, original], class_names=[A_CLASSES, B_CLASSES], options={})
    with pytest.raises(UserError, match="different kinds"):
        plugin.fuse(models=[a, sibling(a, B_CLASSES, seed=2, kind="linear")], class_names=[A_CLASSES, B_CLASSES],
                    options={})
    small = plugin.load_backbone(blueprint=Blueprint(model="resnet_small", class_names=B_CLASSES,
                                                     input_shape=(32, 32, 1), head=HeadSpec(hidden=8), device="cpu",
                                                     precision="fp32", seed=0), weights=ResolvedWeights("none"))
    with pytest.raises(UserError, match="same model and image size"):
        plugin.fuse(models=[a, small], class_names=[A_CLASSES, B_CLASSES], options={})


# -- end to end: tle run x3, tle fuse -------------------------------------------------------------------------


COMMON = {"backend": "torch", "model": "vgg_small", "export": {"onnx": False},
          "tracking": {"experiment": "cnn-fusion"}}


def run(source, strategy="scratch", weights="none", epochs=3, lr=1e-3, train=40, head="dense"):
    from tle.run.runner import RunOptions, run_experiment
    from tle.contract.spec import build_spec

    spec = build_spec({**COMMON, "strategy": strategy, "weights": weights,
                       "dataset": {"source": source, "image_size": 32, "train": train},
                       "head": {"kind": head}, "train": {"epochs": epochs, "lr": lr, "batch_size": 16}})
    return run_experiment(spec, RunOptions(quiet=True))


@pytest.fixture(scope="module")
def fused_runs(store, one_thread):
    # A linear head on the backbone, so that A's dense head starts new like B's (a head for the same classes
    # would come back with the weights) and the two heads' logits have comparable scales.
    backbone = run("digits:0-4", epochs=6, head="linear")
    # Heads train on cached features of the frozen backbone: the whole train split costs little.
    a = run("digits:0-4", "feature-extractor", f"runs:/{backbone.run_id}", epochs=8, lr=3e-3, train=None)
    b = run("digits:5-9", "feature-extractor", f"runs:/{backbone.run_id}", epochs=8, lr=3e-3, train=None)
    proc = tle("--quiet", "fuse", a.run_id, b.run_id, "--align", "names", "--export", "--json",
               env={"MLFLOW_TRACKING_URI": store, **one_thread}, check_rc=0)
    return backbone, a, b, json.loads(proc.stdout)


@pytest.mark.slow
def test_tle_fuse_logs_a_fused_run_beside_bagging_and_the_concatenation(fused_runs, store, tmp_path):
    import mlflow

    backbone, a, b, fused = fused_runs
    acc = fused["accuracy"]
    print(json.dumps(fused))
    assert fused["tasks"] == ["digits:0-4", "digits:5-9", "union"]
    assert list(acc) == ["A", "B", "bagging", "concatenation", "fused"]
    assert a.test.accuracy > 0.6 and b.test.accuracy > 0.6, (a.test.accuracy, b.test.accuracy)  # chance is 0.2
    # Over the ten classes chance is 0.1. B's task is the hard one: the backbone learned 0-4's features, on which
    # A's head is confident about 5-9 images too (bagging loses them the same way).
    assert acc["fused"][0] > 0.5 and acc["fused"][1] > 0.15 and acc["fused"][2] > 0.35, acc
    # On disjoint tasks the concatenation computes each model's own logits: it decides as bagging does.
    assert all(abs(c - g) < 0.01 for c, g in zip(acc["concatenation"], acc["bagging"])), acc
    # One model's hidden layer (256 units), over ten classes instead of five; the concatenation has 512.
    assert fused["sizes"]["fused"] - fused["sizes"]["A"] == 5 * (256 + 1)
    assert fused["sizes"]["concatenation"] - fused["sizes"]["fused"] == 256 * (32 + 1) + 256 * 10
    assert fused["onnx_max_abs_diff"] is not None and fused["onnx_max_abs_diff"] < 1e-4
    client = mlflow.MlflowClient()
    run = client.get_run(fused["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["tle.parents"] == f"{a.run_id},{b.run_id}"
    # B's task lost to A's larger logits (above): a warning in the answer and the run, the run still FINISHED.
    assert [w.split(" bagging ")[0] for w in fused["warnings"]] == ["on digits:5-9"], fused["warnings"]
    assert run.data.tags["tle.warning"] == fused["warnings"][0]
    assert run.data.metrics["concatenation_acc_union"] == acc["concatenation"][2]
    assert run.data.metrics["fused_acc_task1"] == acc["fused"][0]
    artifacts = {f.path for f in client.list_artifacts(fused["run_id"])}
    assert {"weights", "class_names.json", "fusion_report.json"} <= artifacts

    # --weights runs:/FUSED rebuilds the fused model, head included, on the same ten classes: its logits are
    # the logged ONNX model's.
    from tle.interop.serving import open_model
    from tle.store.tracking import artifact_files
    from tle.run.weights import resolve_weights

    weights = resolve_weights(f"runs:/{fused['run_id']}", "torch", tmp_path)
    assert list(weights.class_names) == [str(d) for d in range(10)]
    again = plugin.load_backbone(blueprint=Blueprint(model="vgg_small", class_names=list(weights.class_names),
                                                     input_shape=(32, 32, 1), head=HeadSpec(), device="cpu",
                                                     precision="fp32", seed=9), weights=weights)
    assert again.new_head == []
    onnx_file = [f for f in artifact_files(fused["run_id"], "model", tmp_path / "onnx") if f.suffix == ".onnx"][0]
    x = images(8)
    assert np.allclose(open_model(onnx_file, prefer_gpu=False).logits(x), logits(again, x), atol=1e-4)


@pytest.mark.slow
def test_tle_fuse_align_index_scores_each_task_on_its_own_labels(fused_runs, store, one_thread):
    import mlflow

    _, a, b, names = fused_runs
    proc = tle("--quiet", "fuse", a.run_id, b.run_id, "--align", "index", "--json",
               env={"MLFLOW_TRACKING_URI": store, **one_thread}, check_rc=0)
    fused = json.loads(proc.stdout)
    print(json.dumps(fused))
    acc, union = fused["accuracy"], names["accuracy"]
    assert fused["align"] == "index" and fused["classes"] == [f"{k}/{k + 5}" for k in range(5)]
    assert fused["sizes"]["fused"] == fused["sizes"]["A"]  # one model's size: five outputs, 256 hidden units
    assert acc["A"][0] == union["A"][0] and acc["B"][1] == union["B"][1]  # each alone, on its own task, unchanged
    assert 0 < acc["A"][1] < 0.5 and 0 < acc["B"][0] < 0.5  # the other's images, answered with its own indices
    assert acc["fused"][0] > 0.5 and acc["bagging"][1] >= union["bagging"][1] - 0.02, (acc, union)
    run = mlflow.MlflowClient().get_run(fused["run_id"])
    assert run.data.params["fusion.align"] == "index" and run.data.metrics["fused_acc_task1"] == acc["fused"][0]


@pytest.mark.slow
def test_tle_fuse_refuses_runs_on_different_backbones(fused_runs, store, one_thread):
    _, a, _, _ = fused_runs
    other = run("digits:5-9", epochs=1, train=10)
    proc = tle_inprocess("fuse", a.run_id, other.run_id, env={"MLFLOW_TRACKING_URI": store, **one_thread})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "backbone weights differ" in lines[0], proc.stderr


def test_a_task_that_bagging_or_the_fused_model_loses_is_a_warning():
    from tle.studies.fusion import FusionResult, lost_tasks

    def result(bagging, fused, b=0.8):  # A and B alone 0.9 and 0.8 on their own five-class tasks (chance 0.2)
        acc = {"A": [0.9, 0.1, 0.5], "B": [0.1, b, 0.45], "bagging": bagging, "fused": fused}
        return FusionResult("", [], ["digits", "letters", "union"], acc, {})

    # S2's own loss and the digits 0-4 / 5-9 pair's: not a warning.
    assert lost_tasks(result([0.76, 0.78, 0.77], [0.78, 0.78, 0.78]), [5, 5]) == []
    # More than a third of A's 0.7 above chance (0.233) lost by the fused model alone: one line for digits.
    (line,) = lost_tasks(result([0.9, 0.8, 0.85], [0.66, 0.8, 0.73]), [5, 5])
    assert line.startswith("on digits fused 0.660 against A alone 0.900:") and "bagging" not in line
    # One run outvoting the other on every image: both lose the digits; B's task stays.
    (line,) = lost_tasks(result([0.1, 0.8, 0.45], [0.1, 0.79, 0.45]), [5, 5])
    assert line.startswith("on digits bagging 0.100 and fused 0.100 against A alone 0.900")
    # A parent at chance on its own task (B: 0.1 of ten classes) has nothing to lose.
    assert [line[:10] for line in lost_tasks(result([0.1] * 3, [0.1] * 3, b=0.1), [5, 10])] == ["on digits "]
