"""A fused run is a stored run like any other (issue 26): ``tle fuse --no-export`` writes its spec, class names,
data fingerprint and weights as ``tle run`` does, so ``tle export``, ``tle predict`` and ``tle convert`` of it
rebuild the fused model from them.

Two heads (digits 0-4 and 5-9) on one frozen torch ``vgg_small`` backbone, one epoch each, fused at ``--keep
0.25`` so that the fused head (64 + 64 hidden units) is not a parent's (256): its spec must name it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

from conftest import tle  # noqa: E402

pytestmark = pytest.mark.slow
ENV = {"OMP_NUM_THREADS": "1"}


def _run(store, source, *args):
    proc = tle("--quiet", "run", "--backend", "torch", "--model", "vgg_small", "--dataset", source,
               "--image-size", 32, "--epochs", 1, "--max-per-class", 30, "--no-export", "--experiment", "fused-export",
               *args, "--json", env={"MLFLOW_TRACKING_URI": store, **ENV}, check_rc=0)
    return json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]


@pytest.fixture(scope="module")
def fused(store):
    backbone = _run(store, "digits:0-4", "--head", "linear")
    heads = [_run(store, source, "--strategy", "feature-extractor", "--weights", f"runs:/{backbone}")
             for source in ("digits:0-4", "digits:5-9")]
    proc = tle("--quiet", "fuse", *heads, "--align", "names", "--keep", "0.25", "--no-export", "--json",
               env={"MLFLOW_TRACKING_URI": store, **ENV}, check_rc=0)
    return heads, json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fused_run_holds_what_a_run_holds(fused, store):
    import mlflow

    from tle.store.stored_run import StoredRun

    heads, result = fused
    client = mlflow.MlflowClient(store)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and "tle.rebuild_error" not in run.data.tags
    artifacts = {f.path for f in client.list_artifacts(result["run_id"])}
    assert {"spec.yaml", "class_names.json", "weights"} <= artifacts and "onnx_max_abs_diff" not in run.data.metrics
    with StoredRun(result["run_id"], store) as stored, StoredRun(heads[0], store) as first:
        assert stored.parents == heads
        assert stored.class_names == [str(d) for d in range(10)]
        # The first parent's data (its split, so its fingerprint), the fused head: 64 + 64 units.
        assert stored.fingerprint == first.fingerprint
        spec = stored.spec()
        assert (spec.backend, spec.model, spec.head.hidden, spec.export.onnx) == ("torch", "vgg_small", 128, False)


def test_tle_export_and_predict_of_a_fused_run_built_without_export(fused, store, tmp_path):
    import mlflow
    from PIL import Image

    from tle.interop.serving import open_model

    _, result = fused
    run_id = result["run_id"]
    target = tmp_path / "fused.onnx"
    proc = tle("export", run_id, "-o", target, env={"MLFLOW_TRACKING_URI": store, **ENV}, check_rc=0)
    assert "building it from its weights in a torch worker" in proc.stderr
    run = mlflow.MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["onnx_max_abs_diff"] < 1e-4
    assert "tle.export_error" not in run.data.tags
    model = open_model(target, prefer_gpu=False)
    assert model.class_names == [str(d) for d in range(10)] and model.image_size == (32, 32)

    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray((rng.random((32, 32)) * 255).astype("uint8")).save(files[-1])
    proc = tle("predict", f"runs:/{run_id}", *files, "--json", env={"MLFLOW_TRACKING_URI": store, **ENV},
               check_rc=0)
    predictions = json.loads(proc.stdout)["predictions"]
    assert len(predictions) == 3 and "building" not in proc.stderr  # the ONNX model export logged
    assert all(p["top"][0]["class"] in model.class_names for p in predictions)


def test_a_fused_run_that_its_spec_cannot_rebuild_is_refused_in_one_line(fused, store):
    import mlflow

    from tle.store.stored_run import REBUILD_ERROR
    from tle.studies.fusion import Destination, FusionRequest, run_fusion

    heads, _ = fused
    run_id = run_fusion(heads, FusionRequest(align="names", export=False), Destination(store, quiet=True)).run_id
    mlflow.MlflowClient(store).set_tag(run_id, REBUILD_ERROR, "a backend's fused model its spec cannot name")
    proc = tle("export", run_id, env={"MLFLOW_TRACKING_URI": store, **ENV})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot be rebuilt from its spec" in lines[0], proc.stderr
