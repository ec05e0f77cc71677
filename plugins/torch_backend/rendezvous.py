"""Where the nodes of a multi-host run meet: torch's static rendezvous, joined in Python so that it can be stopped.

torch's ``static`` rendezvous (``torchrun --rdzv-backend static``: node 0's agent holds a ``TCPStore`` that the
agents and later the ranks use) waits inside the ``TCPStore`` constructor: node 0 until ``nnodes`` agents
connected, the other nodes retrying their connection to node 0. That wait is C++ that never returns to Python
for the whole rendezvous timeout (torch's launcher: 900 s), and CPython runs a signal handler only between
bytecodes: Ctrl-C and SIGTERM stayed pending for 15 minutes, with nothing printed.

This handler is the same rendezvous (same store, same keys for the agents and the ranks), except for how it
waits: node 0 opens the store without waiting for anyone; the other nodes probe node 0's port with a plain
socket (a connect that a signal interrupts) before they connect the store; then every node counts itself in
(``tle/joined``) and polls the count in steps of :data:`POLL` seconds of Python sleep. So a signal ends the
wait at once, the wait says what it waits for (``waiting``), and it ends after ``join_timeout`` with a
:class:`tle.UserError` naming the address, the port and who joined.

The agents go on using the store after the join: to hand out ranks, and at the end in an exit barrier that
waits up to 300 s (torch's ``exit_barrier_timeout``) for the other nodes' agents, e.g. for node 0 while it
exports and logs the model. Those waits go through :class:`Polled`, which waits the same way.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable

from torch.distributed import DistStoreError, Store, TCPStore
from torch.distributed.elastic.rendezvous import RendezvousInfo, RendezvousParameters, rendezvous_handler_registry
from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

from tle import UserError

BACKEND = "tle-static"
JOINED = "tle/joined"
POLL = 0.25  # seconds between two looks at who joined: the longest a signal waits
PROBE = 1.0  # seconds one connection attempt to node 0 may take
REMIND = 30.0  # seconds between two "still waiting" lines
CONNECT = 10.0  # seconds a store client may take to connect to a port that just answered
AFTER_JOIN = 60.0  # seconds a store operation of the agents may wait once every node joined (rank assignment)


class Join(StaticTCPRendezvous):
    """torch's static rendezvous with an interruptible, bounded, talking join (see the module's docstring).

    ``params.config``: ``rank`` (this node), ``join_timeout`` (seconds), ``waiting`` (a function of one line).
    """

    def __init__(self, params: RendezvousParameters):
        addr, port = parse_rendezvous_endpoint(params.endpoint, -1)
        self.join_timeout = float(params.config["join_timeout"])
        super().__init__(addr, port, int(params.config["rank"]), params.max_nodes, params.run_id,
                         int(self.join_timeout) + 1)
        self.waiting: Callable[[str], None] = params.config.get("waiting") or (lambda line: None)

    def get_backend(self) -> str:
        return BACKEND

    def next_rendezvous(self) -> RendezvousInfo:
        if self._store is None:
            self._store = self._join()
        info = super().next_rendezvous()
        store = Polled(info.store, self.where, self.waiting)
        store.set_timeout(datetime.timedelta(seconds=AFTER_JOIN))
        return RendezvousInfo(store, info.rank, info.world_size, info.bootstrap_store_info)

    # -- the join -------------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.master_addr}:{self.master_port}"

    def _join(self) -> TCPStore:
        deadline = time.monotonic() + self.join_timeout
        if self.rank == 0:
            store = self._listen()
        else:
            self._await_node0(deadline)
            store = TCPStore(self.master_addr, self.master_port, self.world_size, False,
                             datetime.timedelta(seconds=CONNECT), wait_for_workers=False)
        try:
            self._await_nodes(store, store.add(JOINED, 1), deadline)
        except RuntimeError as exc:  # the store's server (node 0) went away
            store = None
            raise UserError(f"node {self.rank}: the connection to node 0 at {self.where} broke while the nodes "
                            f"joined: {_first_line(exc)}", "start every node again") from None
        except BaseException:
            # Close the store (node 0: its server) now, while the interpreter is whole: the traceback would keep
            # this frame, and the store, until the interpreter's last garbage collection.
            store = None
            raise
        store.set_timeout(datetime.timedelta(seconds=AFTER_JOIN))
        return store

    def _listen(self) -> TCPStore:
        try:
            return TCPStore(self.master_addr, self.master_port, self.world_size, True,
                            datetime.timedelta(seconds=CONNECT), wait_for_workers=False, multi_tenant=True)
        except RuntimeError as exc:
            raise UserError(f"node 0 cannot listen on port {self.master_port} for the other nodes: "
                            f"{_first_line(exc)}", "choose another --master-port on every node") from None

    def _await_node0(self, deadline: float) -> None:
        """Until node 0's port takes a connection; in Python, so a signal stops it."""
        self.waiting(f"node {self.rank}: waiting for node 0 at {self.where} (join timeout {self.join_timeout:g}s)")
        remind = time.monotonic() + REMIND
        while True:
            try:
                with socket.create_connection((self.master_addr, self.master_port), timeout=PROBE):
                    return
            except OSError as exc:
                reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
            now = time.monotonic()
            if now >= deadline:
                raise UserError(f"node {self.rank}: nothing answered at {self.where} (node 0) within the join timeout "
                                f"of {self.join_timeout:g}s ({reason})",
                                "start node 0 there (the same tle run with --node-rank 0), check --master-addr, "
                                "--master-port and the firewall, or raise --join-timeout")
            if now >= remind:
                self.waiting(f"node {self.rank}: still waiting for node 0 at {self.where} ({reason}; "
                             f"{deadline - now:.0f}s left)")
                remind = now + REMIND
            time.sleep(POLL)

    def _await_nodes(self, store: TCPStore, joined: int, deadline: float) -> None:
        """Until every node counted itself in; one line whenever the count changes (and every REMIND s)."""
        said, remind = 0, time.monotonic() + REMIND
        while joined < self.world_size:
            now = time.monotonic()
            if joined != said or now >= remind:
                self.waiting(f"waiting at {self.where} for {self.world_size} nodes: {joined} joined "
                             f"(this is node {self.rank}; {deadline - now:.0f}s left of the join timeout "
                             f"{self.join_timeout:g}s)")
                said, remind = joined, now + REMIND
            if now >= deadline:
                raise UserError(f"{joined} of {self.world_size} nodes joined at {self.where} within the join timeout "
                                f"of {self.join_timeout:g}s",
                                f"start the same tle run on the other nodes with --nnodes {self.world_size} "
                                f"--node-rank N --master-addr {self.master_addr} --master-port {self.master_port} "
                                "(check that address and port reach this node), or raise --join-timeout")
            time.sleep(POLL)
            joined = store.add(JOINED, 0)
        if said or self.rank != 0:  # the other nodes said what they waited for in _await_node0
            self.waiting(f"all {self.world_size} nodes joined at {self.where}")


