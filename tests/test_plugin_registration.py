"""Registering matchers and injectors (`register_matchers` / `register_injectors`), the deprecated
`make_*` hooks that old plugins still implement (one more release), and the old module paths."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest
import torch

import vwarper_hooks as vwarper
from vwarper_hooks.contract import LayerRouter, MatchResult, as_match_result, hookimpl
from vwarper_hooks.errors import DuplicateAdapterError
from vwarper_hooks.fine.matching import RopeFreeMatcher
from vwarper_hooks.fine.warping import ValueWarp
from vwarper_hooks.plugins import make_parts, register_plugin, registered_parts, unregister_plugin
from vwarper_hooks.testing import tiny_call_kwargs


class TupleMatcher(RopeFreeMatcher):
    """A matcher written before `MatchResult`: returns a plain (flow, back) tuple."""

    name = "old_tuple"
    calls = 0

    def match(self, gen, refs, grid):
        TupleMatcher.calls += 1
        flow, back, _ = super().match(gen, refs, grid)
        return flow, back


class OldInjector(ValueWarp):
    name = "old_injector"
    calls = 0

    def attend(self, call, ref, plan):
        OldInjector.calls += 1
        return super().attend(call, ref, plan)


class OldStylePlugin:
    """A 0.2 plugin: `make_*` with `*_names` twins."""

    @hookimpl
    def make_matcher(self, name, config):
        return TupleMatcher(config) if name == TupleMatcher.name else None

    @hookimpl
    def matcher_names(self):
        return [TupleMatcher.name]

    @hookimpl
    def make_injector(self, name, config):
        return OldInjector() if name == OldInjector.name else None

    @hookimpl
    def injector_names(self):
        return [OldInjector.name]


def test_builtins_are_registered_once_by_name():
    assert set(registered_parts("matcher")) >= {"rope_free", "rope"}
    assert set(registered_parts("injector")) >= {"value_warp", "kv_replace", "concat"}
    matcher, injector, problems = make_parts(vwarper.WarpConfig())
    assert problems == [] and isinstance(matcher, RopeFreeMatcher) and isinstance(injector, ValueWarp)


def test_an_old_style_plugin_still_works_and_is_told_it_is_deprecated(pipe, subject):
    plugin = OldStylePlugin()
    with pytest.warns(DeprecationWarning, match="register_matchers"):
        register_plugin(plugin, name="old-style")
    try:
        config = vwarper.WarpConfig(matcher=TupleMatcher.name, injector=OldInjector.name, warp_steps=(1, 2),
                                    mask=True)
        TupleMatcher.calls = OldInjector.calls = 0
        with vwarper.inject(pipe, subject, config) as session:
            pipe(**tiny_call_kwargs(num_inference_steps=3))
        assert TupleMatcher.calls == 2 and OldInjector.calls == 2 * 10  # 2 warp steps x 10 warp layers
        assert session.diagnostics[1].cc_mask is not None  # the tuple went through to the masks
        with pytest.raises(vwarper.ConfigError) as caught:
            vwarper.inject(pipe, subject, vwarper.WarpConfig(injector="nope")).__enter__()
        assert OldInjector.name in str(caught.value) and "value_warp" in str(caught.value)
    finally:
        unregister_plugin(plugin)


def test_a_name_registered_twice_is_refused_naming_both_plugins():
    class Twin:
        @hookimpl
        def register_matchers(self, register):
            register("rope_free", RopeFreeMatcher)

    plugin = Twin()
    register_plugin(plugin, name="twin")
    try:
        with pytest.raises(DuplicateAdapterError, match="'rope_free'.*'twin'"):
            registered_parts("matcher")
    finally:
        unregister_plugin(plugin)
    assert "rope_free" in registered_parts("matcher")


def test_registering_without_a_factory_is_a_clear_error():
    class Wrong:
        @hookimpl
        def register_injectors(self, register):
            register("broken", None)

    plugin = Wrong()
    register_plugin(plugin, name="wrong")
    try:
        with pytest.raises(TypeError, match="register\\(name: str, factory: callable\\).*'wrong'"):
            registered_parts("injector")
    finally:
        unregister_plugin(plugin)


def test_match_result_from_old_tuples():
    flow, back = torch.arange(3), torch.arange(6)
    assert as_match_result((flow, back)).reference is None
    result = as_match_result((flow, back, torch.zeros(3, dtype=torch.long)))
    assert isinstance(result, MatchResult) and result.reference.tolist() == [0, 0, 0]


def test_the_base_router_leaves_every_layer_stock():
    router = LayerRouter()
    assert not router.wants(0) and not router.wants_text(0) and router.keeps_flags is False
    assert router.entering(0) is None and router.register(object()) is None


@pytest.mark.parametrize(
    "old, new",
    [("vwarper_hooks.hookspecs", "vwarper_hooks.contract.hookspecs"),
     ("vwarper_hooks.adapter", "vwarper_hooks.contract.adapter"),
     ("vwarper_hooks.processors", "vwarper_hooks.contract.processors"),
     ("vwarper_hooks.fine.plan", "vwarper_hooks.contract.plan"),
     ("vwarper_hooks.fine.warp_plan", "vwarper_hooks.fine.token_map")],
)
def test_old_module_paths_warn_and_give_the_new_module(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
