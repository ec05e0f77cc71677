"""One run over several processes, devices or hosts (``train.distributed``), without any framework import.

What runs where:

- The process the user started, on every node, asks the backend for a :class:`DistributedPlan`
  (hook ``distributed_plan``): the world size, this node's devices, and whether the backend distributes
  inside this one process (Keras: ``tf.distribute.MirroredStrategy``) or starts processes (torch: DDP ranks
  through torch's elastic launcher). Impossible settings are user errors here, before MLflow is touched.
- In one process, the run goes on as any run does, tagged with the world size and devices.
- With processes, the launcher on node 0 creates the MLflow run and owns its status; the backend's
  ``launch_ranks`` starts this node's ranks, each of which runs the whole experiment (:func:`rank_main`) with
  its process group up. Rank 0 reopens the run and writes params, metrics, artifacts and the ONNX model into
  it; the other ranks train and write nothing. The launcher ends the run FINISHED, FAILED with the first
  failing rank's one-line reason, or KILLED (Ctrl-C, SIGTERM). Launchers on other nodes track nothing.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
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

_current: RankContext | None = None


def current() -> RankContext | None:
    """This process's rank when it is one of a distributed run's ranks, else None."""
    return _current


def writes(rank: RankContext | None) -> bool:
    """Whether this process tracks: a plain run, or rank 0."""
    return rank is None or rank.rank == 0


class _Silent:
    """What a rank other than 0 tracks with: nothing (rank 0 writes the run)."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id or ""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextmanager
def tracked(tracked_run, mlflow, rank: RankContext | None, *, name: str | None, tags: dict[str, str],
            run_id: str | None):
    """``tracked_run`` for a plain run and for rank 0 (reopening the launcher's run); nothing for other ranks."""
    if not writes(rank):
        yield _Silent(rank.run_id)
        return
    with tracked_run(mlflow, name=name, tags={**tags, **_rank_tags(rank)},
                     run_id=(rank.run_id if rank is not None else None) or run_id) as run:
        yield run


def _rank_tags(rank: RankContext | None) -> dict[str, str]:
    return {} if rank is None else {"distributed.rank_devices": ",".join(rank.devices)}


def plan_for(spec, backend) -> DistributedPlan:
    d = spec.train.distributed
    if "distributed" not in backend.info.capabilities:
        raise UserError(f"backend {spec.backend!r} cannot distribute a run (train.distributed)",
                        "drop --nproc/--nnodes, or use the torch or keras backend")
    plan = backend.hook.distributed_plan(distributed=d, device=spec.train.device)
    if plan is None:
        raise UserError(f"backend {spec.backend!r} gave no plan for train.distributed", "fix the plugin")
    if spec.train.batch_size % plan.world_size:
        raise UserError(f"train.batch_size {spec.train.batch_size} is the global batch and must split evenly over "
                        f"{plan.world_size} replicas",
                        f"use a multiple of {plan.world_size}, e.g. --batch-size "
                        f"{max(1, round(spec.train.batch_size / plan.world_size)) * plan.world_size}")
    return plan


def launch(spec, backend, plan: DistributedPlan, run_tags: dict[str, str], name: str, quiet: bool, resume,
           tags: dict[str, str], export: bool, console):
    """Start this node's ranks and wait for them; on node 0 inside the one tracked run.

    Returns rank 0's :class:`tle.runner.RunResult` on node 0, None on the other nodes.
    """
    import shutil
    import tempfile

    failures = Path(tempfile.mkdtemp(prefix="tle-ranks-"))
    # The launcher's Resume (its checkpoint file is on this node) goes to the ranks as it is: they share the host.
    args = [spec.model_dump(mode="json"), None, resume, tags, export,
            quiet, str(failures), os.environ.get("TLE_DEBUG") == "1"]
    try:
        if plan.node_rank != 0:
            if not quiet:
                console.print(f"node {plan.node_rank}: {plan.local_processes} ranks ({plan.engine}); node 0 "
                              f"tracks the run")
            backend.hook.launch_ranks(plan=plan, distributed=spec.train.distributed, entry=rank_main,
                                      args=tuple(args), failures=str(failures), waiting=_say(console))
            return None
        from tle.tracking import configure, tracked_run

        mlflow = configure(spec.tracking.uri, spec.tracking.experiment)
        with tracked_run(mlflow, name=name, tags=run_tags, run_id=resume and resume.run_id) as run:
            if not quiet:
                console.print(f"[bold]run[/] {run.run_id}  {plan.world_size} ranks, {plan.engine}, "
                              f"{plan.collective} on {', '.join(plan.devices)}")
            args[1] = run.run_id
            results = backend.hook.launch_ranks(plan=plan, distributed=spec.train.distributed, entry=rank_main,
                                                args=tuple(args), failures=str(failures), waiting=_say(console))
            result = (results or {}).get(0)
            if result is None:
                raise RuntimeError("rank 0 returned no result")
            run.metrics({"distributed_world_size": plan.world_size})
            return result
    finally:
        shutil.rmtree(failures, ignore_errors=True)


def _say(console):
    """What the launcher waits for, as one line on stderr, quiet or not: a run that waits on another host must
    say so (a progress bar would only spin)."""
    return lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True)


def rank_main(context: RankContext, spec_data: dict, run_id: str | None, resume,
              tags: dict[str, str], export: bool, quiet: bool, failures: str, debug: bool):
    """One rank: the whole experiment, tracked by rank 0 into ``run_id``. Fired by the backend's launcher in each
    process it starts, with the process group up. A failure is recorded for the launcher as one line."""
    global _current
    from rich.console import Console

    _current = replace(context, run_id=run_id)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        from tle.runner import run_experiment
        from tle.spec import ExperimentSpec

        spec = ExperimentSpec.model_validate(spec_data)
        result = run_experiment(spec, console=Console(stderr=True), quiet=quiet or context.rank != 0,
                                resume=resume, tags=tags, export=export)
        return result if context.rank == 0 else None
    except BaseException as exc:
        _record_failure(Path(failures), context.rank, exc)
        if debug:
            traceback.print_exc()
        # The launcher reports the reason in one line; the rank's traceback would only bury it.
        raise SystemExit(130 if isinstance(exc, KeyboardInterrupt) else 1) from None


def _record_failure(directory: Path, rank: int, exc: BaseException) -> None:
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
