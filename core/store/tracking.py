"""MLflow tracking: one run per experiment, never left RUNNING.

MLflow is imported lazily: ``tle --help`` must stay fast.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tle.errors import UserError
from tle.contract.loop import EpochRecord
from tle.store.status import ERROR_TAG, RunStatus


@contextmanager
def tracking_uri_kept() -> Iterator[None]:
    """MLflow's process-wide tracking URI as it was (``set_tracking_uri``'s own value, None included: then MLflow
    reads MLFLOW_TRACKING_URI) and that variable as it was, both given back on leaving. A run, sweep or command in
    this process points MLflow at its store (:func:`configure`); a caller that runs several (a test suite, a notebook)
    keeps its own. MLflow's ``set_tracking_uri`` writes the variable, and unsets it for None: both are kept."""
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    before = tracking._tracking_uri if tracking is not None else None
    variable = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
        if tracking is not None:
            tracking.set_tracking_uri(before)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def configure(uri: str | None, experiment: str | None = None):
    """Point MLflow at ``uri`` (None keeps MLFLOW_TRACKING_URI or MLflow's default)."""
    from tle.store.lock import absolute_uri, prepare, store_lock

    # A dead server is reported before MLflow (seconds to import) is even loaded.
    given = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if given:
        prepare(absolute_uri(given))
    import mlflow

    if uri:
        mlflow.set_tracking_uri(absolute_uri(uri))
    uri = mlflow.get_tracking_uri()
    if not given:
        prepare(uri)
    try:
        # The first touch creates/migrates a new SQLite store; only one process may do that at a time.
        with store_lock(uri):
            if experiment:
                mlflow.set_experiment(experiment)
            else:
                mlflow.MlflowClient().search_experiments(max_results=1)
    except UserError:
        raise
    except Exception as exc:
        if experiment:
            raise UserError(f"cannot use MLflow experiment {experiment!r} at {uri}: "
                            f"{str(exc).splitlines()[0]}", "check --tracking-uri / MLFLOW_TRACKING_URI") from None
        raise UserError(f"cannot open the MLflow store {uri}: {str(exc).splitlines()[0]}",
                        "check --tracking-uri / MLFLOW_TRACKING_URI") from None
    return mlflow


class Tracker:
    """Thin wrapper that names what tle logs, so every backend's runs look alike."""

    def __init__(self, mlflow_module, run):
        self._mlflow = mlflow_module
        self.run = run
        self.run_id: str = run.info.run_id
        self.outcome: tuple[str, str | None] = (RunStatus.FINISHED, None)  # how tracked_run ends it without an error

    def end_as(self, status: str, reason: str) -> None:
        """End the run ``status`` with ``reason`` (the ``tle.error`` tag) when its block ends without an error."""
        self.outcome = (status, reason)

    def params(self, params: dict[str, Any]) -> None:
        items = list(params.items())
        for i in range(0, len(items), 90):  # MLflow caps one batch at 100 params
            self._mlflow.log_params(dict(items[i:i + 90]))

    def tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def epoch(self, record: EpochRecord) -> None:
        self.metrics({**record.metrics, "stage": record.stage}, step=record.step)

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path)

    def text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def json(self, obj: Any, name: str) -> None:
        self._mlflow.log_text(json.dumps(obj, indent=2), name)

    def datasets(self, data) -> None:
        """The run's train/val/test splits as MLflow dataset inputs (the UI's Dataset column; searchable by name and
        digest): name = the data source, digest = the split fingerprint and the split, context = the split."""
        from mlflow.data.numpy_dataset import from_numpy  # where it is defined (mlflow.data adds it at run time)

        import time

        from tle.store.lock import store_lock

        fingerprint = data.fingerprint()
        splits = [(s, *data.split(s)) for s in ("train", "val", "test")]
        datasets = [from_numpy(x, source=dataset_source(data.name), targets=y, name=data.name,
                               digest=f"{fingerprint}-{s}") for s, x, y in splits]
        # Sweep workers log the same split at once: MLflow inserts a dataset row per (experiment, name, digest)
        # and the second insert of a race fails; under the store's lock (SQLite) and with a retry (a server)
        # the later run finds the row and only links it.
        for attempt in range(3):
            try:
                with store_lock(self._mlflow.get_tracking_uri()):
                    self._mlflow.log_inputs(datasets=datasets, contexts=[s for s, _, _ in splits],
                                            tags_list=[{} for _ in splits])
                return
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def onnx_model(self, path: Path, sample, logits, registered_name: str | None) -> None:
        import onnx
        from mlflow.models import infer_signature

        self._mlflow.onnx.log_model(
            onnx_model=onnx.load(str(path)), name="model",
            signature=infer_signature(sample, logits),
            registered_model_name=registered_name,
            # Inferring requirements spawns a subprocess per run; these are known.
            pip_requirements=["onnxruntime", "onnx", "numpy"],
            save_as_external_data=False,
        )


