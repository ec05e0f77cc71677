"""A sweep's life in the store: the executor is checked before the parent run exists, and the parent and every
cell end FINISHED, FAILED (with ``tle.error``) or KILLED whatever ends the sweep, SIGTERM included.

Ray with ``--address`` refuses a local SQLite store, so these run against a real ``mlflow server``."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import runs_in, tle

pytestmark = pytest.mark.slow

NUMPY_BASE = {"backend": "numpy", "model": "mlp", "dataset": {"source": "digits:5-9", "train": 30},
              "train": {"epochs": 2, "batch_size": 16}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` on a SQLite store, in its own process group (stopped with it)."""
    pytest.importorskip("ray")
    import mlflow

    from tle.store.lock import store_lock

    tmp = tmp_path_factory.mktemp("server")
    uri = f"sqlite:///{tmp / 'server.db'}"
    with store_lock(uri):
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1", "--backend-store-uri", uri,
                                 "--artifacts-destination", str(tmp / "artifacts")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
        yield base, uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _grid(tmp_path, name, body=None):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body or {"name": name, "base": {**NUMPY_BASE, "tracking": {"experiment": name}},
                                            "axes": {"train.seed": [0, 1]}}))
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_a_ray_address_where_nothing_listens_fails_in_seconds_and_creates_no_run(tmp_path, server, form):
    base, store = server
    address = form.format(f"127.0.0.1:{_free_port()}")
    started = time.monotonic()
    proc = tle("--quiet", "sweep", _grid(tmp_path, "deadray"), "--executor", "ray", "--address", address,
               "--tracking-uri", base, timeout=90, check_rc=2)
    elapsed = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing answers at the Ray address" in lines[0] and address in lines[0], lines
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert runs_in(store, "deadray") == []


def test_sigterm_while_ray_waits_for_its_cluster_creates_no_run_and_ends_killed(tmp_path, server):
    """Something listens at the address but is not Ray: the probe passes, Ray's client waits; SIGTERM then."""
    base, store = server
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))  # Ray dials 127.0.0.1 as this node's own IP address
    listener.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=accept, daemon=True).start()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "tle", "--quiet", "sweep", str(_grid(tmp_path, "waitray")),
                              "--executor", "ray", "--address", f"127.0.0.1:{listener.getsockname()[1]}",
                              "--tracking-uri", base], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        deadline = time.monotonic() + 120
        while len(accepted) < 2 and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.2)  # the probe's connection, then Ray's own
        assert sweep.poll() is None and len(accepted) >= 2, sweep.stderr.read() if sweep.poll() is not None else ""
        time.sleep(1.0)
        sent = time.monotonic()
        sweep.send_signal(signal.SIGTERM)
        _, err = sweep.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if sweep.poll() is None:
            sweep.kill()
        listener.close()
        for conn in accepted:
            conn.close()
    assert sweep.returncode == 130, err
    # Ray's GCS client waits in C++, where Python runs no handler: 70 s here before ray.init left the main thread
    assert took < 20, f"{took:.1f}s from SIGTERM to exit"
    lines = err.strip().splitlines()
    assert lines[0].startswith("joining the Ray cluster at 127.0.0.1:") and lines[-1] == "interrupted", lines
    assert runs_in(store, "waitray") == [], "the parent run was created before Ray was joined"


def test_a_ray_cluster_that_never_lets_the_sweep_join_fails_it_after_the_join_timeout(tmp_path, server):
    """Something listens at the address but is not Ray (before: Ray's client retried for minutes, over 6 here)."""
    base, store = server
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen(16)
    try:
        started = time.monotonic()
        proc = tle("--quiet", "sweep", _grid(tmp_path, "slowray"), "--executor", "ray", "--address",
                   f"127.0.0.1:{listener.getsockname()[1]}", "--tracking-uri", base,
                   env={"TLE_RAY_JOIN_TIMEOUT": "5"}, timeout=120, check_rc=2)
        took = time.monotonic() - started
    finally:
        listener.close()
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("joining the Ray cluster at") and "up to 5s" in lines[0], lines
    (error,) = [line for line in lines if line.startswith("error:")]
    assert "did not let this sweep join within 5s" in error, lines
    # Besides: Ray's C++ client's own warnings ("[... W ...] rpc_client.h: Failed to connect to GCS ...").
    assert all(line.startswith(("joining", "error:", "[")) for line in lines) and "Traceback" not in proc.stderr
    assert took < 60, f"{took:.1f}s"
    assert runs_in(store, "slowray") == []


