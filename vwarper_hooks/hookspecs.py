"""Plugin hook specifications (pluggy). A plugin is any module or object with `@hookimpl` functions.

Third-party plugins register under the entry-point group ``vwarper_hooks``::

    [project.entry-points.vwarper_hooks]
    my_model = "my_package.vwarper_plugin"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .adapter import Adapter
    from .config import WarpConfig
    from .fine.matching import Matcher
    from .fine.warping import Injector

PROJECT_NAME = "vwarper_hooks"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register architecture adapters.

    :param register: call it once per adapter instance, e.g. ``register(MyModelAdapter())``.
        A name already registered by another plugin raises `DuplicateAdapterError`.
    """


@hookspec(firstresult=True)
def make_matcher(name: str, config: WarpConfig) -> Matcher | None:
    """Build the matcher called `name` (``WarpConfig.matcher``): it turns the match layer's
    attention calls of both branches into flows (generation -> reference and back).

    Stops at the first non-None result. Return None for names your plugin does not provide.

    :param name: the matcher name the user asked for, e.g. ``"rope_free"`` (the paper's).
    :param config: the active `WarpConfig`.
    :return: an object implementing the `vwarper_hooks.fine.matching.Matcher` protocol, or None.
    """


@hookspec
def matcher_names() -> list[str]:
    """Names of the matchers this plugin can make (used in error messages).

    :return: a list of names accepted by this plugin's `make_matcher`.
    """


@hookspec(firstresult=True)
def make_injector(name: str, config: WarpConfig) -> Injector | None:
    """Build the appearance injector called `name` (``WarpConfig.injector``).

    Stops at the first non-None result. Return None for names your plugin does not provide.

    :param name: the injector name the user asked for, e.g. ``"value_warp"``.
    :param config: the active `WarpConfig`.
    :return: an object implementing the `Injector` protocol, or None.
    """


@hookspec
def injector_names() -> list[str]:
    """Names of the injectors this plugin can make (used in error messages and the CLI).

    :return: a list of names accepted by this plugin's `make_injector`.
    """


ALL_HOOKS: dict[str, Any] = {
    "register_adapters": register_adapters,
    "make_matcher": make_matcher,
    "matcher_names": matcher_names,
    "make_injector": make_injector,
    "injector_names": injector_names,
}
