"""The torch backend's models, block maps, heads, initialisers, freeze policy and weight loading."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from tle import UserError  # noqa: E402
from tle.contract.records import Blueprint, ResolvedWeights  # noqa: E402
from tle.contract.initializers import InitSpec  # noqa: E402
from tle.run.runner import check_counts  # noqa: E402
from tle.contract.spec import HeadSpec  # noqa: E402
from tle.contract.strategy import HEAD, Rates, build_plan  # noqa: E402
from tle_torch import blocks as block_maps  # noqa: E402
from tle_torch import plugin, registry  # noqa: E402
from tle_torch.init import fans  # noqa: E402

NONE = ResolvedWeights(kind="none")
VGG16_CONV = [38_720, 221_440, 1_475_328, 5_899_776, 7_079_424]


def build(model, num_classes=10, size=32, channels=3, head=None, weights=NONE, seed=0, classes=None):
    classes = list(classes or (str(i) for i in range(num_classes)))
    return plugin.load_backbone(blueprint=Blueprint(model=model, class_names=classes,
                                                    input_shape=(size, size, channels), head=head or HeadSpec(),
                                                    device="cpu", precision="fp32", seed=seed), weights=weights)


@pytest.fixture(scope="module")
def vgg16():
    return build("vgg16")


# -- packaging -------------------------------------------------------------------


def test_plugin_module_does_not_import_torch():
    code = ("import sys, tle_torch.plugin as p; info = p.backend_info(); p.register_models(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(info.status, info.framework_version)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "ok"


def test_backend_is_found_through_its_entry_point():
    from tle.backends.manager import load_backend

    backend = load_backend("torch")
    assert backend.info.name == "torch" and "onnx" in backend.info.capabilities
    assert {"vgg16", "vgg19", "resnet50", "densenet121", "alexnet", "mobilenet_v3_small", "vgg_small",
            "resnet_small"} <= set(backend.models())


def test_resolve_device_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert plugin.resolve_device(device="auto") == "cpu"
    assert plugin.resolve_device(device="cpu") == "cpu"
    with pytest.raises(UserError, match="no CUDA"):
        plugin.resolve_device(device="cuda")


# -- block maps and counts ---------------------------------------------------------------


def test_vgg16_blocks_are_keras_blocks(vgg16):
    convs = {b: sum(isinstance(m, torch.nn.Conv2d) for m in vgg16.body[b].modules()) for b in vgg16.block_names}
    assert convs == {"block1": 2, "block2": 2, "block3": 3, "block4": 3, "block5": 3}
    for block in vgg16.block_names:
        assert isinstance(list(vgg16.body[block].children())[-1], torch.nn.MaxPool2d)
    counts = plugin.count_parameters(model=vgg16)
    assert [c.total for c in counts[:5]] == VGG16_CONV
    assert sum(VGG16_CONV) == 14_714_688


def test_vgg19_block5_has_four_convs():
    tv = block_maps.build_torchvision("vgg19_bn")
    bmap = dict(block_maps.block_map("vgg19_bn", tv))
    assert sum(isinstance(tv.get_submodule(p), torch.nn.Conv2d) for p in bmap["block5"]) == 4


@pytest.mark.parametrize("name, expected", [
    ("resnet18", {"block1": ["conv1", "bn1", "relu", "maxpool"], "block2": ["layer1"], "block5": ["layer4"]}),
    ("densenet121", {"block1": ["features.conv0", "features.norm0", "features.relu0", "features.pool0"],
                     "block2": ["features.denseblock1", "features.transition1"],
                     "block5": ["features.denseblock4", "features.norm5"]}),
    ("alexnet", {"block1": ["features.0", "features.1", "features.2"], "block3": ["features.6", "features.7"],
                 "block5": ["features.10", "features.11", "features.12"]}),
    ("mobilenet_v3_small", {"block1": ["features.0"], "block2": ["features.1"],
                            "block3": ["features.2", "features.3"],
                            "block5": ["features.9", "features.10", "features.11", "features.12"]}),
])
def test_block_maps(name, expected):
    with torch.device("meta"):
        tv = block_maps.build_torchvision(name)
    bmap = dict(block_maps.block_map(name, tv))
    assert list(bmap) == list(registry.BLOCKS)
    for block, paths in expected.items():
        assert bmap[block] == paths


def test_register_models_declares_the_blocks_the_model_has():
    infos = {i.name: i for i in plugin.register_models()}
    assert len(infos) == len(registry.names())
    net = build("resnet_small")
    assert tuple(net.block_names) == infos["resnet_small"].blocks


@pytest.mark.parametrize("strategy, stage_trainable", [
    ("scratch", [sum(VGG16_CONV)]),
    ("feature-extractor", [0]),
    ("finetune:block5", [0, 7_079_424]),
    ("transfer:block3", [sum(VGG16_CONV)]),
    ("transfer:all", [sum(VGG16_CONV)]),
])
def test_vgg16_trainable_parameters_per_stage(vgg16, strategy, stage_trainable):
    head = 512 * 256 + 256 + 256 * 10 + 10  # 1x1x512 flattened at 32 px -> 256 -> 10
    plan = build_plan(strategy, vgg16.block_names, Rates(1, 1e-3))
    assert len(plan.stages) == len(stage_trainable)
    for stage, backbone in zip(plan.stages, stage_trainable):
        plugin.freeze_policy(model=vgg16, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
        counts = plugin.count_parameters(model=vgg16)
        check_counts(stage, counts, "torch")
        assert [c.name for c in counts] == [*vgg16.block_names, HEAD]
        assert counts[-1].trainable == counts[-1].total == head
        assert sum(c.trainable for c in counts) == backbone + head
        assert sum(c.total for c in counts) == sum(VGG16_CONV) + head


def test_vgg16_head_at_150px_is_s3_classifier():
    # Keras: Flatten(4x4x512) -> Dense 256 -> Dense N: the "~2M" classifier of S3.
    net = build("vgg16", num_classes=2, size=150)
    assert plugin.count_parameters(model=net)[-1].total == 8192 * 256 + 256 + 256 * 2 + 2


# -- heads ---------------------------------------------------------------------------------


def test_heads():
    linear = build("resnet_small", num_classes=7, head=HeadSpec(kind="linear"))
    assert [type(m).__name__ for m in linear.head] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    dense = build("vgg_small", num_classes=7, head=HeadSpec(hidden=33, dropout=0.25))
    assert [type(m).__name__ for m in dense.head] == ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert dense.head.fc1.out_features == 33 and dense.head.dropout.p == 0.25
    for net in (linear, dense):
        assert net(torch.rand(3, 32, 32, 3)).shape == (3, 7)


def test_original_head_replaces_only_the_last_linear():
    tv = block_maps.build_torchvision("alexnet")
    net = plugin.load_backbone(blueprint=Blueprint(model="alexnet", class_names=list("abcd"), input_shape=(64, 64, 3),
                                                   head=HeadSpec(kind="original"), device="cpu", precision="fp32",
                                                   seed=0), weights=NONE)
    assert net.new_head == ["classifier.6"]
    assert net.head.classifier[6].out_features == 4
    assert net.head.classifier[1].weight.shape == tv.classifier[1].weight.shape
    # HeadSpec: the new layer starts from normal:0.01 when the head spec does not name an init.
    assert net.head.classifier[6].weight.std().item() == pytest.approx(0.01, rel=0.1)
    before = net.head.classifier[1].weight.clone()
    plugin.apply_init(model=net, blocks=[HEAD], init=InitSpec(name="glorot_uniform"), seed=1)
    assert torch.equal(net.head.classifier[1].weight, before)  # the pretrained part is not redrawn
    assert net.head.classifier[6].weight.std().item() == pytest.approx((2 / (4096 + 4)) ** 0.5, rel=0.1)


def test_one_channel_images_are_repeated_to_three():
    net = build("resnet_small", channels=1).eval()
    grey = torch.rand(2, 32, 32, 1)
    with torch.no_grad():
        assert torch.allclose(net(grey), net(grey.expand(-1, -1, -1, 3)), atol=1e-6)


# -- initialisers --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal",
                                  "lecun_uniform", "normal:0.02", "uniform:0.1"])
def test_initialiser_statistics(vgg16, text):
    init = InitSpec.parse(text)
    plugin.apply_init(model=vgg16, blocks=["block5"], init=init, seed=3)
    conv = vgg16.body["block5"].features_26  # 512 -> 512, 3x3: 2.4M weights
    fan_in, fan_out = fans(conv.weight)
    assert (fan_in, fan_out) == (9 * 512, 9 * 512)
    w = conv.weight.detach().double()
    assert w.mean().item() == pytest.approx(0.0, abs=1e-3 * init.expected_std(fan_in, fan_out) * 50)
    assert w.std().item() == pytest.approx(init.expected_std(fan_in, fan_out), rel=0.02)
    if init.name.endswith("_normal"):  # Keras truncates at 2 sigma of the underlying normal
        assert w.abs().max().item() <= 2 * init.expected_std(fan_in, fan_out) / 0.87962566 + 1e-6
    assert all(torch.count_nonzero(c.bias) == 0 for c in vgg16.body["block5"].modules()
               if isinstance(c, torch.nn.Conv2d))


def test_initialiser_on_linear_head_and_seeding():
    net = build("vgg_small", num_classes=10)
    init = InitSpec(name="he_normal")
    plugin.apply_init(model=net, blocks=[HEAD], init=init, seed=5)
    first = net.head.fc1.weight.clone()
    assert first.std().item() == pytest.approx(init.expected_std(32, 256), rel=0.1)
    plugin.apply_init(model=net, blocks=["block1", HEAD], init=init, seed=5)
    assert torch.equal(net.head.fc1.weight, first)  # a block's draw does not depend on the others
    plugin.apply_init(model=net, blocks=[HEAD], init=init, seed=6)
    assert not torch.equal(net.head.fc1.weight, first)
    with pytest.raises(UserError, match="no block"):
        plugin.apply_init(model=net, blocks=["block9"], init=init, seed=0)


def test_batchnorm_reset_by_apply_init():
    net = build("resnet_small")
    bn = net.body["block1"].bn1
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.bias.fill_(2.0)
        bn.running_mean.fill_(1.0)
    plugin.apply_init(model=net, blocks=["block1"], init=InitSpec(name="glorot_uniform"), seed=0)
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and torch.all(bn.running_mean == 0)


# -- freeze policy -------------------------------------------------------------------------


def test_frozen_blocks_run_in_eval_mode():
    net = build("resnet_small")
    trainable = {b: b == "block5" for b in net.block_names} | {HEAD: True}
    plugin.freeze_policy(model=net, trainable=trainable, fixed_stats=())
    net.train()
    assert not net.body["block1"].training and not net.body["block1"].bn1.training
    assert net.body["block5"].training and net.head.training
    assert not any(p.requires_grad for p in net.body["block4"].parameters())
    assert all(p.requires_grad for p in net.body["block5"].parameters())


# -- weights ---------------------------------------------------------------------------------


def test_torchvision_state_dict_file_loads_block_by_block(tmp_path):
    tv = block_maps.build_torchvision("resnet_small")
    path = tmp_path / "resnet.pth"
    torch.save(tv.state_dict(), path)
    net = build("resnet_small", weights=ResolvedWeights(kind="file", source=str(path), path=path))
    assert torch.equal(net.body["block3"].layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    assert torch.equal(net.body["block1"].bn1.running_var, tv.bn1.running_var)


def test_backbone_only_file(tmp_path):
    tv = block_maps.build_torchvision("vgg_small")
    path = tmp_path / "features.pt"
    torch.save(tv.features.state_dict(), path)
    net = build("vgg_small", weights=ResolvedWeights(kind="file", source=str(path), path=path))
    assert torch.equal(net.body["block5"].features_28.weight, tv.features[28].weight)


def test_weights_file_that_does_not_fit(tmp_path):
    state = block_maps.build_torchvision("resnet_small").state_dict()
    state["layer3.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"layer3\.0\.conv1\.weight \(block4\)"):
        build("resnet_small", weights=ResolvedWeights(kind="file", source=str(path), path=path))
    other = tmp_path / "vgg.pt"
    torch.save(block_maps.build_torchvision("vgg_small").state_dict(), other)
    with pytest.raises(UserError, match="holds no weights of resnet_small"):
        build("resnet_small", weights=ResolvedWeights(kind="file", source=str(other), path=other))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        build("resnet_small", weights=ResolvedWeights(kind="file", source=str(junk), path=junk))


def test_saved_weights_keep_the_head_only_for_the_same_classes(tmp_path):
    net = build("vgg_small", num_classes=5)
    plugin.apply_init(model=net, blocks=[HEAD], init=InitSpec(name="glorot_uniform"), seed=9)
    path = plugin.save_weights(model=net, directory=tmp_path)
    assert path.endswith("weights.pt")
    same = ResolvedWeights(kind="file", source="runs:/x", path=tmp_path / "weights.pt", class_names=tuple("abcde"))
    kept = build("vgg_small", num_classes=5, weights=same, seed=1, classes="abcde")
    assert torch.equal(kept.body["block5"].features_28.weight, net.body["block5"].features_28.weight)
    assert kept.new_head == [] and torch.equal(kept.head.fc2.weight, net.head.fc2.weight)
    renamed = build("vgg_small", num_classes=5, weights=same, seed=1, classes="vwxyz")
    assert renamed.new_head == ["fc1", "fc2"] and not torch.equal(renamed.head.fc2.weight, net.head.fc2.weight)
    assert torch.equal(renamed.body["block5"].features_28.weight, net.body["block5"].features_28.weight)
    other = ResolvedWeights(kind="file", source="runs:/x", path=tmp_path / "weights.pt", class_names=tuple("abc"))
    fresh = build("vgg_small", num_classes=3, weights=other, seed=1)
    assert fresh.new_head == ["fc1", "fc2"]
    assert torch.equal(fresh.body["block2"].features_5.weight, net.body["block2"].features_5.weight)
    assert not torch.equal(fresh.head.fc1.weight, net.head.fc1.weight)
    with pytest.raises(UserError, match="holds none of the backbone blocks of resnet_small"):
        build("resnet_small", weights=other)


def test_imagenet_offline_names_the_cache_file(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    imagenet = ResolvedWeights(kind="imagenet", source="imagenet")
    if not expected.exists():
        with pytest.raises(UserError, match=str(expected).replace(".", r"\.")):
            try:
                build("resnet18", weights=imagenet)
            except UserError:
                raise
            else:  # pragma: no cover - a machine with internet downloaded them
                pytest.skip("ImageNet weights were downloadable here")
    # Put a (random) file where torchvision's cache expects it: the real loading path uses it.
    expected.parent.mkdir(parents=True, exist_ok=True)
    tv = block_maps.build_torchvision("resnet18")
    torch.save(tv.state_dict(), expected)
    assert ResNet18_Weights.DEFAULT.url.endswith(expected.name)
    net = build("resnet18", weights=imagenet)
    assert torch.equal(net.body["block5"].layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    with pytest.raises(UserError, match="no ImageNet weights"):
        build("vgg_small", weights=imagenet)


def test_unknown_model_and_bad_sizes():
    with pytest.raises(UserError, match="no model"):
        build("vgg17")
    with pytest.raises(UserError, match="cannot take 16x16"):
        build("alexnet", size=16)
    infos = {i.name: i for i in plugin.register_models()}
    build("alexnet", size=infos["alexnet"].min_size)
    assert math.isfinite(infos["vgg16"].min_size)
    assert np.all([i.default_size for i in infos.values()])


@pytest.mark.parametrize("model, size", [("vgg_small", 32), ("resnet_small", 32), ("alexnet", 64),
                                         ("mobilenet_v3_small", 32), ("densenet121", 32)])
def test_blocks_and_original_head_reproduce_torchvision_forward(tmp_path, model, size):
    """The block map covers the whole conv base in order and the "original" head is torchvision's own tail."""
    tv = block_maps.build_torchvision(model).eval()
    path = tmp_path / "tv.pt"
    torch.save(tv.state_dict(), path)
    net = build(model, num_classes=1000, size=size, head=HeadSpec(kind="original"),
                weights=ResolvedWeights(kind="file", source=str(path), path=path)).eval()
    [new] = net.new_head
    net.head.get_submodule(new).load_state_dict(tv.get_submodule(new).state_dict())
    z = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(net.forward_from(z, 0), tv(z), atol=1e-5)
        images = torch.rand(2, size, size, 3)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        if model in registry.SMALL:  # no ImageNet weights, so no ImageNet normalisation (as in Keras)
            mean, std = torch.zeros(3), torch.ones(3)
        assert torch.allclose(net(images), tv(((images - mean) / std).permute(0, 3, 1, 2)), atol=1e-5)