def artifact_files(run_id: str, artifact_path: str, dst: Path) -> list[Path] | None:
    """Download one artifact (a file or a folder) of a run; its files, sorted, or None if it is absent."""
    import mlflow
    import mlflow.artifacts

    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                         dst_path=str(dst)))
    except Exception:
        return None
    return sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]


def environment_tags() -> dict[str, str]:
    from importlib.metadata import version

    import tle

    tags = {"tle.version": tle.__version__, "python": platform.python_version(), "platform": platform.platform()}
    for dist in ("mlflow", "onnx", "onnxruntime", "numpy"):
        try:
            tags[f"version.{dist}"] = version(dist)
        except Exception:
            pass
    return tags


@contextmanager
def tracked_run(mlflow_module, *, name: str | None = None, tags: dict[str, str] | None = None,
                run_id: str | None = None, parent_id: str | None = None,
                adding: str | None = None) -> Iterator[Tracker]:
    """The one way tle opens and closes a run: start one (a child of ``parent_id``, which must be RUNNING, when
    given) or, with ``run_id``, reopen one; end it FINISHED, FAILED (any error, with the ``tle.error`` tag) or
    KILLED (Ctrl-C/SIGTERM, tagged ``interrupted``), with a second signal held off while the end is written.

    A run that ends otherwise without an error says so with :meth:`Tracker.end_as` (a sweep whose cells did not
    all finish, a cell that failed before its run existed). ``adding``: ``run_id`` is a finished run reopened to
    add ``adding`` to it (``export``: its ONNX model); what it recorded did finish, so it ends FINISHED whatever
    happens, an error or an interrupt tagged ``tle.<adding>_error``."""
    if run_id:
        run = mlflow_module.start_run(run_id=run_id, tags=tags)
    else:
        run = mlflow_module.start_run(run_name=name, tags=tags, parent_run_id=parent_id, nested=parent_id is not None)
    tracker = Tracker(mlflow_module, run)
    tag = f"tle.{adding}_error" if adding else ERROR_TAG
    try:
        yield tracker
    except KeyboardInterrupt as exc:
        _mark(exc, tracker.run_id)
        _end(mlflow_module, RunStatus.FINISHED if adding else RunStatus.KILLED, tag, "interrupted")
        raise
    except BaseException as exc:
        _mark(exc, tracker.run_id)
        _end(mlflow_module, RunStatus.FINISHED if adding else RunStatus.FAILED, tag, f"{type(exc).__name__}: {exc}")
        raise
    else:
        status, reason = tracker.outcome
        _end(mlflow_module, status, tag, reason)


# After a failure or a signal the tracking server may be what failed: the writes that end the run get one try of
# this many seconds each, not MLflow's retries (minutes against a server that went away; tle.store.lock.HTTP_DEFAULTS).
END_TRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


