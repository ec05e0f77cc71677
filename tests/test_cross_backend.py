"""The torch and keras backends mean the same thing: same data splits, plans, initialisers, results, ONNX contract.

Each backend runs in its own process (TensorFlow and triton, which torch's
ONNX exporter loads, crash one process together), through the real CLI where
there is one, against a temporary MLflow store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import tle

BACKENDS = ("torch", "keras")
pytestmark = pytest.mark.skipif(
    any(find_spec(m) is None for m in ("torch", "torchvision", "tensorflow", "keras", "tle_torch", "tle_keras")),
    reason="needs both the torch and the keras backend installed")

EPOCHS = 12
STRATEGIES = ("scratch", "feature-extractor", "finetune:block5", "transfer:block3")
INITS = ("glorot_uniform", "he_normal", "lecun_normal", "normal:0.02")


def python(code: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


def run_json(*args, env, cwd) -> dict:
    proc = tle("--quiet", "run", *args, "--json", env=env, cwd=cwd, check_rc=0)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """sklearn's digits as PNG files in class folders: 12 images of each of the 10 classes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("folder")
    digits = load_digits()
    for c in range(10):
        (root / str(c)).mkdir()
        for i, index in enumerate(np.flatnonzero(digits.target == c)[:12]):
            pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / str(c) / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def digits_runs(store, tmp_path_factory):
    """vgg_small trained from scratch on digits at 32 px by each backend with one spec."""
    cwd = tmp_path_factory.mktemp("runs")
    env = {"MLFLOW_TRACKING_URI": store}
    return {b: run_json("--backend", b, "--model", "vgg_small", "--dataset", "digits", "--image-size", 32,
                        "--epochs", EPOCHS, "--batch-size", 32, "--lr", 1e-3, "--seed", 0, "--experiment", "cross",
                        env=env, cwd=cwd) for b in BACKENDS}


