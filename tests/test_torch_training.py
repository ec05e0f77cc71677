"""Training with the torch backend: the loop contract, caching, resume, frozen BatchNorm, transfer, bf16."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from tle.contract.records import Blueprint, ResolvedWeights  # noqa: E402
from tle.contract.initializers import InitSpec  # noqa: E402
from tle.contract.spec import HeadSpec, TrainSpec  # noqa: E402
from tle.contract.strategy import HEAD, Stage, Rates, Tuning, build_plan  # noqa: E402
from tle_torch import plugin  # noqa: E402
from tle_torch.testing import digits_dataset, recording_loop  # noqa: E402

NONE = ResolvedWeights(kind="none")
GLOROT = InitSpec(name="glorot_uniform")


@pytest.fixture(scope="module")
def digits04():
    return digits_dataset(range(5), size=32, seed=0)


@pytest.fixture(scope="module")
def digits59():
    return digits_dataset(range(5, 10), size=32, seed=0)


def prepared(model, data, strategy, weights=NONE, seed=0, head=None, device="cpu", batchnorm="frozen"):
    """What the runner does before training: load (drawing the head), then init the plan's fresh blocks."""
    net = plugin.load_backbone(blueprint=Blueprint(model=model, class_names=data.class_names,
                                                   input_shape=data.input_shape, head=head or HeadSpec(),
                                                   device=device, precision="fp32", seed=seed), weights=weights)
    plan = build_plan(strategy, net.block_names, Rates(2, 1e-3), Tuning(batchnorm=batchnorm))
    plugin.apply_init(model=net, blocks=[b for b in plan.reinit if b != HEAD], init=GLOROT, seed=seed)
    return net, plan


