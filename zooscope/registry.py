"""The plugin manager: built-in plugins, entry-point plugins and the registries they fill.

What a plugin provides is defined in ``hookspecs``; what a generator, store or
analyzer is lives in ``generator``, ``store`` and ``analysis``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from zooscope import hookspecs
from zooscope.analysis import Analyzer
from zooscope.errors import PluginError, PluginWarning
from zooscope.generator import Generator
from zooscope.store import Store

if TYPE_CHECKING:
    from zooscope.config import ZooConfig

#: Built-in plugins, registered by dotted name exactly like third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "zooscope.stores.hdf5",
    "zooscope.generators.text_classification",
    "zooscope.generators.mlm",
    "zooscope.generators.squad",
    "zooscope.plugins.agreement",
    "zooscope.plugins.weightstats",
    "zooscope.plugins.predict",
    "zooscope.plugins.sparsify",
    "zooscope.plugins.umap",
    "zooscope.plugins.backbones",
    "zooscope.plugins.curves",
)

#: The kind each registration hook fills.
KINDS: dict[str, str] = {
    "zooscope_register_generators": "generator",
    "zooscope_register_stores": "store",
    "zooscope_register_analyzers": "analyzer",
}

#: The class every registered object of a kind must be an instance of: the whole
#: contract, with its defaults, lives there (docs/plugins.md).
BASES: dict[str, type] = {"generator": Generator, "store": Store, "analyzer": Analyzer}

pm = pluggy.PluginManager("zooscope")
pm.add_hookspecs(hookspecs)

_loaded = False


def load_plugins() -> None:
    """Register the built-in plugins and the ``zooscope`` entry points, once.

    ``ZOOSCOPE_LOAD_PLUGINS`` is an allow-list of distribution names separated by
    commas; set to an empty string it loads no third-party plugin at all.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    allowed = os.environ.get("ZOOSCOPE_LOAD_PLUGINS")
    if allowed is None:
        pm.load_setuptools_entrypoints("zooscope")
        return
    wanted = {n.strip() for n in allowed.split(",") if n.strip()}
    eps = importlib.metadata.entry_points(group="zooscope")
    installed = {_normal(ep.dist.name) for ep in eps if ep.dist is not None}
    for name in sorted(n for n in wanted if _normal(n) not in installed):
        # A typo here would otherwise silently load nothing.
        warnings.warn(PluginWarning(
            f"ZOOSCOPE_LOAD_PLUGINS names {name!r}, which no installed plugin package "
            f"provides (installed: {', '.join(sorted(installed)) or 'none'})"), stacklevel=2)
    wanted = {_normal(n) for n in wanted}
    for ep in eps:  # pluggy's own loader then skips them, and records the others' versions
        if ep.dist is None or _normal(ep.dist.name) not in wanted:
            pm.set_blocked(ep.name)
    pm.load_setuptools_entrypoints("zooscope")


