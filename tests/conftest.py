import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from tle.store.tracking import tracking_uri_kept

ROOT = Path(__file__).resolve().parents[1]


# Measured, study-sized checks (minutes each on 2 cores), marked study: `make test` (CI) runs them with the rest,
# `make test-studies` (-m study) only them. Each asserts something that can fail (see its docstring). Those in
# STUDIES_ONLY are marked long too: only `make test-studies` runs them (`make test` deselects -m long), so that CI
# stays inside its 30 minutes on 2 cores.
STUDY = (
    "test_batchnorm_finetune.py",  # BN frozen vs train, 3 seeds x 2 frameworks (a sweep of 20 runs)
    "test_mlflow_ui.py",  # a real MLflow server and Chromium
    "test_cnn_fusion_keras.py",  # Keras's CNN fusion (torch's is in the default run)
    "test_keras_reuse.py",  # a warm worker's reused Keras model is bit-identical to a fresh one
    "test_keras_distributed.py",  # MirroredStrategy over two logical CPUs
    "test_spyketorch_fusion.py::test_index_fusion",  # S2 end to end: two spiking nets of 10 epochs, four fusions
    "test_s2_letters.py",  # S2 on digits -> EMNIST-format letters at S2's 50 epochs: the issue's bar for the real pair
    "test_sweep_backends.py::test_ray_executor",  # a sweep on a local Ray cluster
)
STUDIES_ONLY = (  # a part of STUDY
    "test_s2_letters.py",  # about 6 min of one worker, the longest test: CI ran 1732 s of its 1800 with it
)


def listed(item, names) -> bool:
    """Whether the test ``item`` is one of ``names`` (a file, or file::test-name prefix)."""
    key = f"{Path(item.fspath).name}::{item.name}"
    return any(key.startswith(s) if "::" in s else Path(item.fspath).name == s for s in names)


def pytest_collection_modifyitems(config, items):
    """Tests marked own_process run only inside the child pytest their module starts (TLE_KERAS_INPROC=1):
    TensorFlow and torch's exporter (triton) must not share a process. Tests listed in STUDY are marked study, and
    their files come first."""
    for item in items:
        if listed(item, STUDY):
            item.add_marker(pytest.mark.study)
        if listed(item, STUDIES_ONLY):
            item.add_marker(pytest.mark.long)
    # The files with study-sized checks first (a stable sort: each file's tests stay together and in order): xdist
    # hands out whole files in this order, so the longest start early instead of leaving one worker alone at the end.
    long_files = {Path(i.fspath) for i in items if i.get_closest_marker("study")}
    items.sort(key=lambda i: Path(i.fspath) not in long_files)
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


# A module whose TensorFlow tests must not share the test process (see run_own_process) starts with
#     pytestmark = needs("tensorflow", "keras")
#     test_<name>_in_own_process = in_own_process(__file__, durations=5)
# and marks those tests @child.
IN_CHILD = os.environ.get("TLE_KERAS_INPROC") == "1"  # this process is the child pytest of such a module
child = pytest.mark.own_process  # deselected (not skipped) in the parent; the child runs them


