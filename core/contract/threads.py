"""How a tle process waits for its CPU threads, so that it shares the machine (no framework import here).

torch's CPU kernels run on an OpenMP team (GNU libgomp in torch's pip wheels). At a barrier, libgomp's
threads by default spin on a core for up to ~300,000 iterations (milliseconds) before they sleep. That is
cheap on an idle machine and ruinous on a shared one: when another job's threads hold the cores, a team
member that lost its core keeps the others spinning, and the spinning takes the cores that member needs.
Next to one other 2-thread torch job on 2 cores, vgg_small's training steps took 80x their quiet time (a sweep
cell 38-53x; resnet18 at 64 px 12x). With ``OMP_WAIT_POLICY=PASSIVE`` the waiting threads sleep at once, and
a run slows in proportion to the CPU it gets (a cell 1.34-1.45x, benchmarks/shared_machine.py), at a price on
an idle machine: each parallel region wakes its threads (measured on a 2-vCPU VM: a resnet18 step 1.4x, a
vgg_small cell 1.7-1.9x; numbers and alternatives in plugins/torch_backend/README.md, "Threads").
TensorFlow's own thread pool (Eigen's) spins only briefly before it blocks and hands out work in small
tasks, which is why Keras runs did not show the problem.

OpenMP reads its environment once, when the library loads (when torch is imported), so tle puts the setting
into the environment before that: when a backend is loaded (``tle.backends.manager.load_backend``: a ``tle run``, a
sweep worker, the launcher whose environment DDP ranks inherit) and when ``tle_torch`` is imported; a sweep
also gives it to every worker it starts (``tle.workers.local.thread_env``).
A user's own ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` wins: with any of them set, tle
sets none (``GOMP_SPINCOUNT=300000`` brings back libgomp's own default, i.e. tle's behaviour before).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# The standard OpenMP knob, libgomp's spin count, Intel OpenMP's spin time: a user who sets one has chosen.
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
WAIT_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def wait_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables tle adds to a process's environment: ``WAIT_DEFAULTS``, or nothing when ``environ``
    (default ``os.environ``) already sets any of ``WAIT_VARS``."""
    environ = os.environ if environ is None else environ
    return {} if any(k in environ for k in WAIT_VARS) else dict(WAIT_DEFAULTS)


def share_cores() -> None:
    """Put :func:`wait_env` into this process's environment; effective only before OpenMP loads."""
    os.environ.update(wait_env())