def _normal(distribution: str) -> str:
    """A distribution name as pip compares them: ``Zooscope_Final.Metric`` is
    ``zooscope-final-metric``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _plugin_calling(hook: Any, frame: Any) -> str:
    """The plugin whose implementation of ``hook`` is running in ``frame`` or a frame
    it called from: the one that called a callback, or raised."""
    owners = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()}
    while frame is not None:
        if frame.f_code in owners:
            return owners[frame.f_code]
        frame = frame.f_back
    return "unknown"


def _collect(hook_name: str) -> dict[str, Any]:
    """Call one registration hook through pluggy and resolve name clashes, naming the
    plugin behind each registered object."""
    import sys

    load_plugins()
    found: dict[str, Any] = {}
    owner: dict[str, str] = {}
    kind = KINDS[hook_name]
    hook = getattr(pm.hook, hook_name)

    def register(obj: Any) -> None:
        plugin = _plugin_calling(hook, sys._getframe(1))
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} without a name")
        base = BASES[kind]
        if not isinstance(obj, base):
            raise PluginError(
                f"plugin {plugin!r} registered the {kind} {name!r}, which is not a "
                f"{base.__module__}.{base.__name__}",
                hint=f"subclass {base.__name__} (docs/plugins.md)")
        if name in found:
            first, second = sorted((owner[name], plugin))
            raise PluginError(
                f"two plugins register the {kind} {name!r}: {first!r} and {second!r}",
                hint="uninstall one of them, or limit ZOOSCOPE_LOAD_PLUGINS to the one you want",
            )
        found[name] = obj
        owner[name] = plugin

    hook(register=register)
    return found


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call an event hook through pluggy; a failing observer is reported by name."""
    load_plugins()
    hook = getattr(pm.hook, hook_name)
    try:
        hook(**kwargs)
    except PluginError:
        raise
    except Exception as exc:
        tb, last = exc.__traceback__, None
        while tb is not None:
            last, tb = tb.tb_frame, tb.tb_next
        raise PluginError(
            f"plugin {_plugin_calling(hook, last)!r} failed in {hook_name}: "
            f"{type(exc).__name__}: {exc}",
            hint="uninstall or fix that plugin; the zoo itself is intact",
        ) from exc


def generators() -> dict[str, Any]:
    """Every registered generator by name."""
    return _collect("zooscope_register_generators")


def stores() -> dict[str, Any]:
    """Every registered store by name."""
    return _collect("zooscope_register_stores")


def analyzers() -> dict[str, Any]:
    """Every registered analyzer by name."""
    return _collect("zooscope_register_analyzers")


def _lookup(kind: str, name: str, table: Callable[[], dict[str, Any]]) -> Any:
    found = table()
    if name in found:
        return found[name]
    import difflib

    close = difflib.get_close_matches(name, list(found), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known {kind}s: {', '.join(sorted(found))}"
    raise PluginError(f"unknown {kind} {name!r}", hint=hint)


def get_generator(name: str) -> Any:
    return _lookup("generator", name, generators)


def generator_for(cfg: ZooConfig) -> Any:
    """The config's generator, with the config's own keys checked against the ones the
    generator declares (``ZooConfig.bind``). Every run of a config starts here."""
    generator = get_generator(cfg.generator)
    elsewhere: dict[tuple[str, str], list[str]] = {}
    for name, other in generators().items():
        for table, keys in other.config_keys.items():
            for key in keys:
                elsewhere.setdefault((table, key), []).append(name)
    cfg.bind(generator.config_keys, generator.name, elsewhere)
    return generator


def get_analyzer(name: str) -> Any:
    return _lookup("analyzer", name, analyzers)


def get_store(name: str) -> Any:
    return _lookup("store", name, stores)


def plugin_table(include_builtins: bool = False) -> list[dict[str, Any]]:
    """One row per plugin: name, kind, version, hooks and the names it registers."""
    load_plugins()
    from zooscope.version import __version__

    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or pm.is_blocked(name):  # left out by ZOOSCOPE_LOAD_PLUGINS
            continue
        builtin = name in DEFAULT_PLUGINS
        if builtin and not include_builtins:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        provides: dict[str, list[str]] = {}
        for hook_name, kind in KINDS.items():
            if hook_name not in hooks:
                continue
            names: list[str] = []
            getattr(plugin, hook_name)(lambda obj, _n=names: _n.append(obj.name))
            provides[kind] = names
        dist = dists.get(id(plugin))
        rows.append(
            {
                "name": name,
                # What ZOOSCOPE_LOAD_PLUGINS accepts: the package, not the entry point.
                "distribution": "zooscope" if builtin else (
                    _normal(dist.project_name) if dist is not None else "unknown"),
                "kind": ", ".join(provides) or "observer",
                "version": __version__ if builtin else (
                    dist.version if dist is not None else "unknown"),
                "builtin": builtin,
                "hooks": hooks,
                "provides": provides,
            }
        )
    return rows
