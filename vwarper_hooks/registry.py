"""Adapter registry: collects adapters from every plugin's `register_adapters` hook."""

from __future__ import annotations

from torch import nn

from .adapter import Adapter
from .errors import AdapterNotFoundError, DuplicateAdapterError
from .plugins import get_plugin_manager

_cache: dict[str, tuple[Adapter, str]] | None = None

HOW_TO_ADD = (
    "Add an adapter plugin: implement vwarper_hooks.Adapter, register it with a "
    "@hookimpl register_adapters(register) function, and expose it under the entry-point group "
    "'vwarper_hooks' (see docs in README, 'Adding an architecture')."
)


def clear_cache() -> None:
    global _cache
    _cache = None


def _adapters() -> dict[str, tuple[Adapter, str]]:
    """name -> (adapter, plugin name). Raises on duplicate names."""
    global _cache
    if _cache is not None:
        return _cache
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
    _cache = found
    return found


def list_adapters() -> list[str]:
    """Names of every registered adapter, sorted."""
    return sorted(_adapters())


def adapter_sources() -> dict[str, str]:
    """Adapter name -> name of the plugin that registered it."""
    return {name: plugin for name, (_, plugin) in sorted(_adapters().items())}


def get_adapter(transformer: nn.Module | str) -> Adapter:
    """The adapter that claims `transformer` (a model instance, or an adapter name)."""
    adapters = _adapters()
    if isinstance(transformer, str):
        if transformer in adapters:
            return adapters[transformer][0]
        raise AdapterNotFoundError(
            f"Expected one of the registered adapters {sorted(adapters)}, but got {transformer!r}. {HOW_TO_ADD}"
        )
    for adapter, _ in adapters.values():
        if adapter.matches(transformer):
            return adapter
    raise AdapterNotFoundError(
        f"Expected a transformer one of the registered adapters {sorted(adapters)} understands, but got "
        f"{type(transformer).__name__}. {HOW_TO_ADD}"
    )
