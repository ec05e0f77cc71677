"""The strategy grammar and plans, without any framework."""

import pytest

from tle.errors import UserError
from tle.contract.strategy import HEAD, Rates, build_plan, parse_strategy

VGG = ["block1", "block2", "block3", "block4", "block5"]


@pytest.mark.parametrize("text, kind, block", [
    ("scratch", "scratch", None), ("feature-extractor", "feature-extractor", None),
    ("freeze", "feature-extractor", None), ("finetune:block5", "finetune", "block5"),
    ("transfer:block3", "transfer", "block3"), ("transfer:all", "transfer", "all"),
    ("FINETUNE:block2", "finetune", "block2"), ("finetune:conv3", "finetune", "conv3"),
])
def test_parse(text, kind, block):
    s = parse_strategy(text)
    assert (s.kind, s.block) == (kind, block)


@pytest.mark.parametrize("bad", ["", "bogus", "finetune", "finetune:", "scratch:block1", "finetune:all",
                                 "transfer:block 3", "feature-extractor:block2"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        parse_strategy(bad)


def trainable(stage):
    return [b for b, on in stage.trainable.items() if on]


def test_scratch_plan():
    plan = build_plan("scratch", VGG, Rates(3, 1e-3))
    assert plan.pretrained == ()
    assert plan.reinit == (*VGG, HEAD)
    (stage,) = plan.stages
    assert trainable(stage) == [*VGG, HEAD] and stage.epochs == 3 and stage.lr == 1e-3


def test_feature_extractor_plan():
    plan = build_plan("freeze", VGG, Rates(4, 1e-3))
    assert plan.pretrained == tuple(VGG) and plan.reinit == (HEAD,)
    (stage,) = plan.stages
    assert trainable(stage) == [HEAD]
    assert plan.frozen_prefix(stage) == 5


def test_finetune_plan_matches_s3():
    plan = build_plan("finetune:block5", VGG, Rates(5, 1e-3))
    head, tune = plan.stages
    assert trainable(head) == [HEAD] and (head.epochs, head.lr) == (5, 1e-3)
    # S3: Adam lr=1e-5 for 2 epochs on block5 + head
    assert trainable(tune) == ["block5", HEAD] and (tune.epochs, tune.lr) == (2, 1e-5)
    assert plan.frozen_prefix(tune) == 4
    assert plan.total_epochs == 7


def test_finetune_custom_stage():
    plan = build_plan("finetune:block3", VGG, Rates(1, 1e-2, finetune_epochs=4, finetune_lr=3e-4))
    tune = plan.stages[1]
    assert trainable(tune) == ["block3", "block4", "block5", HEAD] and (tune.epochs, tune.lr) == (4, 3e-4)


@pytest.mark.parametrize("k, pretrained", [(1, VGG[:1]), (2, VGG[:2]), (4, VGG[:4])])
def test_transfer_plan_matches_s0(k, pretrained):
    plan = build_plan(f"transfer:block{k}", VGG, Rates(15, 1e-3))
    assert list(plan.pretrained) == pretrained
    assert list(plan.reinit) == VGG[k:] + [HEAD]
    assert trainable(plan.stages[0]) == [*VGG, HEAD]


def test_transfer_all():
    plan = build_plan("transfer:all", VGG, Rates(15, 1e-3))
    assert plan.pretrained == tuple(VGG) and plan.reinit == (HEAD,)


def test_unknown_block_is_user_error():
    with pytest.raises(UserError, match="block7.*block1, block2"):
        build_plan("finetune:block7", VGG, Rates(1, 1e-3), model="vgg16")
