"""One MLflow store, many processes.

MLflow creates and migrates a SQLite store on first use; several processes
doing that at once on a new file fail ("duplicate column name",
"alembic_version ... 0 found"), and two creating the same experiment at once
collide on its unique name. Both happen under one file lock beside the
database. A tracking server that does not answer is reported in seconds
instead of after MLflow's ~4 minutes of retries.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from tle.errors import UserError

# MLflow retries a refused connection 7 times with exponential back-off (~4 min) by default;
# a run against a dead server should fail in seconds. The user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT = 4.0
LOCK_TIMEOUT = 300.0
LOCK_SAY = 3.0  # seconds of waiting for the store's lock before saying so


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths resolved now), else None."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not path or path == ":memory:":
        return None
    return Path(path.split("?", 1)[0]).expanduser().resolve()


def absolute_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` -> ``sqlite:////cwd/mlflow.db``: workers may start in another directory."""
    path = sqlite_path(uri)
    return f"sqlite:///{path}" if path is not None else uri


@contextmanager
def store_lock(uri: str):
    """Hold the store's creation lock (a no-op for servers and other stores)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        try:
            lock.acquire(timeout=LOCK_SAY)
        except Timeout:  # filelock polls in Python: a signal still ends the wait at once
            print(f"waiting for {path}.lock: another process is creating or writing this MLflow store "
                  f"(up to {LOCK_TIMEOUT:.0f}s)", file=sys.stderr, flush=True)
            lock.acquire(timeout=LOCK_TIMEOUT - LOCK_SAY)
    except Timeout:
        raise UserError(f"another process has held {path}.lock for {LOCK_TIMEOUT:.0f}s",
                        "check for a hung tle process, or delete the lock file if none runs") from None
    try:
        yield
    finally:
        lock.release()


def check_server(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise a one-line UserError unless the HTTP tracking server at ``uri`` answers within ``timeout``."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: a proxy or an old server without /health is still a server
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:.0f}s"
        raise UserError(f"MLflow tracking server {uri} does not answer ({reason})",
                        "start it (mlflow server ...) or point --tracking-uri / MLFLOW_TRACKING_URI at one "
                        "that runs") from None


def prepare(uri: str) -> None:
    """Make ``uri`` safe to use from this process: HTTP defaults and a liveness probe for servers."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        check_server(uri)