def test_same_split_for_the_same_spec(digits_runs, store):
    # The core loads and splits every source before a backend sees it (a folder source the same way:
    # tests/test_data.py), so the two backends' runs of one spec log one split fingerprint.
    client = MlflowClient(store)
    params = {b: client.get_run(r["run_id"]).data.params for b, r in digits_runs.items()}
    assert params["torch"]["data.fingerprint"] == params["keras"]["data.fingerprint"]
    assert params["torch"]["data.train_size"] == params["keras"]["data.train_size"]
    # The same splits are MLflow dataset inputs of both runs (the UI's Dataset column): one per split.
    for b, r in digits_runs.items():
        inputs = client.get_run(r["run_id"]).inputs.dataset_inputs
        seen = {t.value: d.dataset for d in inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert sorted(seen) == ["test", "train", "val"], b
        assert {d.name for d in seen.values()} == {"digits"}
        assert {d.digest for d in seen.values()} == {f"{params[b]['data.fingerprint']}-{s}" for s in seen}


PLAN_CODE = """
import json
from typer.testing import CliRunner
from tle.cli import app
out = {{}}
for model in ("vgg16", "vgg19"):
    for strategy in {strategies!r}:
        r = CliRunner().invoke(app, ["plan", "--backend", "{backend}", "--model", model, "--strategy", strategy,
                                     "--image-size", "32", "--classes", "10", "--json"])
        assert r.exit_code == 0, r.output
        plan = json.loads(r.stdout.strip().splitlines()[-1])
        out[model + "/" + strategy] = [[(b["name"], b["total"], b["trainable"]) for b in s["blocks"]]
                                       for s in plan["stages"]]
print(json.dumps(out))
"""


def test_plans_count_the_same_parameters():
    plans = {b: json.loads(python(PLAN_CODE.format(backend=b, strategies=STRATEGIES))) for b in BACKENDS}
    assert plans["torch"] == plans["keras"]
    assert plans["keras"]["vgg16/finetune:block5"][1][4] == ["block5", 7_079_424, 7_079_424]
    assert sum(t for _, t, _ in plans["keras"]["vgg16/scratch"][0][:5]) == 14_714_688


INIT_CODE = """
import json
from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.initializers import InitSpec
from tle.backends.manager import load_backend
from tle.contract.spec import HeadSpec
hook = load_backend("{backend}").hook
net = hook.load_backbone(blueprint=Blueprint("vgg16", tuple(str(i) for i in range(10)), (32, 32, 3), HeadSpec()),
                         weights=ResolvedWeights(kind="none"))
out = {{}}
for text in {inits!r}:
    hook.apply_init(model=net, blocks=["block5"], init=InitSpec.parse(text), seed=0)
    {extract}
    out[text] = [float(w.std()), float(abs(w.mean()))]
print(json.dumps(out))
"""
EXTRACT = {
    # The first conv of block5 (torchvision's features.24, 3x3x512x512) in each framework's own layout.
    "torch": "import torch; w = next(m for m in net.body['block5'].modules() "
             "if isinstance(m, torch.nn.Conv2d)).weight.detach().numpy()",
    "keras": "w = net.net.get_layer('features_24').kernel.numpy()",
}


def test_initialisers_draw_the_same_distribution():
    stats = {b: json.loads(python(INIT_CODE.format(backend=b, inits=INITS, extract=EXTRACT[b]))) for b in BACKENDS}
    fan = 3 * 3 * 512
    from tle.contract.initializers import InitSpec

    for text in INITS:
        expected = InitSpec.parse(text).expected_std(fan, fan)
        for b in BACKENDS:
            assert stats[b][text][0] == pytest.approx(expected, rel=0.02), (b, text)
        assert stats["torch"][text][0] == pytest.approx(stats["keras"][text][0], rel=0.03), text


def test_same_spec_reaches_comparable_accuracy(digits_runs):
    acc = {b: r["test_acc"] for b, r in digits_runs.items()}
    # Ten classes, chance 0.1. The spec fixes the model, data, split, initialiser, optimiser (Adam, lr,
    # epsilon 1e-7) and input scaling, but the two frameworks draw their own initial weights, shuffles and
    # dropout masks. A VGG without BatchNorm is sensitive to those: at 5 epochs (still climbing) runs of
    # either framework spread by 0.1 across seeds; at 12 epochs both sit near 0.9-0.95 and seeds 0 and 1
    # gave torch 0.939/0.953, keras 0.939/0.883 on these 359 test images. So 0.1 is "the same result".
    assert min(acc.values()) > 0.85, acc
    assert abs(acc["torch"] - acc["keras"]) < 0.1, acc


def test_onnx_models_of_both_backends_serve_in_tle_predict(digits_runs, image_folder, store):
    preds = {}
    for b, r in digits_runs.items():
        proc = tle("predict", f"runs:/{r['run_id']}", image_folder, "--json", "--cpu",
                   env={"MLFLOW_TRACKING_URI": store}, check_rc=0)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        preds[b] = {row["file"]: row["top"][0]["class"] for row in out["predictions"]}
    assert preds["torch"].keys() == preds["keras"].keys() and len(preds["torch"]) == 120
    truth = {f: os.path.basename(os.path.dirname(f)) for f in preds["torch"]}
    for b in BACKENDS:
        assert np.mean([preds[b][f] == truth[f] for f in truth]) > 0.6, b
    assert np.mean([preds["torch"][f] == preds["keras"][f] for f in truth]) > 0.6


def test_convert_gives_the_other_framework_the_same_function(digits_runs, store):
    """``tle convert`` of a keras run: torch's vgg_small, built from the run's portable weights, gives Keras's
    logits on the run's test images within 1e-4, and lands as a new FINISHED run with native weights and an
    ONNX model. (torch -> keras: the next test's runs:/ and tests/test_keras_torchvision_zoo.py's parity; the
    command is the same code path.)"""
    source, target = "keras", "torch"
    run = digits_runs[source]
    proc = tle("--quiet", "convert", run["run_id"], "--to", target, "--json", env={"MLFLOW_TRACKING_URI": store},
               check_rc=0)
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout  # one JSON object on one line, like every --json
    out = json.loads(proc.stdout)
    assert out["backend"] == target and out["source_run_id"] == run["run_id"]
    assert out["max_abs_diff"] <= 1e-4 and out["images"] > 300, out
    assert out["test_acc"] == pytest.approx(run["test_acc"], abs=0.01), out
    converted = MlflowClient(store).get_run(out["run_id"])
    assert converted.info.status == "FINISHED"
    assert converted.data.tags["tle.converted_from"] == run["run_id"] and converted.data.tags["backend"] == target
    assert converted.data.metrics["convert_max_abs_diff"] == pytest.approx(out["max_abs_diff"])
    assert converted.data.metrics["onnx_max_abs_diff"] < 1e-4
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(out["run_id"])}
    assert {"weights", "spec.yaml", "class_names.json"} <= artifacts, artifacts


