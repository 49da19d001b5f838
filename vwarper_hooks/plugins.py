"""The plugin manager and the adapter registry: built-ins and third-party plugins, both loaded from
entry points; adapters are collected from every plugin's `register_adapters` hook."""

from __future__ import annotations

import logging
from typing import Any

import pluggy
from torch import nn

from .config import WarpConfig
from .contract import hookspecs
from .contract.adapter import Adapter, base_model
from .errors import AdapterNotFoundError, DuplicateAdapterError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
_pm: pluggy.PluginManager | None = None
_adapter_cache: dict[str, tuple[Adapter, str]] | None = None
_part_cache: dict[str, dict[str, tuple[Any, str]]] = {}


def _new_manager() -> pluggy.PluginManager:
    """Every plugin comes from the entry-point group, the built-ins included (pyproject.toml is the
    one list of them): run from an installed package (``pip install -e .`` for a source tree)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    loaded = pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if not loaded:
        logger.warning("no plugin found under the entry-point group %r: is vwarper-hooks installed "
                       "(pip install -e . for a source tree)?", ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


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
    global _adapter_cache
    _adapter_cache = None
    _part_cache.clear()


HOW_TO_ADD = (
    "Add an adapter plugin: implement vwarper_hooks.Adapter, register it with a "
    "@hookimpl register_adapters(register) function, and expose it under the entry-point group "
    "'vwarper_hooks' (see docs in README, 'Adding an architecture')."
)


def registered_adapters() -> dict[str, tuple[Adapter, str]]:
    """Adapter name -> (adapter, name of the plugin that registered it). Raises on duplicate names."""
    global _adapter_cache
    if _adapter_cache is not None:
        return _adapter_cache
    pm = get_plugin_manager()
    found: dict[str, tuple[Adapter, str]] = {}
    for impl in pm.hook.register_adapters.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(adapter: Adapter, _plugin: str = plugin_name) -> None:
            if not isinstance(adapter, Adapter):
                raise TypeError(f"Expected an Adapter instance, but plugin {_plugin!r} registered {adapter!r}.")
            if not adapter.name:
                raise ValueError(f"Expected a non-empty Adapter.name, but plugin {_plugin!r} gave none.")
            if adapter.name in found:
                other = found[adapter.name][1]
                raise DuplicateAdapterError(
                    f"Expected unique adapter names, but {adapter.name!r} is registered by both plugin "
                    f"{other!r} and plugin {_plugin!r}. Rename one adapter or unregister one plugin."
                )
            found[adapter.name] = (adapter, _plugin)

        impl.function(register=register)
    _adapter_cache = found
    return found


def list_adapters() -> list[str]:
    """Names of every registered adapter, sorted."""
    return sorted(registered_adapters())


def adapter_sources() -> dict[str, str]:
    """Adapter name -> name of the plugin that registered it."""
    return {name: plugin for name, (_, plugin) in sorted(registered_adapters().items())}


def get_adapter(transformer: nn.Module | str) -> Adapter:
    """The adapter that claims `transformer` (a model instance, or an adapter name)."""
    adapters = registered_adapters()
    if isinstance(transformer, str):
        if transformer in adapters:
            return adapters[transformer][0]
        raise AdapterNotFoundError(
            f"Expected one of the registered adapters {sorted(adapters)}, but got {transformer!r}. {HOW_TO_ADD}"
        )
    model = base_model(transformer)  # torch.compile's wrapper: the model inside decides
    for adapter, _ in adapters.values():
        if adapter.matches(model):
            return adapter
    raise AdapterNotFoundError(
        f"Expected a transformer one of the registered adapters {sorted(adapters)} understands, but got "
        f"{type(transformer).__name__}. {HOW_TO_ADD}"
    )


def registered_parts(kind: str) -> dict[str, tuple[Any, str]]:
    """Matcher or injector (`kind`) name -> (factory, name of the plugin that registered it), from every
    plugin's ``register_matchers`` / ``register_injectors`` hook. Raises on duplicate names."""
    if kind in _part_cache:
        return _part_cache[kind]
    found: dict[str, tuple[Any, str]] = {}
    for impl in getattr(get_plugin_manager().hook, f"register_{kind}s").get_hookimpls():

        def register(name: str, factory: Any, _plugin: str = impl.plugin_name) -> None:
            if not (isinstance(name, str) and name) or not callable(factory):
                raise TypeError(f"Expected register(name: str, factory: callable), but plugin {_plugin!r} "
                                f"registered {kind} {name!r} with {factory!r}.")
            if name in found:
                raise DuplicateAdapterError(
                    f"Expected unique {kind} names, but {name!r} is registered by both plugin "
                    f"{found[name][1]!r} and plugin {_plugin!r}. Rename one or unregister one plugin.")
            found[name] = (factory, _plugin)

        impl.function(register=register)
    _part_cache[kind] = found
    return found


def make_part(kind: str, config: WarpConfig) -> tuple[Any, list[str]]:
    """The matcher or injector (`kind`) that `config` names: ``(part, [])``, or ``(None, [why not])``.

    Registered factories first (``register_matchers`` / ``register_injectors``), then plugins that still
    implement the deprecated ``make_matcher`` / ``make_injector`` hooks (one more release)."""
    name = getattr(config, kind)
    registered = registered_parts(kind)
    if name in registered:
        return registered[name][0](config), []
    hook = get_plugin_manager().hook
    part = getattr(hook, f"make_{kind}")(name=name, config=config)
    if part is not None:
        return part, []
    names = sorted(set(registered) | {n for names in getattr(hook, f"{kind}_names")() for n in names})
    return None, [f"Expected WarpConfig.{kind} to be one of {names}, but got {name!r}. Register its plugin."]


def make_parts(config: WarpConfig) -> tuple[Any, Any, list[str]]:
    """(matcher, injector, problems) for `config`, both made by their registered factories."""
    (matcher, problems), (injector, more) = make_part("matcher", config), make_part("injector", config)
    return matcher, injector, problems + more
