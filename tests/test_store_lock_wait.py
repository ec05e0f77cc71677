"""A run that waits for the SQLite store's lock (another process creating or writing the store): it says so after a
few seconds, and SIGTERM ends it at once, before any run exists. The lock is held by this test process itself."""

import os
import signal
import subprocess
import sys
import time

from filelock import FileLock

from tle.store.lock import LOCK_SAY


def test_a_run_waiting_for_the_store_lock_says_so_and_stops_on_sigterm(tmp_path):
    db = tmp_path / "m.db"
    lock = FileLock(str(db) + ".lock")
    lock.acquire()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "tle", "--quiet", "run", "--backend", "numpy", "--model", "mlp",
                             "--dataset", "digits:0-1", "--epochs", "1", "--no-export"], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline().strip()
        assert first == f"waiting for {db}.lock: another process is creating or writing this MLflow store (up to 300s)"
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
        rest = proc.stderr.read().strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        lock.release()
    print(f"SIGTERM while waiting for the lock -> exit {code} in {took:.2f}s (said so after {LOCK_SAY:g}s)")
    assert code == 130 and rest == "interrupted" and took < 10, (code, rest, took)
    assert not db.exists() or db.stat().st_size == 0  # nothing was written: no run