def test_keras_trains_on_a_torch_runs_backbone(digits_runs, store, tmp_path):
    """``--weights runs:/TORCH_RUN`` in a keras run: torch's backbone (and its head: same classes) goes into Keras's
    vgg_small, and a frozen-backbone run keeps torch's accuracy (chance is 0.1). Another architecture is refused
    before anything runs."""
    torch_run = digits_runs["torch"]["run_id"]
    common = ("--backend", "keras", "--model", "vgg_small", "--dataset", "digits", "--image-size", 32, "--epochs", 3,
              "--batch-size", 32, "--lr", 1e-3, "--seed", 0, "--experiment", "cross", "--no-export",
              "--strategy", "feature-extractor")
    env = {"MLFLOW_TRACKING_URI": store}
    transferred = run_json(*common, "--weights", f"runs:/{torch_run}", env=env, cwd=tmp_path)
    assert transferred["test_acc"] > 0.8, transferred
    bad = tle("--quiet", "run", *common[:2], "--model", "resnet_small", *common[4:], "--weights",
              f"runs:/{torch_run}", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "not a resnet_small" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_keras_reads_a_torchvision_state_dict_and_names_torchs_imagenet_file(store, tmp_path):
    """``--weights PATH.pth`` in Keras: torch reads the file in a worker of its own and hands it over; its logits
    on Keras's resnet18 equal torchvision's own model's. ``--weights imagenet`` for a torchvision-layout model,
    offline and absent from the torch hub cache: one line naming the file to put there."""
    path = tmp_path / "resnet18.pth"
    reference = python(f"""
import json, numpy as np, torch, torchvision
torch.manual_seed(0)
net = torchvision.models.resnet18(num_classes=10).eval()
torch.save(net.state_dict(), {str(path)!r})
np.savez({str(tmp_path / "fc.npz")!r}, w=net.fc.weight.detach().numpy(), b=net.fc.bias.detach().numpy())
x = torch.from_numpy(np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32))
mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
with torch.no_grad():
    print(json.dumps(net((x.permute(0, 3, 1, 2) - mean) / std).tolist()))
""")
    got = python(f"""
import json, numpy as np
from pathlib import Path
from tle.contract.records import Blueprint, ResolvedWeights
from tle.backends.manager import load_backend
from tle.contract.spec import HeadSpec
import tle.run.weights  # provides the reader a backend asks for weights another backend reads (tle run imports it)
hook = load_backend("keras").hook
names = [str(i) for i in range(10)]
net = hook.load_backbone(blueprint=Blueprint("resnet18", tuple(names), (32, 32, 3), HeadSpec(kind="original"), seed=1),
                         
                         weights=ResolvedWeights(kind="file", source="resnet18.pth", path=Path({str(path)!r})))
# The original head's last layer is drawn anew (a state dict knows no classes): set torchvision's fc for the check.
fc = np.load({str(tmp_path / "fc.npz")!r})
net.net.get_layer("head_logits").set_weights([fc["w"].T, fc["b"]])
x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
print(json.dumps(hook.evaluate(model=net, images=x, labels=None, batch_size=4).logits.tolist()))
""", env={"MLFLOW_TRACKING_URI": store})
    assert np.abs(np.array(json.loads(got)) - np.array(json.loads(reference))).max() <= 1e-4
    proc = tle("--quiet", "run", "--backend", "keras", "--model", "resnet18", "--dataset", "digits", "--image-size",
               32, "--weights", "imagenet", "--epochs", 1, env={"MLFLOW_TRACKING_URI": store,
                                                               "TORCH_HOME": str(tmp_path / "no-hub")})
    assert proc.returncode == 2 and "resnet18-f37072fd.pth" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
