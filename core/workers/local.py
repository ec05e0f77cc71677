"""The local executor: warm worker processes on this machine (``--jobs N``).

Each worker is ``python -m tle.run.worker BACKEND`` in its own session, so a
Ctrl-C in the terminal reaches only the sweep, which then stops the workers
with SIGTERM: their runs end KILLED exactly like an interrupted ``tle run``.
On Linux a worker also gets SIGTERM when the sweep process dies, so a killed
sweep leaves no orphans training in the background.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import IO, Any

from tle.workers.schedule import Task
from tle.store.status import RunStatus
from tle.contract.threads import wait_env

PR_SET_PDEATHSIG = 1
# The program a worker runs (``python -m PROGRAM BACKEND``): it reads tasks as JSON lines on stdin and answers
# each with one line. The pool only starts it and exchanges lines; what a task does is the program's business.
PROGRAM = "tle.run.worker"


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: workers still end when their stdin closes
        pass


@dataclass(eq=False)
class LocalWorker:
    backend: str
    proc: subprocess.Popen[str]
    log: Path

    @property
    def stdin(self) -> IO[str]:
        assert self.proc.stdin is not None  # LocalPool.start opens it (stdin=PIPE)
        return self.proc.stdin

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None  # LocalPool.start opens it (stdout=PIPE)
        return self.proc.stdout

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_env(jobs: int) -> dict[str, str]:
    """Split the cores between the workers: frameworks that each spin one thread per core slow to a crawl
    when several share the machine. Every worker also waits for its threads without spinning
    (``tle.contract.threads``), so that it shares the machine with other work too. The user's own settings win."""
    per = max(1, usable_cores() // max(1, jobs))
    return {**wait_env(), **({k: str(per) for k in THREAD_VARS if k not in os.environ} if jobs > 1 else {})}


class LocalPool:
    def __init__(self, jobs: int = 1, env: dict[str, str] | None = None, log_dir: Path | None = None):
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **thread_env(jobs), **(env or {})}
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tle-sweep-"))
        self.selector = selectors.DefaultSelector()
        self.count = 0

    def start(self, backend: str, gpus: float = 0.0) -> LocalWorker:
        self.count += 1
        log = self.log_dir / f"worker-{self.count}-{backend}.log"
        proc = subprocess.Popen([sys.executable, "-m", PROGRAM, backend], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log.open("w"), text=True, bufsize=1,
                                env=self.env, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        worker = LocalWorker(backend, proc, log)
        self.selector.register(worker.stdout, selectors.EVENT_READ, worker)
        return worker

    def submit(self, worker: LocalWorker, task: Task) -> None:
        worker.stdin.write(json.dumps(task.message()) + "\n")
        worker.stdin.flush()

    def wait(self, timeout: float) -> list[tuple[LocalWorker, dict[str, Any]]]:
        done = []
        for key, _ in self.selector.select(timeout):
            worker: LocalWorker = key.data
            line = worker.stdout.readline()
            if line:
                done.append((worker, json.loads(line)))
                continue
            self._forget(worker)
            code = worker.proc.wait()
            done.append((worker, {"status": RunStatus.FAILED, "exited": code,
                                  "error": f"worker for {worker.backend} exited with code {code}: {worker.tail()} "
                                           f"(log {worker.log})"}))
        return done

    def alive(self, worker: LocalWorker) -> bool:
        return worker.proc.poll() is None

    def stop(self, worker: LocalWorker) -> None:
        self._forget(worker)
        try:
            worker.stdin.close()
        except OSError:
            pass
        try:
            worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.proc.kill()

    def interrupt(self, busy: Mapping[LocalWorker, Task | None],
                  grace: float) -> list[tuple[LocalWorker, dict[str, Any]]]:
        for worker in busy:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        reported: list[tuple[LocalWorker, dict[str, Any]]] = []
        deadline = time.monotonic() + grace
        waiting = set(busy)
        while waiting and time.monotonic() < deadline:
            for worker, outcome in self.wait(timeout=0.5):
                waiting.discard(worker)
                if outcome.get("exited") is not None:  # it ended on the signal before it could report: interrupted
                    outcome = {**outcome, "status": RunStatus.KILLED, "error": f"interrupted ({outcome['error']})"}
                reported.append((worker, outcome))
        for worker in busy:
            if worker.proc.poll() is None:
                worker.proc.kill()
            self._forget(worker)
        return reported

    def close(self) -> None:
        """Nothing to release: the scheduler stops the workers (a :class:`tle.workers.ray.RayPool` leaves Ray)."""

    def _forget(self, worker: LocalWorker) -> None:
        try:
            self.selector.unregister(worker.stdout)
        except (KeyError, ValueError):
            pass
