"""Reliability round 3 (issue 19, items 1 and 6): nothing non-finite is used silently (inversion cache,
cached features, hand-edited subject.json), and the command line's files and messages."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vwarper_hooks as vwarper
from vwarper_hooks.fine.reference_cache import ReferenceCache
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

SMALL = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2), mask=False)


@pytest.fixture(scope="module")
def small():
    return tiny_cogvideox_pipeline(num_layers=6)


def _latents(pipe, subject, config=SMALL) -> torch.Tensor:
    with vwarper.inject(pipe, subject, config):
        return pipe(**tiny_call_kwargs(num_inference_steps=3, output_type="latent")).frames


def _fresh(clock_image, cache: ReferenceCache | None = None) -> vwarper.Subject:
    subject = vwarper.Subject.from_images([clock_image], token="<clock>", class_word="clock")
    if cache is not None:
        subject.reference_cache = cache
    return subject


def test_an_inversion_cache_file_holding_nan_is_discarded_and_recomputed(small, clock_image, tmp_path, caplog):
    plain = _latents(small, _fresh(clock_image, ReferenceCache(tmp_path)))
    (file,) = tmp_path.glob("*.safetensors")
    with safe_open(str(file), framework="pt") as f:  # valid safetensors, the right key, NaN values
        meta, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    save_file({**tensors, "trajectory": torch.full_like(tensors["trajectory"], float("nan"))}, str(file), meta)
    cache = ReferenceCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vwarper_hooks"):
        again = _latents(small, _fresh(clock_image, cache))
    assert (cache.disk_hits, cache.misses) == (0, 1) and torch.equal(again, plain)
    assert "discarding inversion cache" in caplog.text and "NaN or inf (e.g. trajectory)" in caplog.text
    with safe_open(str(file), framework="pt") as f:
        assert torch.isfinite(f.get_tensor("trajectory")).all()  # the recomputed trajectory replaced it


def test_cached_reference_features_holding_nan_are_recomputed(small, clock_image, caplog):
    config = SMALL.updated(cache_reference_features=True)
    subject = _fresh(clock_image)
    first = _latents(small, subject, config)
    (state,) = subject.reference_cache._states.values()
    key = sorted(state.features)[0]
    state.features[key] = torch.full_like(state.features[key], float("inf"))
    with caplog.at_level(logging.WARNING, logger="vwarper_hooks"):
        again = _latents(small, subject, config)
    assert "cached reference feature(s) holding NaN or inf" in caplog.text
    assert torch.equal(again, first) and torch.isfinite(state.features[key]).all()
