"""An S1-shaped grid over two framework backends on warm local workers, and the same grid on Ray."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tle, tle_inprocess
from test_sweep_run import runs_of

pytestmark = pytest.mark.slow

S1_GRID = ROOT / "examples" / "sweeps" / "s1_offline.yaml"


def test_s1_grid_two_backends_nested_and_isolated(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    grid = yaml.safe_load(S1_GRID.read_text())
    grid["axes"].pop("train.seed")  # one seed and one dataset check the shape (the example has more); CI time
    grid["axes"]["dataset.source"] = ["digits:5-9"]
    grid["axes"]["model"] = ["vgg_small"]
    path = tmp_path / "s1.yaml"
    path.write_text(yaml.safe_dump(grid))
    proc = tle("--quiet", "sweep", path, "--jobs", "2", "--tracking-uri", uri, "--format", "json",
               "--set", "train.epochs=1", "--set", "dataset.train=10", timeout=1200, check_rc=0)
    table = json.loads(proc.stdout)
    assert table["cols"] == ["strategy"]
    assert {(g["backend"], g["strategy"]) for g in table["groups"]} == {
        (b, s) for b in ("torch", "keras") for s in ("feature-extractor", "finetune:block5")}
    assert all(g["n"] == 1 and g["failed"] == 0 and 0.0 <= g["test_acc_mean"] <= 1.0 for g in table["groups"])

    runs = runs_of(uri, "s1-offline")
    parents = [r for r in runs if r.data.tags.get("tle.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    cells = [r for r in children if r.data.tags["tle.role"] == "cell"]
    pretrains = [r for r in children if r.data.tags["tle.role"] == "pretrain"]
    assert len(cells) == 4 and len(pretrains) == 2  # one backbone per backend and model, shared by its cells
    assert all(r.info.status == "FINISHED" for r in children)
    for cell in cells:  # each transfer cell starts from its own backend's and model's pretraining run
        source = next(p for p in pretrains if cell.data.params["weights"] == f"runs:/{p.info.run_id}")
        assert (source.data.tags["backend"], source.data.tags["model"]) == (cell.data.tags["backend"],
                                                                           cell.data.tags["model"])
    # One framework per worker process, imported once per worker: at most --jobs workers per backend.
    workers = {}
    for r in children:
        workers.setdefault(r.data.tags["tle.worker"], set()).add(r.data.tags["backend"])
    assert all(len(backends) == 1 for backends in workers.values()), workers
    for backend in ("torch", "keras"):
        assert 1 <= sum(1 for b in workers.values() if backend in b) <= 2
    # The table is logged on the parent run.
    client_files = {Path(f.path).name for f in _artifacts(uri, parents[0].info.run_id, "results")}
    assert client_files == {"table.md", "table.csv", "table.json"}


def _artifacts(uri, run_id, path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run_id, path)


RAY_GRID = {"name": "ray-vs-local",
            "base": {"backend": "torch", "model": "vgg_small", "dataset": {"source": "digits:5-9", "image_size": 32,
                                                                          "train": 10},
                     "train": {"epochs": 1, "batch_size": 16}, "tracking": {"experiment": "ray-vs-local"}},
            "pretrain": {"dataset": {"source": "digits:0-4", "train": 20}, "train": {"seed": 0}},
            "axes": {"strategy": ["scratch", "feature-extractor"], "train.seed": [0]}}


def test_ray_executor_gives_the_local_table(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'tle[ray]')")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(RAY_GRID))
    tables = {}
    for executor in ("local", "ray"):
        uri = f"sqlite:///{tmp_path / executor}.db"
        proc = tle("--quiet", "sweep", path, "--jobs", "2", "--executor", executor, "--tracking-uri", uri,
                   "--format", "json", timeout=900, check_rc=0)
        tables[executor] = {(g["strategy"]): (g["n"], g["test_acc_mean"]) for g in json.loads(proc.stdout)["groups"]}
        runs = runs_of(uri, "ray-vs-local")
        parent = next(r for r in runs if r.data.tags.get("tle.role") == "sweep")
        assert parent.data.tags["tle.executor"] == executor and parent.info.status == "FINISHED"
        assert sum(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs) == 3
    assert tables["ray"].keys() == tables["local"].keys()
    for strategy, (n, acc) in tables["local"].items():
        assert tables["ray"][strategy][0] == n
        assert tables["ray"][strategy][1] == pytest.approx(acc, abs=1e-6)  # same seeds, same data, same numbers


def test_ray_on_a_cluster_refuses_a_local_sqlite_store(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(RAY_GRID))
    proc = tle_inprocess("sweep", path, "--executor", "ray", "--address", "10.0.0.1:6379", "--tracking-uri",
                         f"sqlite:///{tmp_path / 'm.db'}", check_rc=2)
    assert "MLflow server" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
