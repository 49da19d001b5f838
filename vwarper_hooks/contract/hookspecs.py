"""Plugin hook specifications (pluggy). A plugin is any module or object with `@hookimpl` functions.

Third-party plugins register under the entry-point group ``vwarper_hooks``::

    [project.entry-points.vwarper_hooks]
    my_model = "my_package.vwarper_plugin"

Each ``register_*`` hook is called once with a ``register`` function; call it once per thing the plugin
provides. The built-ins (the paper's matcher and value warping, the baselines, the adapters) register
the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from ..config import WarpConfig
from .adapter import Adapter
from .parts import Injector, Matcher

PROJECT_NAME = "vwarper_hooks"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: a matcher's factory: the active `WarpConfig` in, the matcher out
MatcherFactory = Callable[[WarpConfig], Matcher]
#: an injector's factory: the active `WarpConfig` in, the injector out
InjectorFactory = Callable[[WarpConfig], Injector]


@hookspec
def register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register architecture adapters.

    :param register: call it once per adapter instance, e.g. ``register(MyModelAdapter())``.
        A name already registered by another plugin raises `DuplicateAdapterError`.
    """


@hookspec
def register_matchers(register: Callable[[str, MatcherFactory], None]) -> None:
    """Register matchers (``WarpConfig.matcher`` names one): they turn the match layer's attention calls
    of both branches into flows (generation -> reference and back).

    :param register: call it once per matcher, ``register("rope_free", RopeFreeMatcher)``: a name and a
        factory taking the active `WarpConfig`. A name already registered raises `DuplicateAdapterError`.
    """


@hookspec
def register_injectors(register: Callable[[str, InjectorFactory], None]) -> None:
    """Register appearance injectors (``WarpConfig.injector`` names one).

    :param register: call it once per injector, ``register("value_warp", lambda config: ValueWarp())``.
        A name already registered raises `DuplicateAdapterError`.
    """


def _deprecated(hook: str) -> DeprecationWarning:
    return DeprecationWarning(
        f"The {hook} hook is deprecated since vwarper_hooks 0.3 and goes away in 0.4: implement "
        f"register_{'matchers' if 'matcher' in hook else 'injectors'}(register) instead (README, 'Plugins')."
    )


@hookspec(firstresult=True, warn_on_impl=_deprecated("make_matcher"))
def make_matcher(name: str, config: WarpConfig) -> Matcher | None:
    """Deprecated (0.3; use `register_matchers`): build the matcher called `name`, or return None."""


@hookspec(warn_on_impl=_deprecated("matcher_names"))
def matcher_names() -> list[str]:
    """Deprecated (0.3; use `register_matchers`): names `make_matcher` of this plugin accepts."""


@hookspec(firstresult=True, warn_on_impl=_deprecated("make_injector"))
def make_injector(name: str, config: WarpConfig) -> Injector | None:
    """Deprecated (0.3; use `register_injectors`): build the injector called `name`, or return None."""


@hookspec(warn_on_impl=_deprecated("injector_names"))
def injector_names() -> list[str]:
    """Deprecated (0.3; use `register_injectors`): names `make_injector` of this plugin accepts."""


ALL_HOOKS: dict[str, Any] = {
    "register_adapters": register_adapters,
    "register_matchers": register_matchers,
    "register_injectors": register_injectors,
    "make_matcher": make_matcher,
    "matcher_names": matcher_names,
    "make_injector": make_injector,
    "injector_names": injector_names,
}
