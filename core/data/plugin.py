"""The built-in dataset sources, registered through ``register_datasets`` exactly as a third party's are."""

from __future__ import annotations

from tle.data import sources
from tle.data.builtin import load_builtin
from tle.errors import UserError
from tle.contract.hookspecs import hookimpl
from tle.contract.spec import DataSpec


def _digits(arg: str, spec: DataSpec):
    return sources.digits(arg, spec.source)


def _synthetic(arg: str, spec: DataSpec):
    if arg:
        raise UserError(f"dataset {spec.source!r}: synthetic takes no argument",
                        "write --dataset synthetic and size it with dataset.synthetic.classes/per_class/size")
    return sources.synthetic(spec.synthetic)


def _needs_path(kind: str, load):
    def loader(arg: str, spec: DataSpec):
        if not arg:
            raise UserError(f"dataset {spec.source!r} names no path", f"write --dataset {kind}:PATH")
        return load(arg, spec)

    return loader


def _builtin(name: str):
    def loader(arg: str, spec: DataSpec):
        src = load_builtin(name)
        return sources.select_classes(src, arg, spec.source) if arg else src

    return loader


LOADERS = {"digits": _digits, "synthetic": _synthetic,
           "folder": _needs_path("folder", sources.folder), "npz": _needs_path("npz", lambda arg, spec: sources.npz(arg)),
           **{name: _builtin(name) for name in sources.BUILTIN}}


@hookimpl
def register_datasets():
    return dict(LOADERS)
