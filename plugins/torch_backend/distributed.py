"""One run over several processes: DDP ranks started by torch's own launcher (``torch.distributed.run``'s elastic agent).

The launching side (``plan``, ``launch``) runs in the process the user started: it picks the devices and the
collective (NCCL on CUDA, one process per GPU by default; gloo on CPU), then starts ``nproc`` processes with
``elastic_launch`` over a static rendezvous at ``master_addr:master_port`` (``node_rank`` orders the hosts,
exactly as ``torchrun --nnodes --node-rank --master-addr`` does), joined by :mod:`tle_torch.rendezvous` so that
the wait for the other nodes says what it waits for, ends after ``join_timeout`` and stops on Ctrl-C/SIGTERM.
No restarts: a failed rank fails the run; a collective that waits longer than ``collective_timeout`` fails.

The training side (``world``, ``replicate``, ``shard``, ``all_sum``) is what ``train.fit`` uses inside a rank:
``DistributedDataParallel`` over the trainable part of the net, each rank on its share of every global batch.
The shares come from a ``DistributedSampler`` seeded with the epoch's seed: rank r takes positions r, r+W, ...
of the permutation a single process would use, and step s of every rank takes the next ``batch_size / W`` of
them, so the ranks of one step together hold exactly the single process's batch s (when the training set
splits evenly over the ranks; otherwise the sampler repeats a few images, as DDP always does).
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from tle import UserError
from tle.contract.distributed import RANKS_ON, DistributedPlan, RankContext, RankFailed, rank_failure

ENGINE = "torch DDP (torch.distributed.run)"
RAY_ENGINE = "torch DDP (Ray Train TorchTrainer)"
DEFAULT_PORT = 29500  # torchrun's


def on_ray() -> bool:
    return os.environ.get(RANKS_ON) == "ray"


def plan(distributed, device: str | None) -> DistributedPlan:
    from tle_torch.plugin import resolve_device

    if on_ray():
        return _ray_plan(distributed, device)
    cuda = resolve_device(device) != "cpu"
    count = torch.cuda.device_count() if cuda else 0
    nproc = distributed.nproc
    if nproc == "auto":
        nproc = count if cuda else 1
    if cuda and nproc > count:
        raise UserError(f"--nproc {nproc} asks for one process per GPU, but torch sees {count}",
                        f"use --nproc {count} (or auto), or --device cpu")
    collective = distributed.backend if distributed.backend != "auto" else ("nccl" if cuda else "gloo")
    if collective == "nccl" and not cuda:
        raise UserError("the nccl backend needs CUDA devices and this run is on the CPU",
                        "use --dist-backend gloo (or auto), or a CUDA device")
    if collective == "nccl" and not dist.is_nccl_available():
        raise UserError("this torch build has no NCCL", "use --dist-backend gloo")
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed", "install a torch build with it")
    devices = tuple(f"cuda:{i}" for i in range(nproc)) if cuda else ("cpu",) * nproc
    return DistributedPlan(world_size=nproc * distributed.nnodes, local_processes=nproc, devices=devices,
                           collective=collective, engine=ENGINE, node_rank=distributed.node_rank)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_plan(distributed, device: str | None) -> DistributedPlan:
    """A sweep cell on Ray: ``nproc x nnodes`` Ray Train workers wherever the cluster has room; GPUs when the
    device asks for CUDA, or is auto and the cluster has GPUs."""
    import ray

    asked = (device or "auto").strip().lower()
    use_gpu = asked.startswith(("cuda", "gpu")) or (asked == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    nproc = distributed.nproc
    if nproc == "auto":
        nproc = int(ray.cluster_resources().get("GPU", 0)) if use_gpu else 1
    world = max(1, int(nproc)) * distributed.nnodes
    collective = distributed.backend if distributed.backend != "auto" else ("nccl" if use_gpu else "gloo")
    if collective == "nccl" and not use_gpu:
        raise UserError("the nccl backend needs CUDA devices and this cell is on the CPU",
                        "use train.distributed.backend gloo (or auto), or train.device cuda")
    return DistributedPlan(world_size=world, local_processes=world, devices=("cuda" if use_gpu else "cpu",) * world,
                           collective=collective, engine=RAY_ENGINE)


def launch(plan: DistributedPlan, distributed, entry, args: tuple, failures: str, waiting=None) -> dict:
    if plan.engine == RAY_ENGINE:
        return _launch_ray(plan, entry, args, failures)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from tle_torch import rendezvous

    # The agent's INFO/ERROR lines (its config, a failure table) would drown the one line tle reports.
    # (torch sets a level on each of its loggers, so the parent's level alone does not reach them.)
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # "Terminating process N via SIGTERM"
    one_host = distributed.nnodes == 1
    port = distributed.master_port or (_free_port() if one_host else DEFAULT_PORT)
    addr = "127.0.0.1" if one_host and distributed.master_addr in ("localhost", "127.0.0.1") else distributed.master_addr
    config = LaunchConfig(min_nodes=distributed.nnodes, max_nodes=distributed.nnodes,
                          nproc_per_node=plan.local_processes, run_id=f"tle-{port}", rdzv_backend=rendezvous.BACKEND,
                          rdzv_endpoint=f"{addr}:{port}",
                          rdzv_configs={"rank": distributed.node_rank, "timeout": int(distributed.join_timeout) + 1,
                                        "join_timeout": distributed.join_timeout, "waiting": waiting},
                          max_restarts=0, start_method=_start_method(), monitor_interval=0.1,
                          local_addr=addr if one_host else None)  # across hosts each agent names its own
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return elastic_launch(config, _rank)(entry, args, plan.collective, plan.devices,
                                             distributed.collective_timeout)
    except ChildFailedError as exc:
        seen = {rank: _what_happened(f) for rank, f in exc.failures.items()}
        raise _timed_out(rank_failure(failures, seen), distributed.collective_timeout) from None
    except SignalException:
        # The agent has already stopped every rank (SIGTERM, then SIGKILL after its grace period).
        raise KeyboardInterrupt from None
    finally:
        for s, h in handlers.items():  # the agent's handlers raise SignalException; the CLI's end runs KILLED
            signal.signal(s, h)


def _timed_out(error: Exception, timeout: float) -> Exception:
    """A rank's collective that ran out of ``collective_timeout`` (gloo: "Timed out waiting 5000ms for recv
    operation"), said as what it means for the run."""
    if isinstance(error, RankFailed) and "Timed out waiting" in error.reason:
        return RankFailed(error.rank, f"a collective waited longer than --collective-timeout {timeout:g}s for the "
                                      f"other ranks (one hung or died; raise it if they are only slow): {error.reason}")
    return error


