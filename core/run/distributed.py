"""One run over several processes, devices or hosts (``train.distributed``), without any framework import.

What runs where:

- The process the user started, on every node, asks the backend for a :class:`DistributedPlan`
  (hook ``distributed_plan``): the world size, this node's devices, and whether the backend distributes
  inside this one process (Keras: ``tf.distribute.MirroredStrategy``) or starts processes (torch: DDP ranks
  through torch's elastic launcher). Impossible settings are user errors here, before MLflow is touched.
- In one process, the run goes on as any run does, tagged with the world size and devices.
- With processes, the launcher on node 0 creates the MLflow run and owns its status; the backend's
  ``launch_ranks`` starts this node's ranks, each of which runs the whole experiment (:func:`tle.run.runner.rank_main`) with
  its process group up. Rank 0 reopens the run and writes params, metrics, artifacts and the ONNX model into
  it; the other ranks train and write nothing. The launcher ends the run FINISHED, FAILED with the first
  failing rank's one-line reason, or KILLED (Ctrl-C, SIGTERM). Launchers on other nodes track nothing.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tle.contract.distributed import DistributedPlan, RankContext, record_failure
from tle.errors import UserError


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
    if rank is not None and not writes(rank):
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


@dataclass(frozen=True)
class RankJob:
    """What every rank of a distributed run is handed (``entry(context, job)``): the experiment as data, the run
    rank 0 writes into, and how the rank runs it."""

    spec_data: dict[str, Any]  # the resolved ExperimentSpec, as JSON data
    run_id: str | None  # the run the launcher on node 0 opened; rank 0 writes into it
    resume: Any  # the launcher's tle.run.resume.Resume (its checkpoint is on this host) or None
    tags: dict[str, str]
    export: bool
    quiet: bool
    failures: str = ""  # the folder where a failing rank records its one-line reason
    debug: bool = False  # a failing rank prints its traceback (TLE_DEBUG=1)


@dataclass(frozen=True)
class Launch:
    """A distributed run as the process the user started launches it: on node 0 it opens the one tracked run."""

    spec: Any  # ExperimentSpec
    backend: Any  # tle.backends.manager.Backend
    plan: DistributedPlan
    name: str  # the run's name
    run_tags: dict[str, str]
    console: Any  # rich Console


def launch(how: Launch, job: RankJob, entry: Callable[[RankContext, RankJob], Any]) -> Any:
    """Start this node's ranks, each running ``entry(context, job)``, and wait for them; on node 0 inside the one
    tracked run.

    Returns rank 0's :class:`tle.run.runner.RunResult` on node 0, None on the other nodes.
    """
    import shutil
    import tempfile

    spec, backend, plan, console = how.spec, how.backend, how.plan, how.console
    failures = Path(tempfile.mkdtemp(prefix="tle-ranks-"))
    # The launcher's Resume (its checkpoint file is on this node) goes to the ranks as it is: they share the host.
    job = replace(job, failures=str(failures), debug=os.environ.get("TLE_DEBUG") == "1")
    try:
        if plan.node_rank != 0:
            if not job.quiet:
                console.print(f"node {plan.node_rank}: {plan.local_processes} ranks ({plan.engine}); node 0 "
                              f"tracks the run")
            backend.hook.launch_ranks(plan=plan, distributed=spec.train.distributed, entry=entry,
                                      args=(job,), failures=str(failures), waiting=_say(console))
            return None
        from tle.store.tracking import configure, tracked_run

        mlflow = configure(spec.tracking.uri, spec.tracking.experiment)
        with tracked_run(mlflow, name=how.name, tags=how.run_tags, run_id=job.resume and job.resume.run_id) as run:
            if not job.quiet:
                console.print(f"[bold]run[/] {run.run_id}  {plan.world_size} ranks, {plan.engine}, "
                              f"{plan.collective} on {', '.join(plan.devices)}")
            results = backend.hook.launch_ranks(plan=plan, distributed=spec.train.distributed, entry=entry,
                                                args=(replace(job, run_id=run.run_id),), failures=str(failures),
                                                waiting=_say(console))
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


def enter(context: RankContext, run_id: str | None) -> None:
    """Make this process the rank ``context`` (of the run ``run_id``): :func:`current` gives it from now on."""
    global _current
    _current = replace(context, run_id=run_id)


def fail(job: RankJob, context: RankContext, exc: BaseException) -> SystemExit:
    """A rank's failure recorded for the launcher as one line (the rank's traceback would only bury it; printed
    with TLE_DEBUG=1); the exit the rank ends with."""
    record_failure(Path(job.failures), context.rank, exc)
    if job.debug:
        traceback.print_exc()
    return SystemExit(130 if isinstance(exc, KeyboardInterrupt) else 1)