class Polled(Store):
    """The agents' store, waiting for keys in Python steps of :data:`POLL` s (``check``, then sleep) instead of in
    one C++ call that holds off signals for up to its whole timeout; after :data:`REMIND` s it says what it waits
    for. Only what torch's agent uses is here: set, get, add, check, multi_get, multi_set, wait."""

    def __init__(self, inner: Store, where: str, waiting: Callable[[str], None]):
        super().__init__()
        self.inner, self.where, self.waiting = inner, where, waiting

    def set(self, key: str, value) -> None:
        self.inner.set(key, value)

    def get(self, key: str) -> bytes:
        self.wait([key])
        return self.inner.get(key)

    def add(self, key: str, amount: int) -> int:
        return self.inner.add(key, amount)

    def check(self, keys: list[str]) -> bool:
        return self.inner.check(keys)

    def multi_get(self, keys: list[str]) -> list[bytes]:
        self.wait(keys)
        return self.inner.multi_get(keys)

    def multi_set(self, keys: list[str], values: list) -> None:
        self.inner.multi_set(keys, values)

    def wait(self, keys: list[str], timeout: datetime.timedelta | None = None) -> None:
        seconds = (timeout or self.timeout).total_seconds()
        started = time.monotonic()
        remind = started + REMIND
        while not self.inner.check(keys):
            now = time.monotonic()
            if now - started >= seconds:
                raise DistStoreError(f"waited {seconds:g}s at {self.where} for {', '.join(keys)}")
            if now >= remind:
                what = "to finish" if any("terminal_state" in k for k in keys) else "to take their ranks"
                self.waiting(f"waiting at {self.where} for the other nodes {what} ({seconds - (now - started):.0f}s "
                             "left)")
                remind = now + REMIND
            time.sleep(POLL)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def create(params: RendezvousParameters) -> Join:
    return Join(params)


rendezvous_handler_registry.register(BACKEND, create)
