"""The spiking backend through the real CLI into a real MLflow store: S2 in small (net A on digits 0-4, net B
on 5-9 reusing A's conv1-conv2, ``tle fuse``), ``tle plan``'s phases, ``tle predict`` on the fused ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import tle, tle_inprocess  # noqa: E402

COMMON = ("--backend", "spyketorch", "--model", "mozafari_small", "--image-size", 16, "--batch-size", 16,
          "--experiment", "snn", "--set", "dataset.max_per_class=90")


def run(env, *args):
    proc = tle("--quiet", "run", *COMMON, *args, "--json", env=env, check_rc=0)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def s2(store):
    env = {"MLFLOW_TRACKING_URI": store}
    a = run(env, "--dataset", "digits:0-4", "--epochs", 3)
    b = run(env, "--dataset", "digits:5-9", "--epochs", 3, "--strategy", "feature-extractor",
            "--weights", f"runs:/{a['run_id']}")
    fused = json.loads(tle("--quiet", "fuse", a["run_id"], b["run_id"], "--align", "names", "--json", env=env,
                           check_rc=0).stdout)
    return env, a, b, fused


@pytest.mark.slow
def test_networks_train_above_chance_into_mlflow(s2):
    import mlflow

    _, a, b, _ = s2
    assert a["test_acc"] > 0.6 and b["test_acc"] > 0.5  # chance is 0.2
    assert a["onnx_max_abs_diff"] == 0.0 and b["onnx_max_abs_diff"] == 0.0
    client = mlflow.MlflowClient(s2[0]["MLFLOW_TRACKING_URI"])
    run_a = client.get_run(a["run_id"])
    assert run_a.data.tags["backend"] == "spyketorch" and run_a.info.status == "FINISHED"
    # No --init: the backend's default, Mozafari's N(0.8, 0.05), is what ran and what was logged.
    assert run_a.data.tags["init"] == "normal:0.05" and run_a.data.params["init.name"] == "normal"
    metrics = run_a.data.metrics
    # STDP moved the synapses towards their bounds (a layer drawn from N(0.8, 0.05) measures 0.64).
    assert 0 <= metrics["conv1_convergence"] < 0.3 and 0 <= metrics["conv2_convergence"] < 0.5
    assert len(client.get_metric_history(a["run_id"], "val_acc")) == 3
    artifacts = {f.path for f in client.list_artifacts(a["run_id"])}
    assert {"weights", "plots", "spec.yaml", "class_names.json"} <= artifacts
    # Network B learned conv3 only: its conv1-conv2 are A's, frozen (no STDP phase ran).
    assert "conv1_convergence" not in client.get_run(b["run_id"]).data.metrics
    assert client.get_run(b["run_id"]).data.metrics["trainable_params_stage0"] == 25 * 20 * 64 * 9 // 5


@pytest.mark.slow
def test_fuse_logs_a_run_beside_bagging_and_each_network(s2, tmp_path):
    import mlflow

    env, a, b, fused = s2
    acc = fused["accuracy"]
    assert fused["tasks"] == ["digits:0-4", "digits:5-9", "union"]
    assert acc["A"][1] == 0.0 and acc["B"][0] == 0.0  # a network alone cannot name the other's classes
    assert acc["fused"][2] > 0.3 and acc["bagging"][2] > max(acc["A"][2], acc["B"][2])
    assert fused["sizes"]["fused"] == fused["sizes"]["A"] and fused["sizes"]["bagging"] == 2 * fused["sizes"]["A"]
    assert fused["onnx_max_abs_diff"] == 0.0
    run = mlflow.MlflowClient(s2[0]["MLFLOW_TRACKING_URI"]).get_run(fused["run_id"])
    assert run.data.tags["tle.parents"] == f"{a['run_id']},{b['run_id']}"
    assert run.data.metrics["fused_acc_union"] == acc["fused"][2]
    paths = {f.path for f in mlflow.MlflowClient(s2[0]["MLFLOW_TRACKING_URI"]).list_artifacts(fused["run_id"], "export")}
    assert paths == {"export/model.nir"}

    # tle predict serves the fused SNN like any CNN, with the union's class names.
    from PIL import Image
    from tle_torch.testing import digits_dataset

    image = digits_dataset(range(10), size=16).x_test[0]
    Image.fromarray((image[..., 0] * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    out = json.loads(tle("predict", fused["run_id"], tmp_path / "digit.png", "--json", env=env, check_rc=0).stdout)
    assert out["predictions"][0]["top"][0]["class"] in [str(i) for i in range(10)]


def test_plan_shows_the_training_phases():
    rows = json.loads(tle("plan", "--backend", "spyketorch", "--model", "mozafari", "--channels", 1, "--json",
                          check_rc=0).stdout)["stages"]
    assert [(p["block"], p["rule"]) for p in rows[0]["phases"]] == [("conv1", "STDP"), ("conv2", "STDP"),
                                                                     ("head", "R-STDP")]
    # A stage that freezes conv1-conv2 (feature-extractor: S2's network B) runs R-STDP only.
    from tle.cli.inspect import _phases
    from tle.backends.manager import load_backend
    from tle.contract.strategy import Rates, build_plan

    info = load_backend("spyketorch").model("mozafari")
    stage = build_plan("feature-extractor", info.blocks, Rates(5, 1e-3)).stages[0]
    assert [p.block for p in _phases(info, stage)] == ["head"]


def test_fuse_needs_a_backend_that_can_fuse(store, tmp_path):
    from tle.run.runner import RunOptions, run_experiment
    from tle.contract.spec import build_spec

    ids = [run_experiment(build_spec({"backend": "numpy", "model": "mlp", "dataset": f"digits:{classes}",
                                      "train": {"epochs": 1}, "export": {"onnx": False},
                                      "tracking": {"experiment": "snn-numpy", "uri": store}}), RunOptions(quiet=True)).run_id
           for classes in ("0-1", "2-3")]
    proc = tle_inprocess("fuse", *ids, env={"MLFLOW_TRACKING_URI": store})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: backend 'numpy' cannot fuse models")
    assert len(proc.stderr.strip().splitlines()) == 1
