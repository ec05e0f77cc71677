"""Finding backends and plugins through entry points, importing only what is used.

Importing a framework is slow (TensorFlow ~9 s here), so listing backends reads
entry-point metadata and imports just the small plugin modules, which in turn
must not import their framework at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from tle.contract import hookspecs
from tle.contract.records import BackendInfo, ModelInfo
from tle.errors import UserError
from tle.contract.threads import share_cores

BACKENDS_GROUP = "tle.backends"
PLUGINS_GROUP = "tle.plugins"


def backend_entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=BACKENDS_GROUP)}


def _dist_version(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "version", "?") if dist else "?"


def _describe_import_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def _import_entry_point(ep: EntryPoint, kind: str) -> ModuleType:
    try:
        return ep.load()
    except Exception as exc:  # any failure in third-party import code is the plugin's
        raise UserError(
            f"{kind} {ep.name!r} ({ep.value}) failed to import: {_describe_import_error(exc)}",
            f"reinstall its package or its framework (e.g. pip install 'tle[{ep.name}]'), or run 'tle backends'",
        ) from None


_MANAGER: list[pluggy.PluginManager] = []  # the one plugin manager of this process


def manager() -> pluggy.PluginManager:
    """This process's plugin manager: the hookspecs, the built-in dataset sources and every ``tle.plugins``
    plugin, registered once, exactly as a third party's; backends join it when first loaded."""
    if not _MANAGER:
        from tle.data import plugin as builtin_datasets

        pm = pluggy.PluginManager("tle")
        pm.add_hookspecs(hookspecs)
        pm.register(builtin_datasets, name="builtin:datasets")
        for ep in entry_points(group=PLUGINS_GROUP):
            pm.register(_import_entry_point(ep, "plugin"), name=f"plugin:{ep.name}")
        _check_hooks(pm)
        _MANAGER.append(pm)
    return _MANAGER[0]


def _registered(name: str, module: ModuleType) -> str:
    pm = manager()
    key = f"backend:{name}"
    if pm.get_plugin(key) is None:
        pm.register(module, name=key)
        _check_hooks(pm)
    return key


def _check_hooks(pm: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending``: every hook a plugin implements is one of :mod:`tle.contract.hookspecs`'s. A
    misspelt one would never be called (pluggy registers it and waits for a spec of that name); here it is a
    :class:`UserError` naming the plugin and the hook, and the plugin is unregistered, so that it costs the other
    backends nothing."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin = exc.plugin
        key = pm.get_name(plugin) or "?"
        unknown = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()
                         if not caller.has_spec() and any(impl.plugin is plugin and not impl.optionalhook
                                                          for impl in caller.get_hookimpls()))
        pm.unregister(plugin)
        kind, _, name = key.partition(":")
        hook = unknown[0] if unknown else "?"
        close = get_close_matches(hook, _hook_names(), n=1)
        raise UserError(f"{kind or 'plugin'} {name or key!r} ({getattr(plugin, '__name__', plugin)}) implements "
                        f"{hook!r}, which is not a tle hook",
                        f"rename it{f' to {close[0]!r}' if close else ''} (tle's hooks: tle.contract.hookspecs)") from None


def _hook_names() -> list[str]:
    return [name for name in vars(hookspecs) if hasattr(getattr(hookspecs, name), "tle_spec")]


class _BackendHooks:
    """``pm.hook`` as one backend sees it: every plugin but the other backends (one per run answers
    ``load_backbone``, ``train`` ...), so several backends share the process's manager."""

    def __init__(self, pm: pluggy.PluginManager, key: str):
        self._pm, self._key = pm, key

    def __getattr__(self, hook: str):
        if hook.startswith("_"):
            raise AttributeError(hook)
        # Made per call (it is cheap): a backend registered later must be left out too.
        others = [plugin for name, plugin in self._pm.list_name_plugin()
                  if name.startswith("backend:") and name != self._key]
        return self._pm.subset_hook_caller(hook, remove_plugins=others)


@dataclass
class Backend:
    """The selected backend: its name, its pluggy hooks and what it registered."""

    name: str
    pm: pluggy.PluginManager
    info: BackendInfo
    hook: _BackendHooks

    def models(self) -> dict[str, ModelInfo]:
        found: dict[str, ModelInfo] = {}
        for batch in self.hook.register_models():
            for info in batch or ():
                found.setdefault(info.name, info)
        return found

    def model(self, name: str) -> ModelInfo:
        models = self.models()
        if name not in models:
            raise UserError(f"backend {self.name!r} has no model {name!r}",
                            f"choose one of {', '.join(sorted(models)) or '(none)'} (see 'tle models --backend {self.name}')")
        info = models[name]
        if not info.available:
            raise UserError(f"model {name!r} is not available in backend {self.name!r}: {info.reason}",
                            "choose another model or backend")
        return info

    def dataset_sources(self) -> dict:
        sources: dict = {}
        # pluggy answers last-registered first: the built-ins come last, so go backwards for a plugin's to win.
        for batch in reversed(self.hook.register_datasets()):
            sources.update(batch or {})
        return sources


def load_backend(name: str) -> Backend:
    """Import and register one backend (plus every ``tle.plugins`` plugin)."""
    eps = backend_entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise UserError(f"unknown backend {name!r} (installed: {known})",
                        f"install a package that registers it in the {BACKENDS_GROUP!r} entry-point group")
    share_cores()  # before the backend's hooks load its framework: OpenMP reads its wait policy only then
    module = _import_entry_point(eps[name], "backend")
    hooks = _BackendHooks(manager(), _registered(name, module))
    info = hooks.backend_info()
    if info is None:
        raise UserError(f"backend {name!r} does not implement backend_info", "fix the plugin module")
    if info.status != "ok":
        raise UserError(f"backend {name!r} cannot run here: {info.status}", f"install it with pip install 'tle[{name}]'")
    return Backend(name, manager(), info, hooks)


@dataclass(frozen=True)
class BackendStatus:
    name: str
    package_version: str
    framework: str
    framework_version: str
    status: str
    target: str


def survey_backends() -> list[BackendStatus]:
    """Every installed backend with its status; a broken one is reported, not raised."""
    rows = []
    for name, ep in sorted(backend_entry_points().items()):
        version = _dist_version(ep)
        try:
            module = ep.load()
            info = _BackendHooks(manager(), _registered(name, module)).backend_info()
            rows.append(BackendStatus(name, version, info.framework, info.framework_version, info.status, ep.value))
        except UserError as exc:  # a hook tle does not have (_check_hooks)
            rows.append(BackendStatus(name, version, "?", "?", f"invalid: {exc}", ep.value))
        except Exception as exc:
            rows.append(BackendStatus(name, version, "?", "?", f"import failed: {_describe_import_error(exc)}",
                                      ep.value))
    return rows
