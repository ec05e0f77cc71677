"""One run over several devices of this host: ``tf.distribute.MirroredStrategy``, in this one process.

``plan`` picks the replicas (``nproc`` GPUs, one per GPU with ``auto``; on a machine without a GPU, ``nproc``
logical CPU devices carved out of the one physical CPU, the same code path, so the suite can test it) and makes
the strategy TensorFlow's default for the rest of the process (``experimental_set_strategy``): the model is
built, compiled and fitted under it without the backend's other modules knowing. ``model.fit`` splits every
global batch (``train.batch_size``) over the replicas and sums their gradients, so the run trains as one device
would, up to the order of float reductions.

Multi-host Keras is refused: Keras 3 breaks ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585,
tensorflow#72388).
"""

from __future__ import annotations

from tle import UserError
from tle.contract.distributed import DistributedPlan

ENGINE = "tf.distribute.MirroredStrategy"


def plan(distributed, device: str | None) -> DistributedPlan:
    if distributed.nnodes > 1:
        raise UserError("Keras cannot train one run across hosts: Keras 3 breaks MultiWorkerMirroredStrategy "
                        "(keras-team/keras#20585, tensorflow#72388)",
                        "use --nnodes 1 (all the GPUs of one host), or the torch backend across hosts")
    if distributed.backend != "auto":
        raise UserError(f"--dist-backend {distributed.backend} is torch's; MirroredStrategy picks its own all-reduce",
                        "leave --dist-backend at auto for keras")
    from tle_keras.runtime import tf as _tf

    tf = _tf()
    gpus = [] if (device or "auto").strip().lower() == "cpu" else tf.config.list_physical_devices("GPU")
    nproc = distributed.nproc
    if nproc == "auto":
        nproc = max(1, len(gpus))
    if gpus:
        if nproc > len(gpus):
            raise UserError(f"--nproc {nproc} asks for {nproc} GPUs, but TensorFlow sees {len(gpus)}",
                            f"use --nproc {len(gpus)} (or auto)")
        devices = [f"/gpu:{i}" for i in range(nproc)]
        ops, collective = None, "NcclAllReduce"  # MirroredStrategy's default across GPUs
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * nproc)
        except RuntimeError:
            raise UserError("TensorFlow's devices were set up before this run asked for "
                            f"{nproc} CPU replicas", "start the run in a process of its own (tle run)") from None
        devices = [f"/cpu:{i}" for i in range(nproc)]
        ops, collective = tf.distribute.ReductionToOneDevice(), "ReductionToOneDevice"
    tf.distribute.experimental_set_strategy(tf.distribute.MirroredStrategy(devices, cross_device_ops=ops))
    return DistributedPlan(world_size=nproc, local_processes=0, devices=tuple(devices), collective=collective,
                           engine=ENGINE)


def release() -> None:
    """Back to TensorFlow's default strategy (one device), for a process that goes on with other runs."""
    from tle_keras.runtime import tf as _tf

    _tf().distribute.experimental_set_strategy(None)
