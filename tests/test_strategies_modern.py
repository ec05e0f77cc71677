"""The fine-tuning methods of today (issue 27): surgical, gradual, lp-ft; train.lr_decay, params, l2sp, schedule.

The grammar, the plans and the schedules are checked without a framework, against hand computations; the
backends' side of them (trainable sets, per-block rates, the L2-SP gradient, each epoch's rate) is the conformance
suite's (``tle.testing``), which every backend inherits. Here, beside those: the two frameworks give the same plan
on vgg16 and resnet50 and the same rates per epoch; a backend that cannot apply a field refuses it in one line
before any run; a torch run of ``gradual`` with every field resumes mid-way through a later stage exactly, caches
the prefix that stays frozen, and exports nothing of its regulariser; a sweep can vary every field and ``tle
compare`` keeps each method its own cell. (The study, ``scripts/docs_tables.py strategies``, runs all of it: 182
runs of a sweep over the methods, read back by ``tle compare``.)
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tle_inprocess
from tle.contract.hookspecs import hookimpl
from tle.contract.spec import build_spec
from tle.contract.strategy import HEAD, Rates, Tuning, build_plan, parse_strategy
from tle.contract.tuning import Schedule, decay_factors
from tle.errors import UserError

VGG = ("block1", "block2", "block3", "block4", "block5")


# -- grammar and plans (no framework) ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, block", [("surgical:block2", "surgical", "block2"), ("gradual", "gradual", None),
                                               ("gradual:block3", "gradual", "block3"), ("lp-ft", "lp-ft", None),
                                               ("LPFT", "lp-ft", None)])
def test_the_new_strategies_parse(text, kind, block):
    s = parse_strategy(text)
    assert (s.kind, s.block) == (kind, block) and s.needs_pretrained


@pytest.mark.parametrize("text, says", [("surgical", "needs a block"), ("lp-ft:block1", "takes no block"),
                                        ("gradual:all", "only valid with transfer"), ("surgical:all", "only valid")])
def test_the_new_strategies_refuse_what_they_cannot_mean(text, says):
    with pytest.raises(ValueError, match=says):
        parse_strategy(text)


def test_surgical_trains_one_block_and_the_head_after_a_probe():
    plan = build_plan("surgical:block2", VGG, Rates(4, 1e-3, finetune_epochs=3, finetune_lr=1e-4))
    head, surgical = plan.stages
    assert head.trainable_blocks == [HEAD] and (head.epochs, head.lr) == (4, 1e-3)
    assert surgical.trainable_blocks == ["block2", HEAD] and (surgical.epochs, surgical.lr) == (3, 1e-4)
    assert plan.pretrained == VGG and plan.reinit == (HEAD,)
    # Only block2 trains, so only block1 is a frozen prefix to cache.
    assert plan.frozen_prefix(surgical) == 1


def test_gradual_unfreezes_one_block_per_stage_from_the_top_down_to_its_block():
    plan = build_plan("gradual:block3", VGG, Rates(2, 1e-3, finetune_lr=1e-4, gradual_epochs=3))
    assert [s.trainable_blocks for s in plan.stages] == [
        [HEAD], ["block5", HEAD], ["block4", "block5", HEAD], ["block3", "block4", "block5", HEAD]]
    assert [s.name for s in plan.stages] == ["head", "unfreeze-block5", "unfreeze-block4", "unfreeze-block3"]
    assert [(s.epochs, s.lr) for s in plan.stages] == [(2, 1e-3)] + [(3, 1e-4)] * 3
    assert [plan.frozen_prefix(s) for s in plan.stages] == [5, 4, 3, 2]  # the prefix that stays frozen shrinks
    assert len(build_plan("gradual", VGG, Rates(2, 1e-3)).stages) == 6  # down to block1


def test_lp_ft_is_finetune_of_the_first_block():
    rates = Rates(3, 1e-3, finetune_epochs=4, finetune_lr=2e-4)
    lpft, first = build_plan("lp-ft", VGG, rates), build_plan("finetune:block1", VGG, rates)
    assert [s.name for s in lpft.stages] == ["probe", "finetune"]
    for a, b in zip(lpft.stages, first.stages, strict=True):
        assert (a.trainable, a.epochs, a.lr, a.fixed_stats) == (b.trainable, b.epochs, b.lr, b.fixed_stats)


def test_lr_decay_factors_are_gamma_to_the_blocks_above():
    assert decay_factors(VGG, 0.5) == {"block1": 0.0625, "block2": 0.125, "block3": 0.25, "block4": 0.5, "block5": 1}
    plan = build_plan("finetune:block4", VGG, Rates(1, 1e-3, finetune_lr=1e-4, lr_decay=0.7))
    head, tune = plan.stages
    assert dict(head.lr_factors) == {HEAD: 1.0}
    assert dict(tune.lr_factors) == pytest.approx({"block4": 0.7, "block5": 1.0, HEAD: 1.0})
    assert tune.factor("block4") * tune.rate(0) == pytest.approx(0.7e-4)


def test_params_and_l2sp_reach_every_stage():
    plan = build_plan("transfer:block2", VGG, Rates(2, 1e-3), Tuning(params="bias+norm", l2sp=(0.1, 0.01)))
    (stage,) = plan.stages
    assert stage.params == "bias+norm"
    assert stage.l2sp is not None and stage.l2sp.pretrained == ("block1", "block2")
    assert stage.l2sp.pull("block2") == (0.1, True) and stage.l2sp.pull("block3") == (0.01, False)
    assert stage.l2sp.pull(HEAD) == (0.01, False)
    with pytest.raises(UserError, match="train.params"):
        build_plan("scratch", VGG, Rates(1, 1e-3), Tuning(params="weights"))


@pytest.mark.parametrize("kind, warmup, epochs, want", [
    ("constant", 0, 3, [1, 1, 1]),
    ("constant", 2, 4, [1 / 3, 2 / 3, 1, 1]),
    ("cosine", 0, 4, [1, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]),
    ("cosine", 1, 3, [0.5, 1, 0.5]),
    ("step", 0, 4, [1, 1, 0.1, 0.01]),
    ("step", 0, 8, [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]),
    ("step", 0, 2, [1, 0.1]),
    ("step", 1, 2, [0.5, 1]),
    ("cosine", 3, 2, [0.25, 0.5]),  # a stage shorter than its warm-up warms up throughout
])
def test_schedule_factors_by_hand(kind, warmup, epochs, want):
    assert list(Schedule(kind, warmup).factors(epochs)) == pytest.approx(want)


def test_a_stage_rates_each_epoch_on_its_own_rate():
    plan = build_plan("finetune:block5", VGG, Rates(2, 1e-3, finetune_epochs=3, finetune_lr=1e-4,
                                                     schedule=Schedule("cosine", 1)))
    assert plan.stages[0].rates() == pytest.approx((0.5e-3, 1e-3))
    assert plan.stages[1].rates() == pytest.approx((0.5e-4, 1e-4, 0.5e-4))


# -- the spec ---------------------------------------------------------------------------------------------------

def test_spec_fields_and_their_errors():
    base = {"backend": "torch", "model": "vgg_small"}
    spec = build_spec(base, {"train.l2sp": "0.1,0.01", "train.lr_decay": 0.7, "train.params": "bias+norm",
                             "train.schedule": "step", "train.warmup_epochs": 2, "train.gradual_epochs": 3})
    assert (spec.train.l2sp.alpha, spec.train.l2sp.beta) == (0.1, 0.01)
    assert build_spec(base, {"train.l2sp": 0.05}).train.l2sp.beta == 0.05  # one number is both
    assert build_spec(base, {"train.l2sp": {"alpha": 1, "beta": 0}}).train.l2sp.alpha == 1
    for override, says in [({"train.l2sp": "0.1,x"}, "ALPHA,BETA"), ({"train.lr_decay": 0}, "lr_decay"),
                           ({"train.lr_decay": 1.5}, "lr_decay"), ({"train.params": "weights"}, "train.params"),
                           ({"train.schedule": "linear"}, "train.schedule"),
                           ({"train.l2sp": "0.1,0.1", "train.weight_decay": 1e-4}, "replaces weight decay")]:
        with pytest.raises(UserError, match=says):
            build_spec(base, override)


def test_spec_key_keeps_the_cells_of_earlier_sweeps():
    """Fields at their defaults leave the key as it was before they existed (a sweep finds its earlier cells)."""
    base = {"backend": "torch", "model": "vgg_small"}
    plain = build_spec(base).key()
    assert build_spec(base, {"train.lr_decay": 1.0, "train.params": "all", "train.warmup_epochs": 0}).key() == plain
    assert len({plain, build_spec(base, {"train.lr_decay": 0.7}).key(), build_spec(base, {"train.l2sp": 0.1}).key(),
                build_spec(base, {"train.schedule": "cosine"}).key()}) == 4


def test_every_field_can_be_a_sweep_axis(tmp_path):
    from tle.studies.grid import load_grid

    path = tmp_path / "grid.yaml"
    path.write_text("""