def _launch_ray(plan: DistributedPlan, entry, args: tuple, failures: str) -> dict:
    """The ranks as Ray Train workers (``TorchTrainer``, which sets up the process group); rank 0 hands its result
    to a mailbox actor of this process (a worker's own objects die with it)."""
    import tempfile

    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = plan.devices[0].startswith("cuda")
    cpus = float(os.environ.get("TLE_RAY_CPUS_PER_RANK", "1"))
    mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
    trainer = TorchTrainer(_ray_rank, train_loop_config={"entry": entry, "args": args, "mailbox": mailbox},
                           torch_config=TorchConfig(backend=plan.collective),
                           scaling_config=ScalingConfig(num_workers=plan.world_size, use_gpu=use_gpu,
                                                        resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu
                                                                                             else {})}),
                           run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="tle-raytrain-"),
                                                failure_config=FailureConfig(max_failures=0)))
    try:
        result = trainer.fit()
        if getattr(result, "error", None) is not None:
            raise result.error
        return {0: ray.get(mailbox.get.remote())}
    except ray.train.TrainingFailedError as exc:
        text = str(exc).strip().splitlines()
        raise rank_failure(failures, {0: (text[-1] if text else type(exc).__name__)[:500]}) from None
    finally:
        ray.kill(mailbox)


