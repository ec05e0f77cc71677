"""The Ray executor (``--executor ray``, extra ``tle[ray]``): each cell is a task on a Ray actor.

Actors, not plain tasks: Ray reuses a worker process for any remote function,
so a torch task could land in a process where TensorFlow is loaded (which
crashes torch's exporter). An actor is a process of its own, bound to one
backend, and stays warm across the cells it runs. Each actor asks Ray for one
CPU and, for cells that want a GPU, one GPU.

Without ``--address`` Ray starts on this machine; with it the sweep joins that
cluster, and every node must have tle and the backend's framework installed
and reach the tracking store: use an MLflow server URI there, not a SQLite file.

Joining waits at most ``TLE_RAY_JOIN_TIMEOUT`` seconds (default :data:`JOIN_TIMEOUT`). Ray's GCS client waits
in C++ (minutes, retrying, against an address where something other than Ray listens), where Python runs no
signal handler: ``ray.init`` therefore runs in a helper thread while the sweep's own thread waits in Python,
so Ctrl-C and SIGTERM end the sweep at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tle.contract.distributed import RANKS_ON
from tle.errors import UserError
from tle.workers.schedule import Task
from tle.store.status import RunStatus

if TYPE_CHECKING:  # Ray is optional and heavy: imported when a RayPool starts
    from ray.actor import ActorClass


PROBE_SECONDS = 3.0
DEFAULT_PORTS = {"ray": 10001, "gcs": 6379}  # Ray client server, GCS
JOIN_TIMEOUT = 120.0  # seconds to join a cluster at --address; TLE_RAY_JOIN_TIMEOUT overrides it
JOIN_POLL = 0.25  # seconds between two looks at the joining thread: the longest a signal waits


def join_timeout() -> float:
    text = os.environ.get("TLE_RAY_JOIN_TIMEOUT", "")
    try:
        value = float(text) if text else JOIN_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"TLE_RAY_JOIN_TIMEOUT={text!r} is not a number of seconds above 0",
                        f"set it to e.g. {JOIN_TIMEOUT:g}, or unset it")
    return value


def _init_joining(ray, address: str, kwargs: dict[str, Any]) -> None:
    """``ray.init(**kwargs)`` in a helper thread, this thread waiting in Python (see the module's docstring): a
    signal raises here at once; after :func:`join_timeout` a one-line UserError. The helper is a daemon thread:
    left behind in Ray's C++ wait, it does not hold the process's exit."""
    timeout = join_timeout()
    outcome: dict[str, BaseException] = {}

    def join() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # handed to the sweep's thread
            outcome["error"] = exc

    helper = threading.Thread(target=join, name="tle-ray-join", daemon=True)
    deadline = time.monotonic() + timeout
    helper.start()
    while helper.is_alive():
        if time.monotonic() >= deadline:
            raise UserError(f"the Ray cluster at {address} did not let this sweep join within {timeout:g}s "
                            "(something answers there, but not a Ray head that takes drivers)",
                            "check --address (HOST:6379 for the GCS, ray://HOST:10001 for Ray Client) and the "
                            "cluster's state (ray status there), or raise TLE_RAY_JOIN_TIMEOUT")
        helper.join(JOIN_POLL)
    if "error" in outcome:
        raise outcome["error"]


def probe_address(address: str, timeout: float = PROBE_SECONDS) -> None:
    """A plain TCP connect to a Ray address (``HOST:PORT`` or ``ray://HOST:PORT``) within ``timeout``: a one-line
    UserError when nothing listens there, instead of Ray's GCS client retrying for minutes. ``auto`` and
    ``local`` (Ray finds or starts a cluster on this machine) are not probed."""
    import socket

    text = address.strip()
    if text in ("auto", "local"):
        return
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "gcs", text
    elif scheme != "ray":
        raise UserError(f"--address {address!r} is not a Ray address", "give HOST:6379 or ray://HOST:10001")
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("["):  # [IPv6]:PORT
        host, _, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    except ValueError:
        raise UserError(f"--address {address!r}: {port_text!r} is not a port", "give HOST:6379 or ray://HOST:10001") from None
    if not host:
        raise UserError(f"--address {address!r} names no host", "give HOST:6379 or ray://HOST:10001")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except (socket.timeout, TimeoutError):
        reason = f"no answer within {timeout:.0f}s"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    raise UserError(f"nothing answers at the Ray address {address} ({host}:{port}: {reason})",
                    "start the cluster there (ray start --head), check --address, or drop --address to run Ray "
                    "on this machine")


def _actor_class(ray, program: ModuleType) -> ActorClass:
    """The actor runs the worker program (``program``: ``warm_up``, ``DataCache``, ``handle``) in its process; the
    pool never learns what a task does (the local pool runs the same program as ``python -m``)."""

    class CellActor:
        def __init__(self, backend: str):
            self.backend = backend
            self.cache = program.DataCache()
            os.environ[RANKS_ON] = "ray"  # a cell with train.distributed spreads its ranks over the cluster
            program.warm_up(backend)

        def run(self, message: dict[str, Any]) -> dict[str, Any]:
            return program.handle(message, self.cache)

    return ray.remote(CellActor)


class RayPool:
    def __init__(self, program: ModuleType, address: str | None = None, cpus_per_cell: float = 1.0,
                 num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs Ray", "pip install 'tle[ray]'") from None
        self.ray = ray
        previous = signal.getsignal(signal.SIGTERM)
        kwargs: dict[str, Any] = dict(address=address or None, num_cpus=num_cpus if not address else None,
                                      include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                                      configure_logging=True, logging_level=logging.ERROR)
        try:
            if address and address.strip() not in ("auto", "local"):
                _init_joining(ray, address, kwargs)
            else:  # Ray starts (or finds) a cluster on this machine
                ray.init(**kwargs)
        except UserError:
            raise
        except SystemExit:  # Ray's own SIGTERM handler, while it waits for the cluster: end as a SIGTERM does
            raise KeyboardInterrupt from None
        except Exception as exc:
            raise UserError(f"cannot start or join Ray at {address or 'this machine'}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                            "check --address (ray://HOST:10001 or HOST:6379) or drop it for a local Ray") from None
        finally:
            signal.signal(signal.SIGTERM, previous)  # ray.init replaces the handler that ends runs KILLED
        self.cpus = cpus_per_cell
        self.actor = _actor_class(ray, program)
        self.running: dict[Any, Any] = {}  # object ref -> actor handle
        self.backend: dict[Any, str] = {}

    def start(self, backend: str, gpus: float = 0.0):
        handle = self.actor.options(num_cpus=self.cpus, num_gpus=gpus).remote(backend)
        self.backend[handle] = backend
        return handle

    def submit(self, worker, task: Task) -> None:
        self.running[worker.run.remote(task.message())] = worker

    def wait(self, timeout: float) -> list[tuple[Any, dict[str, Any]]]:
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            worker = self.running.pop(ref)
            try:
                done.append((worker, self.ray.get(ref)))
            except Exception as exc:  # the actor died (out of memory, a crash in the framework)
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                done.append((worker, {"status": RunStatus.FAILED, "error": f"Ray actor for {self.backend.get(worker)} "
                                                                   f"failed: {first[:300]}", "dead": True}))
                self.stop(worker)
        return done

    def alive(self, worker) -> bool:
        return worker in self.backend

    def stop(self, worker) -> None:
        if self.backend.pop(worker, None) is not None:
            try:
                self.ray.kill(worker)
            except Exception:
                pass

    def interrupt(self, busy: dict, grace: float) -> list[tuple[Any, dict[str, Any]]]:
        # Killing the actors leaves their runs RUNNING; the sweep ends those KILLED from the store.
        for worker in list(busy):
            self.stop(worker)
        return [(worker, {"status": RunStatus.KILLED, "error": "interrupted"}) for worker in busy]

    def close(self) -> None:
        for worker in list(self.backend):
            self.stop(worker)
        self.ray.shutdown()