def test_sigterm_mid_sweep_ends_parent_and_cells_killed_with_a_reason(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = _grid(tmp_path, "term", {"name": "term", "base": {**NUMPY_BASE, "train": {"epochs": 400, "batch_size": 8},
                                                             "tracking": {"experiment": "term"}},
                                    "axes": {"train.seed": [0, 1]}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "tle", "--quiet", "sweep", str(path), "--jobs", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.5)
        try:
            if any(r.data.tags.get("tle.role") == "cell" and r.info.status == "RUNNING" for r in runs_in(uri, "term")):
                break
        except Exception:
            continue  # the store is still being created
    assert sweep.poll() is None, sweep.stderr.read()
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=90)
    assert sweep.returncode == 130, err
    runs = runs_in(uri, "term")
    parent = next(r for r in runs if r.data.tags.get("tle.role") == "sweep")
    assert parent.info.status == "KILLED" and parent.data.tags.get("tle.error") == "interrupted"
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    assert all(r.data.tags.get("tle.error") for r in runs if r.info.status == "KILLED")


def test_a_sweep_with_a_failed_cell_ends_its_parent_failed_with_the_reason(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = _grid(tmp_path, "half", {"name": "half", "base": {**NUMPY_BASE, "tracking": {"experiment": "half"}},
                                    "axes": {"dataset.source": ["digits:5-9", f"folder:{tmp_path / 'missing'}"]}})
    tle("--quiet", "sweep", path, "--tracking-uri", uri, check_rc=1)
    runs = runs_in(uri, "half")
    parent = next(r for r in runs if r.data.tags.get("tle.role") == "sweep")
    assert parent.info.status == "FAILED" and parent.data.tags["tle.error"] == "1 of 2 cells did not finish"
    assert all(r.data.tags.get("tle.error") for r in runs if r.info.status == "FAILED")


def test_a_worker_that_dies_ends_its_cell_run_failed_at_once(tmp_path):
    """SIGKILL to the warm worker mid-cell (as the OOM killer would): the sweep sees its pipe close, ends the run the
    worker left RUNNING FAILED with the reason (before: that run stayed RUNNING and a second, FAILED run was made)."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = _grid(tmp_path, "dies", {"name": "dies", "base": {**NUMPY_BASE, "train": {"epochs": 2000, "batch_size": 4},
                                                             "tracking": {"experiment": "dies"}},
                                    "axes": {"train.seed": [0]}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "tle", "--quiet", "sweep", str(path), "--jobs", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        running = None
        while time.monotonic() < deadline and sweep.poll() is None and running is None:
            time.sleep(0.5)
            try:
                running = next((r for r in runs_in(uri, "dies") if r.data.tags.get("tle.role") == "cell"
                                and r.info.status == "RUNNING"), None)
            except Exception:
                continue  # the store is being created
        assert running is not None, sweep.stderr.read() if sweep.poll() is not None else "no cell run in time"
        (worker,) = [int(k) for t in Path(f"/proc/{sweep.pid}/task").glob("*")
                     for k in (t / "children").read_text().split()]
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        _, err = sweep.communicate(timeout=90)
        took = time.monotonic() - killed
    finally:
        if sweep.poll() is None:
            sweep.kill()
    print(f"worker SIGKILL -> sweep exit {sweep.returncode}: {took:.1f}s")
    assert sweep.returncode == 1, err
    assert took < 30, f"{took:.1f}s"
    runs = runs_in(uri, "dies")
    cells = [r for r in runs if r.data.tags.get("tle.role") == "cell"]
    assert [r.info.run_id for r in cells] == [running.info.run_id], "the dead worker's run was not the one ended"
    assert cells[0].info.status == "FAILED" and "worker for numpy exited with code -9" in cells[0].data.tags["tle.error"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
