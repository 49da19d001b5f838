"""Wan specifics: video-only self-attention, foreground scores from the cross-attention, separate CFG passes."""

from __future__ import annotations

import pytest
import torch
from vwarper_adapters.wan import WanAdapter, rotate_pairs

import vwarper_hooks as vwarper
from vwarper_hooks.fine.capture import Router
from vwarper_hooks.fine.inversion import flow_sigmas, is_flow_matching
from vwarper_hooks.testing import tiny_call_kwargs, tiny_wan_pipeline


@pytest.fixture(scope="module")
def wpipe():
    return tiny_wan_pipeline(tie_qk=True)


def test_layers_are_self_attentions_and_text_attentions_pair_with_them(wpipe):
    t, adapter = wpipe.transformer, WanAdapter()
    assert adapter.attention_layers(t) == [b.attn1 for b in t.blocks]
    assert adapter.text_attention_layers(t) == [b.attn2 for b in t.blocks]
    assert is_flow_matching(wpipe.scheduler)  # UniPC with flow sigmas, Wan's default


def test_foreground_comes_from_the_cross_attention_of_the_conditional_pass(wpipe, subject):
    seen = []
    original = Router.observe_text_attention

    def spy(self, layer, query_video, key_text):
        seen.append((self.route.step, self.route.pass_index, layer, tuple(query_video.shape), tuple(key_text.shape)))
        return original(self, layer, query_video, key_text)

    Router.observe_text_attention = spy
    try:
        config = vwarper.WarpConfig(warp_steps=(1, 3), fg_layers=(1, 2))
        with vwarper.inject(wpipe, subject, config) as session:
            wpipe(**tiny_call_kwargs(num_inference_steps=4))
    finally:
        Router.observe_text_attention = original
    # fg accumulates at steps 0..2 (before the last warp step), layers 1-2, conditional pass only
    assert {(s, p, layer) for s, p, layer, _, _ in seen} == {(s, 0, layer) for s in range(3) for layer in (1, 2)}
    assert all(q == (1, 2, 8, 16) and k == (1, 2, 16, 16) for *_, q, k in seen)
    # both CFG passes (conditional, then unconditional) are warped with the same plan
    warps = [n for (kind, _, _), n in session.calls.items() if kind == "warp"]
    assert warps and all(n == 2 for n in warps)
    assert all(d.fg_mask is not None for d in session.diagnostics.values())


def test_rotary_replica_matches_the_stock_arithmetic(wpipe):
    rope = wpipe.transformer.rope(torch.zeros(1, 4, 2, 4, 4))
    x = torch.randn(1, 8, 2, 16)  # (B, N, H, D), as the stock processor rotates it
    cos, sin = rope
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    stock = torch.empty_like(x)
    stock[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    stock[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    ours = rotate_pairs(x.transpose(1, 2), cos.transpose(1, 2), sin.transpose(1, 2)).transpose(1, 2)
    assert torch.equal(ours, stock)


def test_unipc_flow_sigmas_align_with_timesteps(wpipe):
    wpipe.scheduler.set_timesteps(5)
    sigmas = flow_sigmas(wpipe.scheduler)
    assert sigmas.shape == (6,) and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())
    ratio = wpipe.scheduler.timesteps.double() / sigmas[:-1] / 1000
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=2e-3)  # integer timesteps = sigma * 1000


def test_a_second_expert_that_is_the_first_is_routed_once(wpipe, subject):
    """Wan 2.2 pipelines hand low-noise steps to `transformer_2` (tests/test_wan22.py); one model in both
    slots gets one set of processors and hooks, and is stock again after the block."""
    from conftest import hook_count

    before = hook_count(wpipe)
    wpipe.transformer_2 = wpipe.transformer
    wpipe.register_to_config(boundary_ratio=0.875)
    try:
        with vwarper.inject(wpipe, subject, vwarper.WarpConfig(warp_steps=(1, 3), mask=False)):
            assert len(wpipe.transformer._forward_pre_hooks) == 1
            wpipe(**tiny_call_kwargs(num_inference_steps=5))
    finally:
        wpipe.transformer_2 = None
        wpipe.register_to_config(boundary_ratio=None)
    assert hook_count(wpipe) == before


def test_per_token_timesteps_are_refused(wpipe, subject):
    wpipe.register_to_config(expand_timesteps=True)
    try:
        with pytest.raises(vwarper.ConfigError, match="expand_timesteps"):
            with vwarper.inject(wpipe, subject):
                pass
    finally:
        wpipe.register_to_config(expand_timesteps=False)


def test_a_routed_cross_attention_computes_the_stock_output_once(wpipe):
    """The foreground score reads the cross-attention's own Q/K: its output stays the stock one."""
    from vwarper_adapters.wan import VwarperWanCrossAttnProcessor

    from vwarper_hooks.porting.conformance import forward_inputs

    inputs = forward_inputs(wpipe)
    attn = wpipe.transformer.blocks[1].attn2
    seen = []

    class Router:
        def wants_text(self, layer):
            return True

        def observe_text_attention(self, layer, q, k, valid=None):
            seen.append((layer, q.shape, k.shape))

    with torch.no_grad():
        stock = wpipe.transformer(**inputs)[0]
        original = attn.processor
        attn.set_processor(VwarperWanCrossAttnProcessor(original, 1, Router()))
        try:
            routed = wpipe.transformer(**inputs)[0]
        finally:
            attn.set_processor(original)
    assert seen and seen[0][0] == 1
    assert torch.allclose(routed, stock, atol=1e-6)