def run_stage(net, data, stage, spec, **loop_args):
    plugin.freeze_policy(model=net, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
    loop, records = recording_loop(stage, **loop_args)
    result = plugin.train(model=net, data=data, stage=stage, train=spec, loop=loop)
    return records, result


def test_loop_contract_and_early_stop(digits04):
    net, plan = prepared("resnet_small", digits04, "scratch")
    stage = Stage(0, "train", plan.stages[0].trainable, 4, 1e-3)
    records, result = run_stage(net, digits04, stage, TrainSpec(batch_size=64), patience=1)
    assert [r.epoch for r in records] == list(range(len(records)))
    assert result.epochs == len(records) and result.stopped_early == (len(records) < 4)
    for r in records:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds"} <= set(r.metrics)
        assert 0.0 <= r.metrics["val_acc"] <= 1.0 and math.isfinite(r.metrics["train_loss"])
    assert records[-1].metrics["val_acc"] > 0.5


def test_training_is_deterministic_and_evaluate_matches_val(digits04):
    spec = TrainSpec(batch_size=64, optimizer="sgd", lr=0.05)
    results = []
    for _ in range(2):
        net, plan = prepared("vgg_small", digits04, "scratch")
        records, _ = run_stage(net, digits04, plan.stages[0], spec)
        results.append(records[-1].metrics)
    assert results[0]["val_loss"] == results[1]["val_loss"]
    ev = plugin.evaluate(model=net, images=digits04.x_val, labels=digits04.y_val, batch_size=50)
    assert ev.logits.shape == (len(digits04.y_val), 5) and ev.logits.dtype == np.float32
    assert ev.loss == pytest.approx(results[1]["val_loss"], rel=1e-5)
    assert float((ev.predictions == digits04.y_val).mean()) == pytest.approx(results[1]["val_acc"])


@pytest.mark.parametrize("model, strategy", [("vgg_small", "feature-extractor"), ("resnet_small", "finetune:block5")])
def test_cached_frozen_prefix_matches_uncached(digits04, model, strategy):
    outcomes = {}
    for cache in (True, False):
        net, plan = prepared(model, digits04, strategy, seed=3)
        spec = TrainSpec(batch_size=32, cache_features=cache, seed=3)
        for stage in plan.stages:
            stage = replace(stage, epochs=2, lr=1e-3)
            records, result = run_stage(net, digits04, stage, spec)
            want = plan.frozen_prefix(stage) if cache else 0
            assert result.metrics["cached_blocks"] == want
        outcomes[cache] = records[-1].metrics
    assert outcomes[True]["val_acc"] == pytest.approx(outcomes[False]["val_acc"], abs=1e-6)
    assert outcomes[True]["val_loss"] == pytest.approx(outcomes[False]["val_loss"], rel=1e-4)
    assert outcomes[True]["train_loss"] == pytest.approx(outcomes[False]["train_loss"], rel=1e-4)


def test_augmentation_disables_the_cache(digits04):
    net, plan = prepared("vgg_small", digits04, "feature-extractor")
    stage = Stage(0, "head", plan.stages[0].trainable, 1, 1e-3)
    _, result = run_stage(net, digits04, stage, TrainSpec(batch_size=64, augment=True))
    assert result.metrics["cached_blocks"] == 0


@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_batchnorm_statistics_of_pretrained_trainable_blocks(digits04, batchnorm):
    # finetune:block4: block2 stays frozen, blocks 4-5 start pretrained and train in stage 2.
    net, plan = prepared("resnet_small", digits04, "finetune:block4", batchnorm=batchnorm)
    frozen_bn = net.body["block2"].layer1[0].bn1
    open_bn = net.body["block5"].layer4[0].bn1
    stats = lambda bn: [t.clone() for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]  # noqa: E731
    frozen_before, open_before, gamma_before = stats(frozen_bn), stats(open_bn), open_bn.weight.detach().clone()
    spec = TrainSpec(batch_size=64, cache_features=False, batchnorm=batchnorm)  # every block in every batch
    for stage in plan.stages:
        run_stage(net, digits04, replace(stage, epochs=1, lr=1e-3), spec)
    assert all(torch.equal(a, b) for a, b in zip(stats(frozen_bn), frozen_before))
    kept = all(torch.equal(a, b) for a, b in zip(stats(open_bn), open_before))
    assert kept is (batchnorm == "frozen")  # bit-identical when frozen, re-estimated when trained
    assert not torch.equal(open_bn.weight.detach(), gamma_before)  # gamma trains in both modes


def test_only_trainable_parameters_reach_the_optimizer(digits04, monkeypatch):
    from tle_torch import train

    made, make = [], train.make_optimizer  # train keeps its optimiser to itself: catch the one it makes
    monkeypatch.setattr(train, "make_optimizer", lambda *args: made.append(make(*args)) or made[-1])
    net, plan = prepared("vgg_small", digits04, "finetune:block5")
    stage = Stage(1, "finetune", plan.stages[1].trainable, 1, 1e-5)
    run_stage(net, digits04, stage, TrainSpec(batch_size=64, optimizer="adamw", weight_decay=0.01))
    [optimizer] = made
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for b in ("block5", HEAD) for p in net.module_of(b).parameters()}
    assert optimised == trainable
    assert optimizer.param_groups[0]["lr"] == 1e-5


def test_resume_continues_where_the_checkpoint_left_off(digits04, tmp_path):
    spec = TrainSpec(batch_size=64)
    ckpt = tmp_path / "ckpt.pt"
    net, plan = prepared("vgg_small", digits04, "scratch")
    trainable = plan.stages[0].trainable
    first, _ = run_stage(net, digits04, Stage(0, "train", trainable, 2, 1e-3), spec, checkpoint_path=ckpt)
    assert [r.epoch for r in first] == [0, 1] and ckpt.exists()
    state = torch.load(ckpt, weights_only=True)
    batches = math.ceil(len(digits04.y_train) / 64)
    assert state["epoch"] == 2
    assert int(next(iter(state["optimizer"]["state"].values()))["step"]) == 2 * batches

    fresh, _ = prepared("vgg_small", digits04, "scratch", seed=42)
    resumed, result = run_stage(fresh, digits04, Stage(0, "train", trainable, 3, 1e-3), spec,
                                start_epoch=2, resume_from=ckpt, checkpoint_path=ckpt)
    assert [r.epoch for r in resumed] == [2] and result.epochs == 1 and not result.stopped_early
    steps = {int(s["step"]) for s in torch.load(ckpt, weights_only=True)["optimizer"]["state"].values()}
    assert steps == {3 * batches}  # Adam's step count came back from the checkpoint

    straight, _ = prepared("vgg_small", digits04, "scratch")
    uninterrupted, _ = run_stage(straight, digits04, Stage(0, "train", trainable, 3, 1e-3), spec)
    assert resumed[0].metrics["val_loss"] == pytest.approx(uninterrupted[2].metrics["val_loss"], rel=1e-5)
    assert resumed[0].metrics["val_acc"] == uninterrupted[2].metrics["val_acc"]


