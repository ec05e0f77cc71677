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