@contextmanager
def _one_try() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in END_TRIES}
    os.environ.update(END_TRIES)  # MLflow reads them at each request
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# What a failed write to a tracking server says of the socket, the most telling first: a server that died before
# the write refuses it; one that died during it resets or closes the connection; a hung one times out.
SOCKET_REASONS = (r"\[Errno -?\d+\] [^'\")]+", r"Connection reset by peer",
                  r"Remote end closed connection without response", r"Read timed out", r"Connection aborted")


def _end(mlflow_module, status: str, tag: str, reason: str | None) -> None:
    """End the active run ``status`` with ``reason`` as ``tag``, in seconds whatever the store does, Ctrl-C and
    SIGTERM held off meanwhile: a write that fails is said in one line on stderr and does not hide why the run
    ended (the caller re-raises that)."""
    run = mlflow_module.active_run()
    failed: list[BaseException] = []
    with quiet_signals(), _one_try():
        if reason:
            try:
                mlflow_module.set_tag(tag, reason[:5000])
            except Exception as exc:
                failed.append(exc)
        try:
            mlflow_module.end_run(status)  # takes the run off MLflow's stack first, even when the write fails
        except Exception as exc:
            failed.append(exc)
    if failed:
        text = str(failed[0]).strip()
        # MLflow's message buries the reason ("[Errno 111] Connection refused") in a page of urllib3's repr
        found = (re.search(pattern, text) for pattern in SOCKET_REASONS)
        errno = next((m for m in found if m is not None), None)
        reason = errno.group(0) if errno else (text.splitlines() or [type(failed[0]).__name__])[0][:200]
        run_id = run.info.run_id if run is not None else "?"
        print(f"warning: run {run_id} stays RUNNING in {mlflow_module.get_tracking_uri()}: the store did not take "
              f"its end ({status}): {reason}", file=sys.stderr, flush=True)


@contextmanager
def _signals_to(handler) -> Iterator[None]:
    """Ctrl-C and SIGTERM go to ``handler`` inside the block, then back to the handlers they had (only the main
    thread sets handlers: elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


@contextmanager
def quiet_signals() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while a run's end is written (a second signal would leave it RUNNING)."""
    with _signals_to(signal.SIG_IGN):
        yield


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block are delivered when it ends, to the handlers it started with:
    what the block does (an outcome read from a worker and told to its study) is done whole or not begun, never
    cut in half by a KeyboardInterrupt. Only for blocks that end within a second."""
    arrived: list[int] = []

    def hold(signum, frame):
        arrived.append(signum)

    try:
        with _signals_to(hold):
            yield
    finally:
        if arrived:
            signal.raise_signal(arrived[0])


def _mark(exc: BaseException, run_id: str) -> None:
    """Let callers (a sweep worker) learn which run an error ended."""
    try:
        exc.tle_run_id = run_id  # type: ignore[attr-defined]
    except AttributeError:
        pass


_SOURCE_CLASS: list[type] = []


def dataset_source(source: str):
    """Where a split came from, as tle names it (``digits:0-4``, ``folder:/data/ships``), as an MLflow dataset source.
    The class is made on first use: MLflow is imported lazily."""
    if not _SOURCE_CLASS:
        from mlflow.data.dataset_source import DatasetSource

        class TleDatasetSource(DatasetSource):
            def __init__(self, source: str):
                self.source = source

            @staticmethod
            def _get_source_type() -> str:
                return "tle"

            def load(self, **kwargs):
                raise NotImplementedError("tle datasets are loaded by tle.data.load_dataset from the run's spec")

            @staticmethod
            def _can_resolve(raw_source) -> bool:
                return False

            @classmethod
            def _resolve(cls, raw_source):
                return cls(str(raw_source))

            def to_dict(self) -> dict:
                return {"source": self.source}

            @classmethod
            def from_dict(cls, source_dict: dict):
                return cls(source_dict["source"])

        _SOURCE_CLASS.append(TleDatasetSource)
    return _SOURCE_CLASS[0](source)
