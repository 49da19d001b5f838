"""Plugin manager, adapter registry and the hook meta-test."""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

import pluggy
import pytest
from torch import nn
from vwarper_adapters.cogvideox import CogVideoXAdapter

import vwarper_hooks as vwarper
from vwarper_hooks.contract import hookimpl, hookspecs
from vwarper_hooks.fine.warping import ValueWarp
from vwarper_hooks.plugins import adapter_sources, get_plugin_manager, register_plugin, unregister_plugin


class ToyAdapter(CogVideoXAdapter):
    name = "toy"

    def matches(self, transformer: nn.Module) -> bool:
        return isinstance(transformer, nn.Linear)


class ToyPlugin:
    @hookimpl
    def register_adapters(self, register):
        register(ToyAdapter())


def test_builtin_adapters_come_from_entry_points():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="vwarper_hooks")}
    assert eps["cogvideox"] == "vwarper_adapters.cogvideox"
    pm = get_plugin_manager()
    assert pm.get_plugin("cogvideox") is importlib.import_module("vwarper_adapters.cogvideox")
    assert "cogvideox" in vwarper.list_adapters()
    assert adapter_sources()["cogvideox"] == "cogvideox"


def test_get_adapter_finds_cogvideox(pipe):
    assert vwarper.get_adapter(pipe.transformer).name == "cogvideox"
    assert vwarper.get_adapter("cogvideox").name == "cogvideox"


def test_unknown_model_lists_registered_adapters():
    with pytest.raises(vwarper.AdapterNotFoundError) as err:
        vwarper.get_adapter(nn.Conv2d(1, 1, 1))
    message = str(err.value)
    assert "cogvideox" in message and "Conv2d" in message and "entry-point group" in message
    assert isinstance(err.value, vwarper.VwarperError)


def test_third_party_plugin_registers_and_unregisters():
    plugin = ToyPlugin()
    register_plugin(plugin, name="toy-plugin")
    try:
        assert "toy" in vwarper.list_adapters()
        assert vwarper.get_adapter(nn.Linear(2, 2)).name == "toy"
        assert adapter_sources()["toy"] == "toy-plugin"
    finally:
        unregister_plugin(plugin)
    assert "toy" not in vwarper.list_adapters()


def test_duplicate_adapter_name_names_both_plugins():
    class Clash:
        @hookimpl
        def register_adapters(self, register):
            register(CogVideoXAdapter())

    plugin = Clash()
    register_plugin(plugin, name="clash-plugin")
    try:
        with pytest.raises(vwarper.DuplicateAdapterError) as err:
            vwarper.list_adapters()
        assert "clash-plugin" in str(err.value) and "'cogvideox'" in str(err.value)
    finally:
        unregister_plugin(plugin)
    assert vwarper.list_adapters().count("cogvideox") == 1


def test_misspelled_hook_is_refused():
    class Misspelled:
        @hookimpl
        def register_adapter(self, register):  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError):
        register_plugin(Misspelled(), name="misspelled")
    assert get_plugin_manager().get_plugin("misspelled") is None


def test_registered_injector_is_used(pipe, subject):
    class Spy(ValueWarp):
        name = "spy"
        calls = 0

        def attend(self, call, ref, plan):
            Spy.calls += 1
            return super().attend(call, ref, plan)

    class SpyPlugin:
        @hookimpl
        def register_injectors(self, register):
            register("spy", lambda config: Spy())

    plugin = SpyPlugin()
    register_plugin(plugin, name="spy-plugin")
    try:
        config = vwarper.WarpConfig(injector="spy", warp_steps=(1, 2), mask=False)
        with vwarper.inject(pipe, subject, config):
            pipe(**__import__("vwarper_hooks.testing").testing.tiny_call_kwargs(num_inference_steps=3))
        assert Spy.calls == 2 * 10  # 2 steps x 10 warp layers
        with pytest.raises(vwarper.ConfigError, match="spy"):
            vwarper.inject(pipe, subject, vwarper.WarpConfig(injector="nope")).__enter__()
    finally:
        unregister_plugin(plugin)


def test_every_hook_is_documented_and_tested():
    """Meta-test: each hookspec has a docstring and is exercised by some test file."""
    specs = [
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "vwarper_hooks_spec")
    ]
    assert set(specs) == set(hookspecs.ALL_HOOKS)
    tests = [p for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name]
    examples = list((Path(__file__).parents[1] / "examples").rglob("*.py"))  # plugins the tests load
    sources = "\n".join(p.read_text() for p in tests + examples)
    here = Path(__file__).read_text().split("def test_every_hook_is_documented_and_tested")[0]
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 40, f"hook {name} needs a docstring"
        assert f"def {name}(" in sources + here, f"hook {name} is not implemented by any test plugin"