name: fields
base: {backend: torch, model: vgg_small, dataset: digits}
pretrain: {dataset: {source: "digits:0-4"}}
axes:
  strategy: ["gradual:block4", lp-ft, "surgical:block2"]
  train.lr_decay: [1.0, 0.7]
  train.params: [all, bias+norm]
  train.l2sp: [null, "0.1,0.01"]
  train.schedule: [constant, cosine]
  train.warmup_epochs: [0, 1]
""")
    cells = [c for c in load_grid(path).cells() if c.role == "cell"]
    assert len(cells) == 3 * 2 ** 5
    assert {(c.spec.train.lr_decay, c.spec.train.params, str(c.spec.train.l2sp), c.spec.train.schedule)
            for c in cells} >= {(0.7, "bias+norm", "0.1,0.01", "cosine"), (1.0, "all", "None", "constant")}
    # Every cell pretrains with the same spec: how a cell fine-tunes is not part of its pretraining run.
    assert len({c.pretrain.key for c in cells if c.pretrain is not None}) == 1


# -- what a backend cannot apply: one line, before any run ---------------------------------------------------------

@pytest.mark.parametrize("field, value, capability", [("train.lr_decay", "0.5", "lr-factors"),
                                                      ("train.schedule", "cosine", "schedule"),
                                                      ("train.params", "bias", "param-select"),
                                                      ("train.l2sp", "0.1,0.1", "l2sp")])
def test_a_backend_that_cannot_refuses_at_plan_and_run(store, tmp_path, field, value, capability):
    from mlflow.tracking import MlflowClient

    for command in (["plan", "--backend", "spyketorch", "--model", "mozafari_small", "--strategy", "gradual"],
                    ["run", "--backend", "spyketorch", "--model", "mozafari_small", "--dataset", "digits:0-1",
                     "--epochs", "1", "--experiment", "refused-tuning"]):
        proc = tle_inprocess(*command, "--set", f"{field}={value}", env={"MLFLOW_TRACKING_URI": store}, cwd=tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error:") and capability in lines[0] and field in lines[0], lines
    assert MlflowClient(store).get_experiment_by_name("refused-tuning") is None


def test_plan_shows_each_block_s_count_rate_regulariser_and_statistics(tmp_path):
    proc = tle_inprocess("plan", "--backend", "torch", "--model", "resnet_small", "--strategy", "gradual:block4",
                         "--set", "train.lr_decay=0.5", "--set", "train.params=bias+norm", "--set", "train.l2sp=0.1,0.01",
                         "--set", "train.schedule=step", "--set", "train.warmup_epochs=1", "--json", cwd=tmp_path,
                         check_rc=0)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    plan = json.loads(lines[0])
    assert plan["lr_decay"] == 0.5 and plan["params"] == "bias+norm" and plan["l2sp"] == {"alpha": 0.1, "beta": 0.01}
    head, block5, block4 = plan["stages"]
    assert [s["name"] for s in plan["stages"]] == ["head", "unfreeze-block5", "unfreeze-block4"]
    assert head["schedule"] == {"kind": "step", "warmup_epochs": 1, "rates": pytest.approx([5e-4, 1e-3, 1e-3, 1e-4, 1e-5])}
    blocks = {b["name"]: b for b in block4["blocks"]}
    assert blocks["block4"]["trains"] and blocks["block4"]["lr_factor"] == 0.5 and blocks["block5"]["lr_factor"] == 1
    assert blocks["block4"]["lr"] == pytest.approx(0.5e-5) and blocks["block3"]["lr_factor"] is None
    # resnet_small's convolutions have no bias: bias+norm trains BatchNorm's gamma and beta, 2 x its channels.
    assert blocks["block4"]["trainable"] == blocks["block4"]["norm"] == 2 * (32 + 32 + 32) and blocks["block4"]["bias"] == 0
    assert blocks["block4"]["regulariser"] == {"kind": "l2sp", "strength": 0.1, "toward": "start"}
    assert blocks["head"]["regulariser"] == {"kind": "l2sp", "strength": 0.01, "toward": "zero"}
    assert blocks["head"]["trainable"] == blocks["head"]["total"]
    assert blocks["block4"]["stats"] == "kept" and blocks["head"]["stats"] == "learned"
    text = tle_inprocess("plan", "--backend", "torch", "--model", "resnet_small", "--strategy", "gradual:block4",
                         "--set", "train.lr_decay=0.5", "--set", "train.l2sp=0.1,0.01", cwd=tmp_path, check_rc=0).stdout
    assert "lr×0.5" in text and "L2-SP α 0.1 → w⁰" in text and "BN kept" in text and "lr per epoch" in text


# -- torch and keras: the same plans, the same rates ------------------------------------------------------------

PLAN_PROBE = r"""
import json, sys
from tle.backends.manager import load_backend
from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.spec import HeadSpec
from tle.contract.strategy import Rates, Tuning, build_plan
from tle.contract.tuning import PARAMS
from tle.run.runner import freeze

