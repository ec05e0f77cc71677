"""Same name, same architecture: the Keras backend's torchvision-layout models against the torch backend's.

For one model of each family (VGG with BatchNorm, AlexNet, ResNet with
BasicBlock and with Bottleneck, DenseNet, the small models) at CI-sized
inputs: the torch backend's model with random weights and random BatchNorm
statistics (a torch process of its own, ``zoo_parity.py``) gives logits on a
fixed batch and its weights under portable keys; the Keras model built under
the same name loads them with ``tle_keras.portable.from_portable`` and must give
the same logits within 1e-4, the same parameter count per block, and hand the
same arrays back through ``to_portable``. Keras -> torch for VGG and ResNet: a
Keras model's own random weights, through ``to_portable``, into the torch
model. The whole zoo: ``benchmarks/keras_zoo_parity.py``.

TensorFlow and torch never share a process: the Keras tests run in a child
pytest (``own_process``), which starts the torch side as plain Python.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

IN_CHILD = os.environ.get("TLE_KERAS_INPROC") == "1"
pytestmark = pytest.mark.skipif(find_spec("tensorflow") is None or find_spec("torchvision") is None,
                                reason="tensorflow and torchvision are both needed")
child = pytest.mark.own_process

sys.path.insert(0, str(Path(__file__).parent))
import zoo_parity as Z  # noqa: E402
from conftest import run_own_process  # noqa: E402

TOL = 1e-4
# (model, input side, head): every family, BatchNorm, the flatten order of a >1x1 map (VGG at 64 px), AlexNet's
# Dropout-before-Linear original classifier with the adaptive pool repeating a 1x1 map to 6x6, both ResNet units.
CASES = [("vgg11_bn", 64, "dense"), ("alexnet", 64, "original"), ("resnet18", 32, "original"),
         ("resnet50", 32, "linear"), ("densenet121", 32, "original"), ("vgg_small", 64, "dense"),
         ("resnet_small", 32, "original"), ("vgg_small", 32, "original")]
BACK = [("vgg11_bn", 64, "dense"), ("resnet18", 32, "original"), ("vgg_small", 64, "dense"),
        ("resnet_small", 32, "original")]
PLANS = ["resnet50"]


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_keras_torchvision_zoo_in_own_process():
    run_own_process(__file__, timeout=600, durations=5)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One torch process for everything: it loads the Keras models' weights of BACK (written first) and writes
    the torch models of CASES, the torch plan and the pooling checks. The Keras models of BACK are then reused
    by the torch -> keras tests (from_portable replaces every array, BatchNorm statistics included)."""
    out = tmp_path_factory.mktemp("zoo")
    built, keras_logits = {}, {}
    for seed, case in enumerate(BACK):
        built[case] = Z.keras_net(*case)
        keras_logits[case] = Z.write_keras(case, built[case], out, seed)
    Z.run_torch(out, cases=CASES, back=BACK, plans=PLANS, pools=True)
    return {"out": out, "built": built, "keras_logits": keras_logits}


@child
@pytest.mark.parametrize("case", CASES, ids=Z.case_id)
def test_torch_weights_give_torch_logits_in_keras(case, zoo):
    from tle_keras import portable

    arrays, x, want, torch_counts = Z.read_torch(case, zoo["out"])
    knet = zoo["built"].get(case) or Z.keras_net(*case)
    assert Z.keras_counts(knet) == torch_counts  # what tle plan shows, per block and head
    assert portable.from_portable(knet, arrays, "torch", keep_head=True) == [*knet.block_names, "head"]
    got = np.asarray(knet.net(x, training=False))
    assert np.abs(want).max() > 0.1  # logits of order one: the tolerance is not met by tiny numbers
    assert np.abs(got - want).max() <= TOL, (case, float(np.abs(got - want).max()))
    back = portable.to_portable(knet)
    assert sorted(back) == sorted(arrays)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)


@child
@pytest.mark.parametrize("case", BACK, ids=Z.case_id)
def test_keras_weights_give_keras_logits_in_torch(case, zoo):
    want = zoo["keras_logits"][case]
    got = np.load(zoo["out"] / f"{Z.case_id(case)}.torch_logits.npy")
    assert np.abs(want).max() > 0.1
    assert np.abs(got - want).max() <= TOL, (case, float(np.abs(got - want).max()))


@child
def test_adaptive_avg_pool_is_torchs(zoo):
    from tle_keras.torchvision_layout import AdaptiveAvgPool

    with np.load(zoo["out"] / "pools.npz") as data:
        for side, size in Z.POOLS:
            x, want = data[f"x{side}_{size}"], data[f"y{side}_{size}"]
            got = np.asarray(AdaptiveAvgPool(size)(x))
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{side} -> {size}")


@child
def test_portable_errors_name_the_layer(zoo):
    from tle import UserError
    from tle_keras import portable

    case = ("resnet_small", 32, "original")
    arrays = Z.read_torch(case, zoo["out"])[0]
    knet = Z.keras_net(*case)
    missing = {k: v for k, v in arrays.items() if not k.startswith("layer2.0.conv1.")}
    with pytest.raises(UserError, match=r"no layer2\.0\.conv1\.weight for layer conv3_block1_1_conv \(block3\)"):
        portable.from_portable(knet, missing, "run R")
    portable.from_portable(knet, missing, "run R", blocks=["block1", "block2"])  # block3 not asked for
    wrong = {**arrays, "head.fc.weight": np.zeros((3, 64), np.float32)}
    with pytest.raises(UserError, match=r"layer head_logits \(head\.fc\)"):
        portable.from_portable(knet, wrong, "run R", keep_head=True)
    before = np.asarray(knet.net.get_layer("conv1_conv").kernel).copy()
    with pytest.raises(UserError):
        portable.from_portable(knet, {**arrays, "layer4.0.bn2.running_var": np.zeros(3, np.float32)}, "run R")
    np.testing.assert_array_equal(np.asarray(knet.net.get_layer("conv1_conv").kernel), before)  # nothing set
    with pytest.raises(UserError, match="keras.applications' own architecture"):
        portable.to_portable(Z.keras_net("keras_resnet50", 32, "linear"))


@child
@pytest.mark.parametrize("model", PLANS)
def test_plan_counts_equal(model, zoo):
    """`tle plan --json` of both backends, for the name that meant two architectures before."""
    from typer.testing import CliRunner

    from tle.cli import app

    torch_plan = json.loads((zoo["out"] / "plans.json").read_text())[model]
    result = CliRunner().invoke(app, Z.plan_args(model, "keras"))
    assert result.exit_code == 0, result.output
    keras_plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert keras_plan["stages"] == torch_plan["stages"]
    total = sum(b["total"] for b in keras_plan["stages"][0]["blocks"] if b["name"] != "head")
    assert total == {"resnet50": 23_508_032}[model]  # torchvision's conv base; keras.applications' v1: 23,587,712
