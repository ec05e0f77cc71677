"""``tle export`` / ``tle predict`` of a run trained with ``--no-export``: the ONNX model is built from the run's
logged weights in a worker of its backend, parity-checked and logged to that run, once."""

import json

import pytest

from conftest import tle

pytestmark = pytest.mark.slow


def _train(tmp_path, uri, seed):
    proc = tle("--quiet", "run", "--backend", "numpy", "--model", "mlp", "--dataset", "digits:5-9", "--epochs", "2",
               "--seed", str(seed), "--no-export", "--experiment", "noexport", "--tracking-uri", uri, "--json",
               cwd=tmp_path, check_rc=0)
    return json.loads(proc.stdout)["run_id"]


def test_export_and_predict_build_the_onnx_model_from_the_weights(tmp_path):
    import mlflow
    import numpy as np
    from PIL import Image

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    first, second = _train(tmp_path, uri, 0), _train(tmp_path, uri, 1)
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert "onnx_max_abs_diff" not in client.get_run(first).data.metrics

    target = tmp_path / "out" / "model.onnx"
    proc = tle("export", first, "-o", target, "--tracking-uri", uri, cwd=tmp_path, check_rc=0)
    assert target.is_file() and "building it from its weights in a numpy worker" in proc.stderr
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.metrics["onnx_max_abs_diff"] < 1e-4
    again = tle("export", first, "-o", tmp_path / "again.onnx", "--tracking-uri", uri, cwd=tmp_path, check_rc=0)
    assert "building" not in again.stderr  # logged to the run the first time

    image = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype("uint8")).save(image)
    proc = tle("predict", f"runs:/{second}", image, "--json", "--tracking-uri", uri, cwd=tmp_path, check_rc=0)
    top = json.loads(proc.stdout)["predictions"][0]["top"]
    assert len(top) == 3 and "building it from its weights" in proc.stderr
    assert client.get_run(second).data.metrics["onnx_max_abs_diff"] < 1e-4