def needs(*modules: str):
    """A ``skipif`` mark for tests that need every one of ``modules`` installed."""
    missing = [m for m in modules if find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


def in_own_process(path, **run):
    """The test that runs the ``child`` tests of the test file ``path`` in a child pytest (``run`` goes to
    :func:`run_own_process`); skipped in that child."""

    @pytest.mark.skipif(IN_CHILD, reason="this is the child")
    def test_in_own_process():
        run_own_process(path, **run)

    return test_in_own_process


def tle(*args, env=None, cwd=None, timeout=600, check_rc=None):
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tle", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def tle_inprocess(*args, env=None, cwd=None, check_rc=None):
    """The CLI (``tle.cli.main``: its exit codes and error lines) in this process, inside typer's ``CliRunner``
    isolation (its own stdout, stderr and environment): for tests that check a user error's exit code and line,
    without the second or more an interpreter and the CLI's imports take to start. Returns what :func:`tle` returns.

    Everything the call changes in this process is given back (environment, working folder, the CLI's global flags,
    the SIGTERM handler, MLflow's tracking URI). Warnings go to its stderr as a fresh interpreter's filters show them,
    so "one line" means what it means to a user. A command that loads TensorFlow must not run here (TensorFlow and
    torch's exporter crash one process, see :func:`run_own_process`): this fails if one did. Keep :func:`tle` for what
    only a real process shows (signals, a process's exit, the frameworks a command loads)."""
    import signal
    import warnings

    from tle.cli import main
    from tle.cli.app import STATE
    from typer.testing import CliRunner

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    had_tensorflow = "tensorflow" in sys.modules
    environ, state, here, sigterm = dict(os.environ), dict(STATE), os.getcwd(), signal.getsignal(signal.SIGTERM)
    argv = [str(a) for a in args]
    code = 0
    try:
        with tracking_uri_kept(), CliRunner().isolation(env={"COLUMNS": "200", **(env or {})}) as (out, err, _), \
                warnings.catch_warnings():
            warnings.resetwarnings()  # Python's defaults, not pytest's
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.showwarning = show
            if cwd is not None:
                os.chdir(cwd)
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode(errors="replace")
    finally:
        os.chdir(here)
        STATE.update(state)
        signal.signal(signal.SIGTERM, sigterm)
        os.environ.clear()
        os.environ.update(environ)
    assert had_tensorflow or "tensorflow" not in sys.modules, \
        f"tle {' '.join(argv)} loaded TensorFlow into the test process: run it with tle(), in a process of its own"
    proc = subprocess.CompletedProcess(["tle", *argv], code, stdout, stderr)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def spiking_run(env, *args, experiment: str, seed: int = 0) -> dict:
    """`tle run` of S2's spiking net as examples/s2_fusion.sh runs it (mozafari, 28 px, one channel, batch 32),
    through the real CLI; its --json answer."""
    import json

    proc = tle("--quiet", "run", "--backend", "spyketorch", "--model", "mozafari", "--image-size", 28, "--channels", 1,
               "--batch-size", 32, "--seed", seed, "--experiment", experiment, *args, "--json", env=env, check_rc=0)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def runs_in(uri: str, experiment: str) -> list:
    """Every run of ``experiment`` in the store at ``uri`` (none when it has no such experiment)."""
    import mlflow

    from tle.store.lock import store_lock

    with store_lock(uri):  # this process may be the one that creates the store: take the lock tle takes
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


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


@pytest.fixture(scope="module", autouse=True)
def module_keeps_the_tracking_uri(store):
    """A module fixture that runs tle in process (a sweep, pretrained sources) points MLflow at its own store before
    any test of the file starts: the next file of this worker gets back the session's store. (It asks for ``store``
    so that the session's URI is set before it is kept: kept before, it would be undone at the end of the file that
    first asked for it.)"""
    with tracking_uri_kept():
        yield


@pytest.fixture(autouse=True)
def keeps_the_tracking_uri(store):
    """An in-process run or sweep in a test: the next test of this worker gets back the session's store, whatever
    file xdist ran before it."""
    with tracking_uri_kept():
        yield


def plugin_dist(root: Path, name: str, source: str) -> Path:
    """A distribution on ``root`` (put it on PYTHONPATH) that registers the module ``source`` as ``name`` in the
    ``tle.plugins`` group, as a third party's plugin is registered: a test's fault (a rank that hangs or raises)
    comes from a plugin wrapping a hook, never from a switch inside tle's own code."""
    module = f"tle_test_{name}"
    info = root / f"{module}-0.0.dist-info"
    info.mkdir(parents=True)
    (root / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tle-test-{name}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[tle.plugins]\n{name} = {module}\n")
    return root
