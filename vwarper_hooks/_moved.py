"""Deprecated module paths of vwarper_hooks 0.1, kept importable for one release.

The 0.2 layout moved modules into subpackages (see README, "Layout"). Importing an old path such
as ``vwarper_hooks.inspection`` (or running ``python -m vwarper_hooks.benchmark_runner``) still
works through the finder below, with a `DeprecationWarning` naming the new path. A path whose
module was split into several (``masks`` -> ``fine.foreground`` + ``fine.cycle``) gets a module
that looks names up in each new home. Nothing in the library imports an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

#: old module path -> new module path(s); submodules of an old package path follow their package
MOVED: dict[str, tuple[str, ...]] = {
    "vwarper_hooks.benchmark_runner": ("vwarper_hooks.apps.benchmark",),
    "vwarper_hooks.cli": ("vwarper_hooks.apps.cli",),
    "vwarper_hooks.demo": ("vwarper_hooks.apps.demo",),
    "vwarper_hooks.evaluation": ("vwarper_hooks.apps.evaluation",),
    "vwarper_hooks.analysis": ("vwarper_hooks.apps.analysis",),
    "vwarper_hooks.visualize": ("vwarper_hooks.apps.visualize",),
    "vwarper_hooks.generate": ("vwarper_hooks.apps.generate",),
    "vwarper_hooks.inspection": ("vwarper_hooks.porting.inspection",),
    "vwarper_hooks.conformance": ("vwarper_hooks.porting.conformance",),
    "vwarper_hooks.conformance_probes": ("vwarper_hooks.porting.probes",),
    "vwarper_hooks.tiny_models": ("vwarper_hooks.porting.tiny_models", "vwarper_hooks.porting.tiny_text"),
    "vwarper_hooks.registry": ("vwarper_hooks.plugins",),
    "vwarper_hooks.session": ("vwarper_hooks.fine.session", "vwarper_hooks.fine.diagnostics"),
    "vwarper_hooks.steps": ("vwarper_hooks.fine.steps",),
    "vwarper_hooks.matching": ("vwarper_hooks.fine.matching",),
    "vwarper_hooks.masks": ("vwarper_hooks.fine.foreground", "vwarper_hooks.fine.cycle"),
    "vwarper_hooks.warping": ("vwarper_hooks.fine.warping", "vwarper_hooks.fine.baselines"),
    "vwarper_hooks.inversion_flow": ("vwarper_hooks.fine.inversion",),
    "vwarper_hooks.reference": ("vwarper_hooks.images", "vwarper_hooks.fine.inversion"),
    "vwarper_hooks.reference_cache": ("vwarper_hooks.fine.reference_cache", "vwarper_hooks.files"),
    "vwarper_hooks.coarse.activate": ("vwarper_hooks.subject.activate", "vwarper_hooks.subject.lora"),
    "vwarper_hooks.coarse.artifact": ("vwarper_hooks.subject.store", "vwarper_hooks.coarse.checkpoint"),
    "vwarper_hooks.coarse.token": ("vwarper_hooks.subject.token",),
    # 0.3: the contract in one package; one "plan" (the token map was the "warp plan")
    "vwarper_hooks.hookspecs": ("vwarper_hooks.contract.hookspecs",),
    "vwarper_hooks.adapter": ("vwarper_hooks.contract.adapter",),
    "vwarper_hooks.processors": ("vwarper_hooks.contract.processors",),
    "vwarper_hooks.fine.plan": ("vwarper_hooks.contract.plan",),
    "vwarper_hooks.fine.warp_plan": ("vwarper_hooks.fine.token_map",),
}


def new_paths(old: str) -> tuple[str, ...] | None:
    """Where the deprecated module `old` lives now (None: not a moved path)."""
    if old in MOVED:
        return MOVED[old]
    package, _, child = old.rpartition(".")
    if package in MOVED and len(MOVED[package]) == 1:  # e.g. vwarper_hooks.cli.commands
        return (f"{MOVED[package][0]}.{child}",)
    return None


class _Union(types.ModuleType):
    """A stand-in for a module that was split: attribute lookups try each new module in turn."""

    def __init__(self, name: str, modules: list[types.ModuleType]) -> None:
        super().__init__(name)
        self._modules = modules

    def __getattr__(self, attr: str) -> Any:
        for module in self._modules:
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


def _warn(old: str) -> tuple[str, ...]:
    targets = new_paths(old)
    warnings.warn(
        f"{old} moved to {' and '.join(targets)}; the old path goes away in the next minor release.",
        DeprecationWarning,
        stacklevel=3,
    )
    return targets


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the old paths: the new module itself (or a `_Union`), after a `DeprecationWarning`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if new_paths(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        targets = _warn(spec.name)
        modules = [importlib.import_module(t) for t in targets]
        return modules[0] if len(modules) == 1 else _Union(spec.name, modules)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module was imported under its new name."""

    def get_code(self, fullname: str) -> types.CodeType:
        """For ``python -m old.path``: run the new module as ``__main__``."""
        target = _warn(fullname)[0]
        source = f"import runpy\nrunpy.run_module({target!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname} moved to {target}>", "exec")


def install() -> None:
    """Put the finder first on `sys.meta_path`, once. It claims only the old paths, which no file
    holds any more; going first keeps a child of an old package path (``vwarper_hooks.cli.commands``)
    from being loaded a second time under the old name."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