def test_pretrained_backbone_gives_a_jumpstart(digits04, digits59, tmp_path):
    spec = TrainSpec(batch_size=32, seed=0)
    source, plan = prepared("vgg_small", digits04, "scratch")
    records, _ = run_stage(source, digits04, Stage(0, "train", plan.stages[0].trainable, 6, 1e-3), spec)
    assert records[-1].metrics["val_acc"] > 0.8
    path = plugin.save_weights(model=source, directory=tmp_path)
    weights = ResolvedWeights(kind="file", source="runs:/pretrain", path=tmp_path / "weights.pt",
                              class_names=("0", "1", "2", "3", "4"))

    first_epoch = {}
    for strategy, w in (("scratch", NONE), ("transfer:all", weights)):
        net, plan = prepared("vgg_small", digits59, strategy, weights=w)
        records, _ = run_stage(net, digits59, Stage(0, "train", plan.stages[0].trainable, 1, 1e-3), spec)
        assert net.new_head == ["fc1", "fc2"]  # classes 5-9 are not the run's 0-4: the head is new
        first_epoch[strategy] = records[0].metrics["val_acc"]
    assert first_epoch["transfer:all"] > first_epoch["scratch"] + 0.1, first_epoch
    assert path.endswith("weights.pt")

    # Same classes: the run's head comes back too, so the first epoch starts where the source ended.
    net, plan = prepared("vgg_small", digits04, "transfer:all", weights=weights)
    records, _ = run_stage(net, digits04, Stage(0, "train", plan.stages[0].trainable, 1, 1e-4), spec)
    assert net.new_head == [] and records[0].metrics["val_acc"] > 0.8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_training_on_cuda(digits04):
    net, plan = prepared("resnet_small", digits04, "scratch", device="cuda")
    records, _ = run_stage(net, digits04, Stage(0, "train", plan.stages[0].trainable, 2, 1e-3),
                           TrainSpec(batch_size=64, precision="bf16"))
    assert records[-1].metrics["val_acc"] > 0.5
    assert next(net.parameters()).dtype == torch.float32  # autocast, not a bf16 model
    ev = plugin.evaluate(model=net, images=digits04.x_val, labels=digits04.y_val, batch_size=64)
    assert ev.logits.dtype == np.float32


def test_a_lone_last_image_joins_the_previous_batch(digits04):
    """BatchNorm cannot train on one value per channel: a batch of one would crash resnet_small."""
    from tle_torch.train import ShuffledBatches, count_batches

    n = len(digits04.y_train)
    bs = next(b for b in range(2, 64) if n % b == 1)
    parts = list(ShuffledBatches(n, bs, torch.Generator().manual_seed(0)))
    assert len(parts) == count_batches(n, bs) == n // bs
    assert sorted(torch.cat(parts).tolist()) == list(range(n)) and len(parts[-1]) == bs + 1
    net, plan = prepared("resnet_small", digits04, "scratch")
    stage = Stage(0, "train", plan.stages[0].trainable, 1, 1e-3)
    records, _ = run_stage(net, digits04, stage, TrainSpec(batch_size=bs))
    assert len(records) == 1 and math.isfinite(records[0].metrics["train_loss"])
