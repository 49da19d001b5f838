"""The plugin manager: built-ins and third-party plugins, both loaded from entry points."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import pluggy

from . import hookspecs

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
# Loaded from the entry points declared in our own pyproject; imported directly only when the
# package runs from a source tree that was never installed (no entry-point metadata).
BUILTIN_PLUGINS = {
    "cogvideox": "vwarper_adapters.cogvideox",
    "hunyuan_video": "vwarper_adapters.hunyuan_video",
    "wan": "vwarper_adapters.wan",
    "injectors": "vwarper_hooks.warping",
}

_pm: pluggy.PluginManager | None = None


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    loaded = pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    logger.debug("loaded %d plugin(s) from entry points %r", loaded, ENTRY_POINT_GROUP)
    for name, module in BUILTIN_PLUGINS.items():
        if pm.get_plugin(name) is None and not pm.is_blocked(name):
            logger.warning("built-in plugin %r not found through entry points; is the package installed?", name)
            pm.register(_import(module), name=name)
    pm.check_pending()
    return pm


def _import(dotted: str) -> ModuleType:
    return importlib.import_module(dotted)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _pm
    if _pm is None:
        _pm = _new_manager()
    return _pm


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time (tests, notebooks); returns its name.

    Misspelled hook implementations are refused (`pluggy.PluginValidationError`).
    """
    pm = get_plugin_manager()
    plugin_name = pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except Exception:
        pm.unregister(plugin)
        raise
    _invalidate_caches()
    return plugin_name


def unregister_plugin(plugin: object) -> None:
    """Remove a plugin registered with `register_plugin`."""
    get_plugin_manager().unregister(plugin)
    _invalidate_caches()


def plugin_name_of(plugin: object) -> str:
    return get_plugin_manager().get_name(plugin) or repr(plugin)


def _invalidate_caches() -> None:
    from . import registry

    registry.clear_cache()
