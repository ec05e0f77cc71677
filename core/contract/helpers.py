"""Helpers for writing a backend's ``plugin.py`` (no framework import, nothing run at import).

A backend's hooks are plain functions in its ``plugin.py``, each marked with
:func:`tle.contract.hookspecs.implements`; those that only call one of the backend's modules import it inside
the hook, so ``tle backends`` never imports the framework. :func:`fuse_heads` is the body of the ``fuse`` hook
of the CNN backends that fuse heads with :mod:`tle.contract.head_fusion`; :func:`installed_version` is for
``backend_info``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tle.contract.records import ForeignWeights, Fused, FuseOptions
from tle.errors import UserError


def installed_version(dist: str) -> str | None:
    """The version of the installed distribution ``dist``, or ``None``: for ``backend_info``, which must not
    import the framework to say which one is there."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def fuse_heads(fuse: Callable[..., Any], models: Sequence[Any], class_names: Sequence[Sequence[str]],
               options: FuseOptions | dict[str, Any] | None) -> Fused:
    """The ``fuse`` hook of a backend whose fusion merges classifier heads with :mod:`tle.contract.head_fusion` (torch,
    keras): ``fuse(models, class_names, keep=, ratio=, concatenate=)`` called with :class:`tle.contract.records.FuseOptions`'
    values. ``normalise`` and ``scales`` are not passed on: no data-free rescaling of CNN logits helped, and the fused
    head is not rescaled (it returns no factors, so bagging uses none either)."""
    o = FuseOptions.of(options)
    return Fused(fuse(list(models), [list(n) for n in class_names], keep=float(o.keep), ratio=float(o.ratio),
                      concatenate=bool(o.concatenate)))


# -- weights another backend reads (provided by the run, used by a backend) ------

_foreign_reader: Callable[[ForeignWeights], Path] | None = None


def provide_foreign_reader(reader: Callable[[ForeignWeights], Path]) -> None:
    """Set by the core's run layer (:mod:`tle.run.weights`): how a backend gets weights another backend reads."""
    global _foreign_reader
    _foreign_reader = reader


def portable_from_backend(request: ForeignWeights) -> Path:
    """``request.weights`` read by ``request.backend`` in a worker of its own, as a portable file
    (:mod:`tle.contract.portable`): the path of that file."""
    if _foreign_reader is None:
        raise UserError(f"nothing in this process can read {request.source or request.weights} with "
                        f"{request.backend}",
                        "load the model through tle run, or import tle.run.weights first (it provides the reader)")
    return _foreign_reader(request)
