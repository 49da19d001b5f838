"""Cached reference features: a warm call runs no reference forward and no inversion, bit for bit the same."""

from __future__ import annotations

import pytest
import torch
from conftest import run

import vwarper_hooks as vwarper


def _reference_calls(session) -> int:
    return sum(n for (branch, _, _), n in session.calls.items() if branch in ("reference", "internal"))


@pytest.mark.parametrize("injector", ["value_warp", "kv_replace"])
def test_cached_features_skip_the_reference_forward_and_change_nothing(pipe, subject, injector):
    plain = vwarper.WarpConfig(warp_steps=(1, 3), injector=injector)
    cached = plain.updated(cache_reference_features=True)
    with vwarper.inject(pipe, subject, plain) as session:
        recomputed = run(pipe, num_inference_steps=5)
    assert _reference_calls(session) > 0
    with vwarper.inject(pipe, subject, cached) as session:
        first = run(pipe, num_inference_steps=5)  # fills the cache (the inversion is cached already)
    assert _reference_calls(session) > 0
    with vwarper.inject(pipe, subject, cached) as session:
        warm = run(pipe, num_inference_steps=5)
    assert _reference_calls(session) == 0  # no reference forward, no inversion
    assert sum(n for (kind, _, _), n in session.calls.items() if kind == "warp") == 3 * 10
    assert torch.equal(first, recomputed) and torch.equal(warm, recomputed)


def test_features_beyond_the_device_budget_live_on_the_cpu(pipe, subject):
    config = vwarper.WarpConfig(warp_steps=(1, 2), cache_reference_features=True, feature_cache_device_gib=0.0)
    with vwarper.inject(pipe, subject, config):
        run(pipe, num_inference_steps=3)
    state = next(iter(vwarper.reference_cache(subject)._states.values()))
    assert state.features and all(t.device.type == "cpu" for t in state.features.values())
    with vwarper.inject(pipe, subject, config) as session:
        out = run(pipe, num_inference_steps=3)
    assert _reference_calls(session) == 0 and torch.isfinite(out).all()


def test_another_matcher_or_layer_recomputes(pipe, subject):
    config = vwarper.WarpConfig(warp_steps=(1, 2), cache_reference_features=True, mask=False)
    with vwarper.inject(pipe, subject, config):
        run(pipe, num_inference_steps=3)
    for changed in (config.updated(matcher="rope"), config.updated(warp_layers=(30, 31))):
        with vwarper.inject(pipe, subject, changed) as session:
            run(pipe, num_inference_steps=3)
        assert sum(n for (branch, _, _), n in session.calls.items() if branch == "reference") > 0


@pytest.mark.parametrize("features", [False, True])
def test_a_prepared_subjects_first_call_is_warm(pipe, clock_image, features):
    config = vwarper.WarpConfig(warp_steps=(1, 3), cache_reference_features=features)
    fresh = vwarper.Subject.from_images([clock_image], token="<clock>", class_word="clock")
    with vwarper.inject(pipe, fresh, config):
        recomputed = run(pipe, num_inference_steps=5)

    prepared = vwarper.Subject.from_images([clock_image], token="<clock>", class_word="clock")
    calls = pipe.transformer._forward_hooks  # nothing may stay behind after prepare
    before = len(calls)
    vwarper.prepare(pipe, prepared, num_frames=5, height=32, width=32, num_inference_steps=5, config=config,
                     max_sequence_length=16)
    assert len(calls) == before and vwarper.reference_cache(prepared).misses == 1
    with vwarper.inject(pipe, prepared, config) as session:
        first = run(pipe, num_inference_steps=5)
    internal = sum(n for (branch, _, _), n in session.calls.items() if branch == "internal")
    reference = sum(n for (branch, _, _), n in session.calls.items() if branch == "reference")
    assert internal == 0 and vwarper.reference_cache(prepared).misses == 1  # no inversion
    assert (reference == 0) == features  # with cached features, no reference forward either
    assert torch.equal(first, recomputed)
