"""Where torch computes: the device a spec names, and the CPU threads a process may use.

Shared with the spiking backend, which is built on torch too.
"""

from __future__ import annotations

import os

import torch

from tle import UserError


def resolve(device: str | None) -> str:
    """``auto`` (CUDA when present), ``cpu``, ``cuda``/``gpu`` or ``cuda:N``; one line when it is not here."""
    device = (device or "auto").strip().lower()
    if device == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if device == "auto":
        return "cuda:0" if available else "cpu"
    if not available:
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA device",
                        "use --device auto or cpu (or install a CUDA build of torch)")
    if device in ("cuda", "gpu"):
        return "cuda:0"
    index = device.partition(":")[2]
    if not index.isdigit() or int(index) >= torch.cuda.device_count():
        raise UserError(f"no CUDA device {device!r} (this machine has {torch.cuda.device_count()})",
                        "use --device cuda:0 or auto")
    return f"cuda:{int(index)}"


def configure_threads() -> None:
    """No more intra-op threads than the cores this process may run on (a sweep worker, a container). Waiting
    threads sleep instead of spinning: ``tle.contract.threads`` put that in the environment before torch loaded."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
