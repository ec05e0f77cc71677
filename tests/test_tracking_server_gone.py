"""An HTTP tracking server that goes away (or hangs) in the middle of a run: the run ends within seconds, on its
own (exit 1, one line) or on SIGTERM (exit 130, 'interrupted'), saying in one line that the run could not be marked,
instead of MLflow retrying every write for minutes (tle.store.lock.HTTP_DEFAULTS; tle.store.tracking.END_TRIES for the last
writes).

A real ``mlflow server`` per case, killed with SIGKILL (or frozen with SIGSTOP) once the run has logged two
epochs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow

ARGS = ["--quiet", "run", "--backend", "numpy", "--model", "mlp", "--dataset", "digits", "--epochs", "2000",
        "--batch-size", "4", "--no-export", "--experiment", "gone"]
TO_EXIT = 25.0  # seconds from the server's death (or SIGTERM) to the run's exit; measured: see the tests' output


def _server(tmp_path) -> tuple[str, str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                                 "--artifacts-destination", str(tmp_path / "artifacts")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    return f"http://127.0.0.1:{port}", f"sqlite:///{tmp_path / 'server.db'}", proc


def _await_health(base: str, proc: subprocess.Popen, tmp_path) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")


def _epochs_logged(uri: str) -> int:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("gone")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return len(client.get_metric_history(runs[0].info.run_id, "val_acc")) if runs else 0


class Case:
    """A server and a run tracking into it; the server is killed once the run logged two epochs."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        tmp_path.mkdir()
        self.base, self.uri, self.server = _server(tmp_path)
        self.lines: list[str] = []
        self.run: subprocess.Popen | None = None

    def start_run(self) -> None:
        _await_health(self.base, self.server, self.tmp)
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.base, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.run = subprocess.Popen([sys.executable, "-m", "tle", *ARGS], env=env, cwd=self.tmp,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=lambda: self.lines.extend(line.rstrip("\n") for line in self.run.stderr),
                                       daemon=True)
        self.reader.start()

    def logged_two_epochs(self) -> bool:
        assert self.run.poll() is None, self.lines
        try:
            return _epochs_logged(self.uri) >= 2
        except Exception:
            return False  # the server's store is being created

    def kill_server(self) -> None:
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(timeout=30)

    def freeze_server(self) -> None:
        """SIGSTOP: the server takes connections (the kernel's backlog) and never answers."""
        os.killpg(self.server.pid, signal.SIGSTOP)

    def finish(self, since: float) -> tuple[int, float]:
        try:
            code = self.run.wait(timeout=120)
        finally:
            if self.run.poll() is None:
                self.run.kill()
        took = time.monotonic() - since
        self.reader.join(timeout=10)
        return code, took

    def close(self) -> None:
        if self.run is not None and self.run.poll() is None:
            self.run.kill()
        if self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(timeout=30)


def test_a_server_that_goes_away_mid_run_ends_the_run_within_seconds_with_or_without_sigterm(tmp_path):
    """Two runs side by side, each on its own server: one is left alone once its server died (it fails on its
    next write), the other gets SIGTERM half a second after (it is in MLflow's retries then)."""
    alone, stopped, frozen = Case(tmp_path / "alone"), Case(tmp_path / "sigterm"), Case(tmp_path / "frozen")
    try:
        for case in (alone, stopped, frozen):
            case.start_run()
        waiting = [alone, stopped, frozen]
        deadline = time.monotonic() + 240
        while waiting and time.monotonic() < deadline:
            for case in list(waiting):
                if case.logged_two_epochs():
                    case.freeze_server() if case is frozen else case.kill_server()
                    case.died = time.monotonic()
                    if case is not alone:
                        time.sleep(0.5)  # the run's next write is in MLflow's retries, or waits for an answer
                        case.sent = time.monotonic()
                        case.run.send_signal(signal.SIGTERM)
                    waiting.remove(case)
            time.sleep(0.3)
        assert not waiting, "no two epochs logged in time"
        code, took = alone.finish(alone.died)
        sig_code, sig_took = stopped.finish(stopped.sent)
        frozen_code, frozen_took = frozen.finish(frozen.sent)
    finally:
        for case in (alone, stopped, frozen):
            case.close()
    print(f"server gone -> exit {code}: {took:.1f}s; {alone.lines}")
    print(f"server gone, SIGTERM -> exit {sig_code}: {sig_took:.1f}s; {stopped.lines}")
    print(f"server frozen, SIGTERM -> exit {frozen_code}: {frozen_took:.1f}s; {frozen.lines}")

    assert code == 1 and took < TO_EXIT, (took, alone.lines)
    errors = [line for line in alone.lines if line.startswith("error:")]
    assert len(errors) == 1 and alone.base in errors[0] and "Traceback" not in "\n".join(alone.lines), alone.lines
    (warning,) = [line for line in alone.lines if line.startswith("warning: run ")]
    # How the socket says the server went away depends on when it died: before the write (refused) or during it.
    gone = ("Connection refused", "Connection reset by peer", "Remote end closed connection", "Connection aborted")
    assert "stays RUNNING" in warning and "(FAILED)" in warning and any(g in warning for g in gone), warning
    assert len(warning) < 200 + len(alone.base) + 100, warning  # the reason, not urllib3's page of repr

    assert sig_code == 130 and sig_took < TO_EXIT, (sig_took, stopped.lines)
    assert stopped.lines[-1] == "interrupted" and "Traceback" not in "\n".join(stopped.lines), stopped.lines
    assert any("(KILLED)" in line and "stays RUNNING" in line for line in stopped.lines), stopped.lines

    # A server that hangs: the write in flight stops at the signal; the two that end the run wait 5 s each at most
    assert frozen_code == 130 and frozen_took < TO_EXIT, (frozen_took, frozen.lines)
    assert frozen.lines[-1] == "interrupted" and "Traceback" not in "\n".join(frozen.lines), frozen.lines
    assert any("(KILLED)" in line and "stays RUNNING" in line for line in frozen.lines), frozen.lines
