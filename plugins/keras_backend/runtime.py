"""The one place that imports TensorFlow and Keras, configured for this backend.

TF's C++ log spam is silenced and its thread pools are sized to the cores this
process may use before the runtime starts (it cannot be changed afterwards):
on a 2-core machine TF's default pools oversubscribe and run slower.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager

_configured = False


@contextmanager
def _native_stderr_hushed():
    """TF and absl write INFO lines ("oneDNN custom operations are on") straight to fd 2 at import,
    ignoring TF_CPP_MIN_LOG_LEVEL. Hold them back; if the import fails, show them with the error."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def tf():
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" not in sys.modules:
        with _native_stderr_hushed():
            import tensorflow  # noqa: F401
    import tensorflow

    if not _configured:
        _configured = True
        try:
            # A sweep running several workers on one machine gives each its share of the cores.
            intra = int(os.environ.get("TF_NUM_INTRAOP_THREADS") or cores())
            tensorflow.config.threading.set_intra_op_parallelism_threads(intra)
            tensorflow.config.threading.set_inter_op_parallelism_threads(min(2, intra))
        except RuntimeError:  # the runtime was already started by someone else's import
            pass
    return tensorflow


def keras():
    tf()
    import keras

    return keras


def gpus() -> list:
    return tf().config.list_physical_devices("GPU")


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed`` (Python's, NumPy's, Keras's and TensorFlow's global seeds) without the
    kernel-cache flush that ``tf.random.set_seed`` does in eager mode.

    The flush drops every instantiated tf.function, so in a warm sweep worker the train and test steps and
    the inference a reused model keeps (``wrapper.py``, ``train.trainer``) were instantiated and optimised by
    grappler again on their first call in every cell: about 2 s of CPU per cell, for the same functions.
    The flush exists to restart stateful random kernels (``tf.random.uniform`` and kin), whose cached kernels
    count their calls. The functions kept across cells draw only with Keras's stateless ops from seed
    variables that are reset with the model, and everything else a cell runs (its tf.data pipeline with
    the seeded shuffle and augmentation) is created anew in the cell, so the same seed draws the same
    numbers with or without the flush (``tests/test_keras_reuse.py``).
    """
    import keras as _k
    from tensorflow.python.eager import context

    ctx = context.context()
    handle = getattr(ctx, "_context_handle", None)
    if handle is None or not ctx.executing_eagerly():  # nothing cached yet, or another TF: its own way
        _k.utils.set_random_seed(seed)
        return
    ctx._context_handle = None  # _set_global_seed flushes only through the handle; it sets the seed either way
    try:
        _k.utils.set_random_seed(seed)
    finally:
        ctx._context_handle = handle
