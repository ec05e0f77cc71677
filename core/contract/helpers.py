"""Helpers for writing a backend's ``plugin.py`` (no framework import, nothing run at import).

A backend's hooks are plain functions in its ``plugin.py``, each marked with
:func:`tle.contract.hookspecs.implements`; a hook that only hands its arguments to a function of one of the
backend's modules is made by :func:`delegate` (the module is imported when the hook first runs, so ``tle backends``
never imports the framework). :func:`fuse_heads` is the body of the ``fuse`` hook
of the CNN backends that fuse heads with :mod:`tle.contract.head_fusion`; :func:`installed_version` is for
``backend_info``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tle.contract.hookspecs import implements
from tle.contract.records import ForeignWeights, Fused, FuseOptions
from tle.errors import UserError

_Args = ParamSpec("_Args")
_Return = TypeVar("_Return")


def delegate(spec: Callable[_Args, _Return], target: str) -> Callable[_Args, _Return]:
    """The hook implementation of ``spec`` that calls ``target`` (``"module:function"``) with the hook's arguments,
    in the hookspec's order, importing the module when the hook first runs::

        train = delegate(hookspecs.train, "tle_keras.train:fit")   # in tle_keras/plugin.py

    The implementation has ``spec``'s name and signature (pluggy reads the arguments to pass from ``spec``, through
    ``__wrapped__``; a direct call may name them as the hookspec does), and is marked as
    :func:`tle.contract.hookspecs.implements` marks a function: the type checker sees it as ``spec``; an unknown
    module or function fails when the hook runs, with the name written here."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"delegate target {target!r} is not 'module:function'")

    signature = inspect.signature(spec)

    def hook(*args: _Args.args, **kwargs: _Args.kwargs) -> _Return:
        # pluggy passes the arguments by position; a direct call (a test) may name them: both reach the target
        # by position, in the hookspec's order, whatever the target calls them.
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return getattr(importlib.import_module(module), name)(*bound.args, **bound.kwargs)

    hook.__name__ = hook.__qualname__ = spec.__name__
    hook.__doc__ = f"{spec.__name__}: :func:`{module}.{name}`."
    hook.__wrapped__ = spec  # type: ignore[attr-defined]  # pluggy reads the argument names through it
    return implements(spec)(hook)


def image_shape(backend: str, model: str, models: Sequence[str], input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(height, width, channels)`` of ``input_shape`` for ``model`` of ``backend``, whose models are ``models``;
    an unknown model or images of other than 1 or 3 channels are the user's to fix."""
    if model not in models:
        raise UserError(f"the {backend} backend has no model {model!r}", f"choose one of {', '.join(models)}")
    h, w, c = (int(v) for v in input_shape)
    if c not in (1, 3):
        raise UserError(f"{model} takes 1- or 3-channel images, the data has {c} channels",
                        "set dataset.channels to 1 or 3")
    return h, w, c


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
