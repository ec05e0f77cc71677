"""``tle sweep`` end to end on real worker processes and a real MLflow store: nesting, failures,
resume after a kill, export of the best cells, and many processes on one new store."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import tle

pytestmark = pytest.mark.slow


def grid_file(tmp_path, body, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


def client_for(uri):
    import mlflow

    from tle.store.lock import store_lock

    with store_lock(uri):  # this process may be the one that creates the store: take the lock tle takes
        client = mlflow.MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    return client


def runs_of(uri, experiment, filter_string=""):
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000)


NUMPY_BASE = {"backend": "numpy", "model": "mlp", "dataset": {"source": "digits:5-9", "train": 30},
              "train": {"epochs": 3, "batch_size": 16}}


def test_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = grid_file(tmp_path, {"name": "faults", "base": {**NUMPY_BASE, "tracking": {"experiment": "faults"}},
                                "axes": {"dataset.source": ["digits:5-9", f"folder:{tmp_path / 'missing'}"]}})
    proc = tle("sweep", path, "--tracking-uri", uri, "--format", "json", check_rc=1)
    table = json.loads(proc.stdout)
    by_source = {g["dataset"]: g for g in table["groups"]}
    assert by_source["digits:5-9"]["n"] == 1 and by_source["digits:5-9"]["test_acc_mean"] > 0.5
    assert by_source[f"folder:{tmp_path / 'missing'}"]["failed"] == 1
    runs = runs_of(uri, "faults")
    parent = [r for r in runs if r.data.tags.get("tle.role") == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(r.info.status for r in cells) == ["FAILED", "FINISHED"]
    failed = next(r for r in cells if r.info.status == "FAILED")
    assert "does not exist" in failed.data.tags["tle.error"] and "\n" not in failed.data.tags["tle.error"]
    assert failed.data.tags["axis.dataset.source"].startswith("folder:")
    assert "failed:" in proc.stderr and "Traceback" not in proc.stderr


def test_kill_half_way_then_rerun_finishes_only_missing_cells(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = grid_file(tmp_path, {"name": "resume", "base": {**NUMPY_BASE, "train": {"epochs": 40, "batch_size": 8},
                                                          "tracking": {"experiment": "resume"}},
                                "axes": {"train.lr": [0.05, 0.02, 0.01], "train.seed": [0, 1]}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "tle", "--quiet", "sweep", str(path), "--jobs", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    done = []
    while time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.5)
        try:
            done = runs_of(uri, "resume", "attributes.status = 'FINISHED' and tags.`tle.role` = 'cell'")
        except Exception:
            continue  # the store or experiment is still being created
        if len(done) >= 3:
            break
    assert sweep.poll() is None, f"the sweep ended before it could be killed:\n{sweep.stderr.read()}"
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=90)
    assert sweep.returncode == 130, err
    runs = runs_of(uri, "resume")
    parent = next(r for r in runs if r.data.tags.get("tle.role") == "sweep")
    assert parent.info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"], "a killed sweep left runs RUNNING"
    finished_before = {r.info.run_id for r in runs if r.info.status == "FINISHED" and r.data.tags.get("tle.role") == "cell"}
    assert 3 <= len(finished_before) < 6
    assert any(r.info.status == "KILLED" for r in runs if r.data.tags.get("tle.role") == "cell")

    proc = tle("--quiet", "sweep", path, "--jobs", "2", "--format", "json", env={"MLFLOW_TRACKING_URI": uri},
               check_rc=0)
    assert f"({len(finished_before)} reused)" in proc.stderr
    runs = runs_of(uri, "resume")
    parents = [r for r in runs if r.data.tags.get("tle.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent, reopened
    finished = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("tle.role") == "cell"]
    assert len(finished) == 6 and finished_before <= {r.info.run_id for r in finished}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in finished)
    table = json.loads(proc.stdout)
    assert sorted(g["n"] for g in table["groups"]) == [2, 2, 2]


def test_export_best_exports_one_cell_per_group(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = grid_file(tmp_path, {"name": "best", "base": {**NUMPY_BASE, "export": {"onnx": "best"},
                                                        "tracking": {"experiment": "best"}},
                                "axes": {"train.lr": [0.05, 0.01], "train.seed": [0, 1]}})
    tle("--quiet", "sweep", path, "--tracking-uri", uri, check_rc=0)
    cells = runs_of(uri, "best", "tags.`tle.role` = 'cell'")
    assert len(cells) == 4
    for lr in ("0.05", "0.01"):
        group = [r for r in cells if r.data.tags["axis.train.lr"] == lr]
        exported = [r for r in group if "onnx_max_abs_diff" in r.data.metrics]
        assert len(exported) == 1 and exported[0].data.metrics["onnx_max_abs_diff"] < 1e-4
        assert exported[0].data.metrics["best_val_acc"] == max(r.data.metrics["best_val_acc"] for r in group)
        assert all(r.info.status == "FINISHED" for r in group)


def test_four_runs_at_once_on_a_new_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tle", "--quiet", "run", "--backend", "numpy", "--model", "mlp",
                               "--dataset", "digits", "--epochs", "1", "--seed", str(i), "--experiment", "race",
                               "--tracking-uri", uri, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path) for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1][-500:] for o in outs]
    runs = runs_of(uri, "race")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_dead_tracking_server_fails_within_seconds(tmp_path, kind):
    listener = None
    if kind == "refused":
        port = _free_port()
    else:  # accepts connections, never answers
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        proc = tle("--quiet", "run", "--backend", "numpy", "--model", "mlp", "--dataset", "digits", "--epochs", "1",
                   "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path, timeout=120, check_rc=2)
        elapsed = time.monotonic() - started
    finally:
        if listener is not None:
            listener.close()
    assert elapsed < 15, f"took {elapsed:.1f}s"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not answer" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()


def test_compare_on_a_sweep_writes_curves_and_transfer_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = grid_file(tmp_path, {"name": "cmp", "base": {**NUMPY_BASE, "tracking": {"experiment": "cmp"},
                                                       "export": {"onnx": False}},
                                "pretrain": {"dataset": {"source": "digits:0-4", "train": None}, "train": {"seed": 0}},
                                "axes": {"strategy": ["scratch", "transfer:all"], "train.seed": [0, 1]}})
    table = json.loads(tle("--quiet", "sweep", path, "--tracking-uri", uri, "--format", "json", check_rc=0).stdout)
    moved = next(g for g in table["groups"] if g["strategy"] == "transfer:all")
    assert moved["seeds_compared"] == 2 and 0 <= moved["seeds_better_than_scratch"] <= 2
    assert moved["delta_vs_scratch"] == pytest.approx(moved["test_acc_mean"] - next(
        g for g in table["groups"] if g["strategy"] == "scratch")["test_acc_mean"])
    proc = tle("compare", "--sweep", "cmp", "--runs", "--tracking-uri", uri, "--format", "json", check_rc=0)
    rows = {r["run_id"]: r for r in json.loads(proc.stdout)["runs"]}
    cells = {r.info.run_id: r for r in runs_of(uri, "cmp", "tags.`tle.role` = 'cell'")}
    assert set(cells) <= set(rows) and len(cells) == 4
    client = client_for(uri)
    for run_id, run in cells.items():
        row = rows[run_id]
        if run.data.tags["strategy"] == "scratch":
            assert row["baseline"] is None
            continue
        base = cells[row["baseline"]]  # the scratch cell of the same seed
        assert base.data.tags["strategy"] == "scratch"
        assert base.data.params["train.seed"] == run.data.params["train.seed"]
        assert client.get_run(run_id).data.metrics["transfer_jumpstart"] == pytest.approx(row["jumpstart"])
    parent = next(r for r in runs_of(uri, "cmp") if r.data.tags.get("tle.role") == "sweep")
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == ["plots/val_acc_curves.png"]
    md = tle("compare", "--sweep", parent.info.run_id, "--runs", "--tracking-uri", uri, "--format", "markdown",
             "--filter", "tags.strategy = 'transfer:all'", check_rc=0).stdout
    assert md.count("| transfer:all |") == 2 and "| scratch |" not in md


def test_sweep_run_from_python_ends_its_parent(tmp_path):
    """The study layer owns the parent run: ``Sweep.run()`` without the CLI ends it FINISHED with its table."""
    from rich.console import Console

    from tle.studies.grid import load_grid
    from tle.studies.sweep import Sweep

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = grid_file(tmp_path, {"name": "api", "base": {**NUMPY_BASE, "tracking": {"experiment": "api"}},
                                "axes": {"train.seed": [0, 1]}})
    result = Sweep(load_grid(path), tracking_uri=uri, console=Console(stderr=True), quiet=True).run()
    assert result.ok and result.table is not None
    parent = client_for(uri).get_run(result.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["cells_finished"] == 2
    assert [a.path for a in client_for(uri).list_artifacts(result.parent_id, "results")] == [
        "results/table.csv", "results/table.json", "results/table.md"]
