"""Helpers for writing a backend's ``plugin.py`` (no framework import, nothing run at import but string checks).

Most of a backend's hooks only import one of its modules and call one function with the hook's arguments.
:func:`delegate` writes those hooks from a table, so that ``plugin.py`` spells out only the hooks with logic
of their own::

    globals().update(delegate({
        "train": "my_backend.train:fit",  # called as fit(model, data, stage, train, loop)
        "export_onnx": "my_backend.export:export(model, path, metadata)",  # only these, in this order
    }))

Each generated function is an ordinary ``@hookimpl`` named after its hook, declaring the hook's arguments
(pluggy reads them from the function's code, as for a hook written out), and imports its module on its first
call, so ``tle backends`` never imports the framework. :func:`fuse_heads` is the ``fuse`` hook of the CNN
backends that fuse heads with :mod:`tle.contract.head_fusion`; :func:`installed_version` is for ``backend_info``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tle.contract import hookspecs
from tle.contract.records import ForeignWeights
from tle.errors import UserError


def installed_version(dist: str) -> str | None:
    """The version of the installed distribution ``dist``, or ``None``: for ``backend_info``, which must not
    import the framework to say which one is there."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def delegate(table: dict[str, str]) -> dict[str, Callable[..., Any]]:
    """Hook implementations that pass their arguments on to a function, as ``{hook name: function}``.

    :param table: ``{hook: "module:function"}``: ``function`` is called with the hook's arguments in the order
        of :mod:`tle.contract.hookspecs`, positionally (their names may differ: ``fit(net, data, stage, spec, loop)``);
        ``"module:function(a, b)"`` passes only the arguments named, in that order. A hook whose spec later
        gains an argument passes it on too: name the arguments where the function must not get more.
    :return: the functions, to put into the plugin module (``globals().update(...)``), where pluggy finds them.

    Raises :class:`ValueError` for a name that is not a hook or an argument the hook does not have.
    """
    owner = sys._getframe(1).f_globals.get("__name__", "__main__")  # as namedtuple does: pickled by reference
    return {hook: _delegating(hook, target, owner) for hook, target in table.items()}


def _delegating(hook: str, target: str, owner: str) -> Callable[..., Any]:
    spec = getattr(hookspecs, hook, None)
    if spec is None or not hasattr(spec, "tle_spec"):
        raise ValueError(f"{hook!r} is not a hook of tle.contract.hookspecs")
    allowed = list(inspect.signature(spec).parameters)
    path, _, args = target.partition("(")
    module, name = _split(hook, path)
    names = [a.strip() for a in args.rstrip(") ").split(",") if a.strip()] if args else allowed
    unknown = [a for a in names if a not in allowed]
    if unknown:
        raise ValueError(f"{hook} has no argument {', '.join(unknown)} (its arguments: {', '.join(allowed)})")
    call = _lazy(module, name)
    # Written as source, as namedtuple and dataclasses write theirs, so that the code object itself has the
    # arguments' names: pluggy reads them from it (through inspect.unwrap, not inspect.signature).
    # It takes every argument of the hook, as a hook written out would, so that a direct call with the hook's
    # arguments (tests do that) works whatever the function passes on.
    arglist = ", ".join(names)
    namespace: dict[str, Any] = {"_call": call, "__name__": owner}
    exec(compile(f"def {hook}({', '.join(allowed)}):\n    return _call()({arglist})\n",
                 f"<tle hook {hook} -> {target}>", "exec"), namespace)
    function = namespace[hook]
    function.__doc__ = f"``{hook}``: {module}.{name}({arglist}), imported on the first call."
    return hookspecs.hookimpl(function)


def fuse_heads(target: str) -> Callable[..., Any]:
    """The ``fuse`` hook of a backend whose fusion merges classifier heads with :mod:`tle.contract.head_fusion` (torch,
    keras): ``"module:function"``, called as ``function(models, class_names, keep=, ratio=, concatenate=)`` with
    :class:`tle.contract.records.FuseOptions`' values. ``normalise`` and ``scales`` are not passed on: no data-free
    rescaling of CNN logits helped, and the fused head is not rescaled (it returns no factors, so bagging uses
    none either)."""
    call = _lazy(*_split("fuse", target))

    @hookspecs.hookimpl
    def fuse(models, class_names, options):
        from tle.contract.records import FuseOptions

        o = FuseOptions.of(options)
        return call()(list(models), [list(n) for n in class_names], keep=float(o.keep), ratio=float(o.ratio),
                      concatenate=bool(o.concatenate))

    fuse.__module__ = sys._getframe(1).f_globals.get("__name__", "__main__")
    fuse.__qualname__ = "fuse"
    return fuse


def _split(hook: str, target: str) -> tuple[str, str]:
    module, colon, name = target.strip().partition(":")
    if not (colon and module and name):
        raise ValueError(f"{hook}: {target!r} is not 'module:function'")
    return module, name


def _lazy(module: str, name: str) -> Callable[[], Callable[..., Any]]:
    """``module.name``, imported on the first call of the returned function."""
    found: list[Callable[..., Any]] = []

    def call() -> Callable[..., Any]:
        if not found:
            found.append(getattr(importlib.import_module(module), name))
        return found[0]

    return call


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
                        f"{request.backend}", "load the model through tle run (the core provides the reader)")
    return _foreign_reader(request)