class _Mailbox:
    def __init__(self):
        self.value = None

    def put(self, value) -> None:
        self.value = value

    def get(self):
        return self.value


def _ray_rank(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world, local = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    device = str(ray.train.torch.get_device())
    where = [None] * world
    dist.all_gather_object(where, f"{socket.gethostname()}/{device}")
    result = config["entry"](RankContext(rank, world, local, device, tuple(where)), *config["args"])
    if rank == 0:
        ray.get(config["mailbox"].put.remote(result))


# Imported once by the fork server, before it forks the ranks: each rank starts without importing torch again
# (seconds per process). The server is a fresh process (no CUDA context, no MLflow connection, no threads of the
# launcher), which is what makes forking it safe where forking the launcher is not.
PRELOAD = ["torch", "torchvision", "tle.run.runner", "tle.data", "tle_torch.plugin", "tle_torch.train", "tle_torch.models"]


def _start_method() -> str:
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.set_forkserver_preload(PRELOAD)
    return "forkserver"


def _what_happened(failure) -> str:
    if failure.signal_name() != "<N/A>":
        return f"killed by {failure.signal_name()}"
    return f"exited with code {failure.exitcode}"


def _die_with_parent() -> None:
    # A rank must not outlive its launcher, even one killed by SIGKILL (the agent cannot clean up then).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _rank(entry, args: tuple, collective: str, devices: tuple[str, ...], timeout: float):
    """The function each spawned process runs (must be importable: the start method is spawn). ``timeout``: how
    long one collective waits for the other ranks (``train.distributed.collective_timeout``) before it fails."""
    _die_with_parent()
    rank, local, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = devices[local]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, len(devices))))  # the ranks of a host share its cores
    kwargs = {}
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(collective, timeout=datetime.timedelta(seconds=timeout), **kwargs)
    try:
        where = [None] * world
        dist.all_gather_object(where, f"{socket.gethostname()}/{device}")
        return entry(RankContext(rank, world, local, device, tuple(where)), *args)
    finally:
        dist.destroy_process_group()


# -- inside a rank ---------------------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class From(nn.Module):
    """The net from block ``start`` on (its input a cached frozen prefix), as one module DDP can wrap."""

    def __init__(self, net, start: int):
        super().__init__()
        self.net, self.start = net, start

    def forward(self, z):
        return self.net.forward_from(z, self.start)


def replicate(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DDP: its gradients averaged over the ranks in the backward pass (NCCL or gloo)."""
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def sync_batchnorm(net: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every BatchNorm of ``net`` for a SyncBatchNorm sharing its parameters and buffers; return what to swap
    back (the saved weights, the exported graph and a single process's evaluation know plain BatchNorm)."""
    swapped = []
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
                sync.weight, sync.bias = child.weight, child.bias
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(parent, name, sync)
                swapped.append((parent, name, child))
    return swapped


def unsync_batchnorm(swapped) -> None:
    for parent, name, original in swapped:
        sync = getattr(parent, name)
        original.train(sync.training)
        setattr(parent, name, original)


def shard(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """This rank's batches of one epoch (positions into the training set): its ``DistributedSampler`` share of the
    epoch's permutation, cut into ``batch_size / world`` per step. Every rank gets as many steps (DDP needs it)."""
    rank, size = world()
    sampler = DistributedSampler(range(n), num_replicas=size, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(0)  # the seed is already the epoch's
    mine = torch.tensor(list(sampler), dtype=torch.int64)
    parts = list(mine.split(max(1, batch_size // size)))
    if len(parts) > 1 and len(parts[-1]) == 1:  # as a single process does: never a lone last image
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """The sums over the ranks (one all_reduce), as float64 on this rank's device."""
    rank, size = world()
    device = values[0].device
    stacked = torch.stack([v.detach().to(device, torch.float64).reshape(()) for v in values])
    if size > 1:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return list(stacked.unbind())