backend_name = sys.argv[1]
be = load_backend(backend_name)
out = {"plans": {}}
for model in ("vgg16", "resnet50"):
    blocks = be.model(model).blocks
    net = be.hook.load_backbone(blueprint=Blueprint(model, tuple("abcde"), (32, 32, 3), HeadSpec()),
                                weights=ResolvedWeights(kind="none"))
    for strategy in ("surgical:block3", "gradual", "lp-ft", "finetune:block4"):
        for params in PARAMS:
            plan = build_plan(strategy, blocks, Rates(1, 1e-3, lr_decay=0.7), Tuning(params=params, l2sp=(0.1, 0.01)))
            out["plans"][f"{model} {strategy} {params}"] = [
                [(c.name, c.total, c.trainable, c.bias, c.norm, round(s.factor(c.name), 12),
                  s.l2sp.describe(c.name)) for c in freeze(be, net, s)] for s in plan.stages]
print(json.dumps(out))
"""


def test_torch_and_keras_give_the_same_plans():
    """vgg16 and resnet50 (the issue's check) with every new strategy and train.params: the same trainable count,
    bias and norm counts, learning-rate factor and regulariser per block and stage. (That each epoch trains at the
    plan's rate, the same in both, is the conformance suite's check of each backend.)"""
    pytest.importorskip("tle_keras")
    pytest.importorskip("tle_torch")
    got = {}
    for backend in ("torch", "keras"):
        proc = subprocess.run([sys.executable, "-c", PLAN_PROBE, backend], capture_output=True, text=True, timeout=600,
                              env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert proc.returncode == 0, proc.stderr[-4000:]
        got[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    torch_plans, keras_plans = got["torch"]["plans"], got["keras"]["plans"]
    assert torch_plans.keys() == keras_plans.keys() and len(torch_plans) == 2 * 4 * 4
    for key in torch_plans:
        assert [[tuple(c) for c in s] for s in torch_plans[key]] == [[tuple(c) for c in s] for s in keras_plans[key]], key
    # Not vacuous: VGG16 has biases and no norms, ResNet-50 norms and no biases in its blocks.
    assert torch_plans["vgg16 lp-ft bias"][1][0][2] == 128  # block1: the 64 + 64 biases of its two convs
    assert torch_plans["resnet50 lp-ft norm"][1][0][2] == 128  # block1: bn1's gamma and beta


# -- a torch run of gradual with every field ---------------------------------------------------------------------

class FailAt:
    """A ``tle.plugins``-style wrapper around ``train``: stage 2 fails at the start of its second epoch."""

    @hookimpl(wrapper=True)
    def train(self, model, data, stage, train, loop):
        if stage.index == 2:
            start = loop.epoch_start

            def failing(epoch, batches=None):
                if epoch == 1:
                    raise RuntimeError("injected failure in stage 2, epoch 1")
                start(epoch, batches)

            loop.epoch_start = failing
        return (yield)


TARGET = {"backend": "torch", "model": "resnet_small", "head.kind": "linear", "dataset.source": "digits:5-9",
          "dataset.image_size": 32, "dataset.train": 12, "dataset.val": 4, "dataset.test": 8,
          "train.batch_size": 10, "train.epochs": 2, "train.finetune_lr": 1e-3, "train.gradual_epochs": 2,
          "train.lr_decay": 0.7, "train.l2sp": "0.1,0.01", "train.schedule": "cosine", "train.warmup_epochs": 1,
          "strategy": "gradual:block4", "tracking.experiment": "modern-gradual"}


@pytest.fixture(scope="module")
def pretrained(store):
    from tle.run.runner import RunOptions, run_experiment

    spec = build_spec({}, {**{k: v for k, v in TARGET.items() if k.startswith(("backend", "model", "head", "dataset"))},
                           "dataset.source": "digits:0-4", "train.epochs": 2, "export.onnx": False,
                           "tracking.experiment": "modern-pretrain"})
    return run_experiment(spec, RunOptions(quiet=True)).run_id


def _weights(store: str, run_id: str, dst: Path) -> dict:
    import mlflow
    import torch

    mlflow.set_tracking_uri(store)
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="weights", dst_path=str(dst)))
    (path,) = [p for p in local.rglob("*") if p.is_file()]
    return torch.load(path, weights_only=True)


def test_gradual_resumes_mid_way_through_a_later_stage_exactly(store, pretrained, tmp_path):
    """Stage 2 of gradual:block4 (with lr_decay, l2sp and a warm-up + cosine schedule) fails after its first epoch;
    --resume finishes the run with the weights of the run that never stopped, each epoch at the plan's rate; the
    blocks that stay frozen in a stage are served from the feature cache (block1-4 in stage 1, block1-3 in
    stage 2); the exported graph holds nothing of L2-SP."""
    import mlflow
    import onnx
    from mlflow.tracking import MlflowClient

    from tle.backends.manager import manager
    from tle.run.resume import load_resume
    from tle.run.runner import RunOptions, run_experiment

    client = MlflowClient(store)
    spec = build_spec({}, {**TARGET, "weights": f"runs:/{pretrained}", "export.onnx": False,
                           "tracking.experiment": "modern-failing"})
    failing = FailAt()
    manager().register(failing, name="test:fail-at")
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            run_experiment(spec, RunOptions(quiet=True))
    finally:
        manager().unregister(failing)
    (run,) = client.search_runs([client.get_experiment_by_name("modern-failing").experiment_id])
    assert run.info.status == "FAILED"
    state = load_resume(run.info.run_id, store, tmp_path / "resume")
    resumed = run_experiment(state.spec, RunOptions(quiet=True, resume=state))
    assert resumed is not None and resumed.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).info.status == "FINISHED"

    straight = run_experiment(build_spec({}, {**TARGET, "weights": f"runs:/{pretrained}", "export.onnx": True}),
                              RunOptions(quiet=True))
    assert straight is not None
    a, b = _weights(store, run.info.run_id, tmp_path / "resumed"), _weights(store, straight.run_id, tmp_path / "one")
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < 1e-6

    plan = straight.plan
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert lrs == pytest.approx([r for s in plan.stages for r in s.rates()], rel=1e-6)
    assert [len(s.rates()) for s in plan.stages] == [2, 2, 2]
    metrics = client.get_run(straight.run_id).data.metrics
    assert (metrics["stage0_cached_blocks"], metrics["stage1_cached_blocks"], metrics["stage2_cached_blocks"]) == \
        (5, 4, 3)

    assert straight.onnx_max_abs_diff is not None and straight.onnx_max_abs_diff < 1e-4
    mlflow.set_tracking_uri(store)
    folder = Path(mlflow.artifacts.download_artifacts(run_id=straight.run_id, artifact_path="model",
                                                      dst_path=str(tmp_path / "onnx")))
    graph = onnx.load(str(next(folder.rglob("*.onnx")))).graph
    stored = sum(int(np.prod(t.dims)) for t in graph.initializer)
    total = int(client.get_run(straight.run_id).data.metrics["total_params"])
    # The parameters (BatchNorm folded into the convolutions or beside them, with its statistics), never a second
    # copy of them (w⁰).
    assert 0.9 * total < stored < 1.2 * total, (stored, total)
    assert not [t.name for t in graph.initializer if "l2sp" in t.name.lower()]


def _row(strategy: str, seed: int, acc: float, **params: str) -> dict:
    """A run as ``tle.analysis.compare.load_runs`` gives it (what ``tle compare`` folds into cells)."""
    return {"run_id": f"{strategy}-{seed}-{len(params)}", "status": "FINISHED", "role": "cell", "seed": str(seed),
            "backend": "torch", "model": "resnet_small", "strategy": strategy, "dataset": "folder:letters",
            "test_acc": acc, "wall_seconds": 1.0, "params": {"train.seed": str(seed), **params}}


def test_compare_keeps_each_method_its_own_cell():
    """``tle compare`` names the strategy in each cell and splits a strategy's runs by the fields they set: an
    L2-SP run's params hold ``train.l2sp.alpha``/``beta`` where the others hold ``train.l2sp: None``, and the
    two must not fold into one cell (the study's first table had lp-ft with n=6)."""
    from tle.analysis.cells import cell_rows

    plain = {"train.l2sp": "None", "train.lr_decay": "1.0"}
    rows = [_row("lp-ft", s, 0.9, **plain) for s in range(3)]
    rows += [_row("lp-ft", s, 0.8, **{"train.l2sp.alpha": "0.1", "train.l2sp.beta": "0.01", "train.lr_decay": "1.0"})
             for s in range(3)]
    rows += [_row("lp-ft", s, 0.7, **{"train.l2sp": "None", "train.lr_decay": "0.7"}) for s in range(3)]
    rows += [_row("gradual", s, 0.6, **plain) for s in range(3)]
    cells = cell_rows(rows)
    got = {(c.ident["strategy"], c.axes.get("train.l2sp.alpha"), c.axes.get("train.lr_decay")): (c.test.n, c.test.mean)
           for c in cells}
    assert got == {("lp-ft", "", "1.0"): (3, pytest.approx(0.9)), ("lp-ft", "0.1", "1.0"): (3, pytest.approx(0.8)),
                   ("lp-ft", "", "0.7"): (3, pytest.approx(0.7)), ("gradual", "", "1.0"): (3, pytest.approx(0.6))}
