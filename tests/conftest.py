import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked own_process run only inside the child pytest their module starts (TLE_KERAS_INPROC=1):
    TensorFlow and torch's exporter (triton) must not share a process."""
    if os.environ.get("TLE_KERAS_INPROC") == "1":
        return
    kept = [i for i in items if i.get_closest_marker("own_process") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def run_own_process(path, timeout=900, durations=None, env=None) -> None:
    """Run the own_process tests of the test file ``path`` in a child pytest (TLE_KERAS_INPROC=1); fail with its
    output unless every one of them passed."""
    extra = [f"--durations={durations}"] if durations else []
    proc = subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "-x", "-p", "no:cacheprovider", *extra],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {}), "TLE_KERAS_INPROC": "1"})
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-4000:]
    print(proc.stdout[-3000:])


def tle(*args, env=None, cwd=None, timeout=600, check_rc=None):
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tle", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """One real MLflow SQLite store for the session (creating one costs seconds of migrations)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{path}"
    # Never let a test touch ./mlflow.db: the in-process client and every subprocess use this store.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture
def store_env(store, tmp_path):
    return {"MLFLOW_TRACKING_URI": store}
