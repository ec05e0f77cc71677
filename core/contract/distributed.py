"""The records of one run over several processes, devices or hosts (``train.distributed``), shared by the core's
launcher (:mod:`tle.run.distributed`) and a backend's ``distributed_plan`` / ``launch_ranks`` hooks: the plan, the
rank a process is, and the file protocol by which a failed rank leaves its one-line reason for the launcher."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tle.errors import UserError


@dataclass(frozen=True)
class DistributedPlan:
    """What a backend will do with ``train.distributed`` on this node (returned by ``distributed_plan``)."""

    world_size: int
    local_processes: int  # ranks this node starts; 0: the backend distributes inside this process
    devices: tuple[str, ...]  # this node's replicas' devices
    collective: str  # gloo, nccl, or the strategy's all-reduce
    engine: str  # what does the work, in words: "torch DDP (torch.distributed.run)"
    node_rank: int = 0

    @property
    def in_process(self) -> bool:
        return self.local_processes == 0

    def tags(self) -> dict[str, str]:
        return {"distributed.world_size": str(self.world_size), "distributed.engine": self.engine,
                "distributed.collective": self.collective, "distributed.devices": ",".join(self.devices)}


@dataclass(frozen=True)
class RankContext:
    """The rank a process is, handed by the backend's launcher to :func:`rank_main`."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    devices: tuple[str, ...] = ()  # every rank's ``host/device``, in rank order
    run_id: str | None = None


class RankFailed(RuntimeError):
    """A rank of a distributed run failed; ``reason`` is its one line."""

    def __init__(self, rank: int, reason: str):
        self.rank, self.reason = rank, reason
        super().__init__(f"rank {rank} failed: {reason}")


# Set by the Ray executor's cell actors: a distributed cell's ranks are then Ray Train workers on the cluster
# the sweep joined (``TorchTrainer``), not local processes of the actor's host.
RANKS_ON = "TLE_RANKS_ON"


def record_failure(directory: Path, rank: int, exc: BaseException) -> None:
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
        f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}".rstrip(": ")
    try:
        (directory / f"{rank}.json").write_text(json.dumps(
            {"rank": rank, "time": time.time(), "reason": reason, "user_error": isinstance(exc, UserError)}))
    except OSError:
        pass


def rank_failure(failures: str | Path, seen: dict[int, str]) -> Exception:
    """The error that ends a distributed run: the first rank that failed (by the time it recorded), its one-line
    reason; a UserError when that rank's error was one. ``seen``: the launcher's own account per failed rank
    (exit code, signal) for ranks that died without recording."""
    records: list[dict[str, Any]] = []
    for path in Path(failures).glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    if records:
        # Interrupted ranks were stopped because another failed (or the user stopped the run).
        first = min(records, key=lambda r: (r["reason"] == "interrupted", r["time"]))
        if first["user_error"]:
            return UserError(f"rank {first['rank']}: {first['reason'].removeprefix('UserError: ')}")
        return RankFailed(int(first["rank"]), first["reason"])
    if seen:
        rank = min(seen)
        return RankFailed(rank, seen[rank])
    return RankFailed(-1, "a rank failed without a reason")
