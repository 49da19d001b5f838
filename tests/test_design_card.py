"""The design card made literal: a pluggable matcher (`make_matcher`) and step/layer ranges set by a
context manager (`session.override`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import run

import vwarper_hooks as vwarper
from vwarper_hooks.plugins import register_plugin, unregister_plugin

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "same_position_matcher.py"


def _example_module():
    spec = importlib.util.spec_from_file_location("same_position_matcher", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_third_party_matcher_is_made_and_used(pipe, subject):
    example = _example_module()
    plugin = example.SamePositionPlugin()
    register_plugin(plugin, name="same-position")
    try:
        config = vwarper.WarpConfig(matcher="same_position", warp_steps=(1, 3), mask=False)
        with vwarper.inject(pipe, subject, config) as session:
            run(pipe, num_inference_steps=4)
        assert len(plugin.made) == 1 and plugin.made[0].calls == 3  # one match per warp step
        for d in session.diagnostics.values():
            assert torch.equal(d.flow.reshape(-1), torch.arange(d.flow.numel(), dtype=torch.int32))
    finally:
        unregister_plugin(plugin)


def test_the_default_matcher_is_the_papers_and_unknown_names_list_the_registered_ones(pipe, subject):
    assert vwarper.WarpConfig().matcher == "rope_free"
    with pytest.raises(vwarper.ConfigError) as info:
        vwarper.inject(pipe, subject, vwarper.WarpConfig(matcher="nope")).__enter__()
    assert "'rope_free'" in str(info.value) and "'rope'" in str(info.value) and "'nope'" in str(info.value)


def test_the_rope_matcher_differs_from_the_rope_free_one(pipe, subject):
    flows = {}
    for name in ("rope_free", "rope"):
        config = vwarper.WarpConfig(matcher=name, warp_steps=(1, 1), mask=False)
        with vwarper.inject(pipe, subject, config) as session:
            run(pipe, num_inference_steps=2, height=64, width=64)
        flows[name] = session.diagnostics[1].flow
    assert not torch.equal(flows["rope_free"], flows["rope"])


def _warp_steps(session) -> set[int]:
    return {step for (kind, step, _) in session.calls if kind == "warp"}


def test_override_applies_inside_and_restores_after(pipe, subject):
    config = vwarper.WarpConfig(warp_steps=(1, 2), mask=False)
    with vwarper.inject(pipe, subject, config) as session:
        with session.override(warp_steps=(3, 4), warp_layers=(25, 26)):
            run(pipe, num_inference_steps=5)
            inside = set(session.calls)
        session.calls.clear()
        run(pipe, num_inference_steps=5)
        after = set(session.calls)
    def warps(calls):
        return {(step, layer) for (kind, step, layer) in calls if kind == "warp"}

    assert warps(inside) == {(s, layer) for s in (3, 4) for layer in (25, 26)}
    assert warps(after) == {(s, layer) for s in (1, 2) for layer in range(20, 30)}
    assert session.config.warp_steps == (1, 2)


def test_override_is_restored_after_an_exception(pipe, subject):
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(mask=False)) as session:
        before = session.config
        with pytest.raises(RuntimeError, match="boom"):
            with session.override(warp_steps=(5, 15), tau_fg=0.5):
                assert session.config.warp_steps == (5, 15)
                raise RuntimeError("boom")
        assert session.config is before


def test_override_refuses_invalid_ranges_and_unknown_fields(pipe, subject):
    with vwarper.inject(pipe, subject) as session:
        before = session.config
        with pytest.raises(vwarper.ConfigError, match="warp_steps"):
            session.override(warp_steps=(9, 3)).__enter__()
        with pytest.raises(vwarper.ConfigError, match="42 attention layers"):
            session.override(warp_layers=(40, 50)).__enter__()
        with pytest.raises(vwarper.ConfigError, match="warp_stepz"):
            session.override(warp_stepz=(1, 2)).__enter__()
        with pytest.raises(vwarper.ConfigError, match="matcher"):
            session.override(matcher="nope").__enter__()
        assert session.config is before


def test_the_readme_example_of_override(pipe, subject):
    """`with vwarper.inject(pipe, subject) as s, s.override(warp_steps=(5, 15)): pipe(...)`, as documented."""
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(mask=False)) as s, s.override(warp_steps=(2, 3)):
        run(pipe, num_inference_steps=4)
    assert _warp_steps(s) == {2, 3}
