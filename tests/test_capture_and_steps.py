"""Capture points of the CogVideoX adapter, step indices, and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import hook_count, run
from diffusers.models.embeddings import apply_rotary_emb
from peft import LoraConfig
from torch import nn

import vwarper_hooks as vwarper
from vwarper_hooks.contract import AttentionCall
from vwarper_hooks.testing import tiny_cogvideox_pipeline

LAYER = 12


class Recorder:
    """Captures the RoPE-free and post-RoPE Q/K and the value of one layer."""

    def __init__(self, layer: int) -> None:
        self.layer, self.got = layer, {}

    def wants(self, layer: int) -> bool:
        return layer == self.layer

    def process(self, call: AttentionCall) -> torch.Tensor:
        self.got.update(q=call.query.clone(), k=call.key.clone(), v=call.value.clone(), text=call.text)
        out = call.default()
        self.got.update(q_rope=call.query.clone(), k_rope=call.key.clone())
        return out


def _capture(pipe, layer: int = LAYER):
    attn = pipe.transformer.transformer_blocks[layer].attn1
    inputs = {}

    def grab(module, args, kwargs):
        inputs.update(kwargs)

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    recorder = Recorder(layer)
    uninstall = vwarper.get_adapter(pipe.transformer).install(pipe.transformer, recorder)
    try:
        run(pipe, num_inference_steps=1)
    finally:
        uninstall()
        handle.remove()
    return attn, inputs, recorder.got


def test_rope_free_qk_match_recomputation_and_differ_from_rotated(pipe):
    attn, inputs, got = _capture(pipe)
    joint = torch.cat([inputs["encoder_hidden_states"], inputs["hidden_states"]], dim=1)
    batch, heads = joint.shape[0], attn.heads
    with torch.no_grad():
        q = attn.norm_q(attn.to_q(joint).view(batch, -1, heads, 16).transpose(1, 2))
        k = attn.norm_k(attn.to_k(joint).view(batch, -1, heads, 16).transpose(1, 2))
    assert torch.equal(got["q"], q) and torch.equal(got["k"], k)
    text = got["text"].stop
    rope = inputs["image_rotary_emb"]
    assert torch.allclose(got["q_rope"][:, :, text:], apply_rotary_emb(q[:, :, text:], rope))
    assert torch.allclose(got["k_rope"][:, :, text:], apply_rotary_emb(k[:, :, text:], rope))
    assert not torch.allclose(got["q"][:, :, text:], got["q_rope"][:, :, text:], atol=1e-3)
    assert not torch.allclose(got["k"][:, :, text:], got["k_rope"][:, :, text:], atol=1e-3)
    assert torch.equal(got["q"][:, :, :text], got["q_rope"][:, :, :text])  # text is never rotated


def test_captured_value_includes_lora_delta():
    pipe = tiny_cogvideox_pipeline(num_layers=14)
    attn, inputs, plain = _capture(pipe)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_v"], init_lora_weights=False)
    pipe.transformer.add_adapter(config)
    try:
        attn, inputs, lora = _capture(pipe)
        joint = torch.cat([inputs["encoder_hidden_states"], inputs["hidden_states"]], dim=1)
        with torch.no_grad():
            base = attn.to_v.base_layer(joint).view(joint.shape[0], -1, 2, 16).transpose(1, 2)
            full = attn.to_v(joint).view(joint.shape[0], -1, 2, 16).transpose(1, 2)
        assert torch.equal(lora["v"], full)
        assert not torch.allclose(lora["v"], base, atol=1e-4)
    finally:
        pipe.transformer.delete_adapters("default")


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_step_index_for_every_step(pipe, subject, guidance):
    seen = []
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)) as session:
        handle = pipe.transformer.register_forward_pre_hook(lambda *a: seen.append(session.router.route.step))
        try:
            run(pipe, num_inference_steps=5, guidance_scale=guidance)
        finally:
            handle.remove()
    assert seen == [0, 1, 2, 3, 4]


def test_calls_outside_the_denoising_loop_have_no_step(pipe, subject):
    """Before the first set_timesteps and after a run's last scheduler.step, a transformer call is
    not a denoising step: it runs stock (no route), e.g. a user's own forward inside the block."""
    from vwarper_hooks.porting.conformance import forward_inputs

    inputs = forward_inputs(pipe)
    seen = []
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2))) as session:
        handle = pipe.transformer.register_forward_pre_hook(lambda *a: seen.append(session.router.route.step))
        try:
            with torch.no_grad():
                pipe.transformer(**inputs)  # before any pipeline call
            run(pipe, num_inference_steps=3)
            with torch.no_grad():
                pipe.transformer(**inputs)  # after the run ended
        finally:
            handle.remove()
    assert seen[0] is None and seen[-1] is None
    assert [s for s in seen[1:-1] if s is not None] == [0, 0, 1, 1, 2, 2]  # each step also runs the reference


def test_the_clock_reads_no_tensor_value(pipe):
    """The step comes from counting scheduler calls: the scheduler's timesteps are never compared."""
    from vwarper_hooks.fine.steps import StepClock

    clock = StepClock(pipe.scheduler)
    with clock.installed():
        assert clock.current() is None
        pipe.scheduler.set_timesteps(4)
        pipe.scheduler.timesteps = pipe.scheduler.timesteps.to("meta")  # values unreadable from now on
        seen = []
        for _ in range(4):
            seen.append(clock.current())
            clock._on_step((), {})
        assert seen == [0, 1, 2, 3] and clock.current() is None
        assert clock.host_timesteps().device.type == "cpu" and len(clock.host_timesteps()) == 4
    assert "step" not in pipe.scheduler.__dict__ and "set_timesteps" not in pipe.scheduler.__dict__


def _untouched(pipe, processors) -> bool:
    return hook_count(pipe) == 0 and [type(p) for p in pipe.transformer.attn_processors.values()] == processors


def test_bad_input_gives_specific_error_and_leaves_pipe_untouched(pipe, subject):
    processors = [type(p) for p in pipe.transformer.attn_processors.values()]
    with pytest.raises(vwarper.ConfigError) as err:
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_layers=(40, 45), match_layer=50)):
            pass
    assert "42 attention layers" in str(err.value) and "warp_layers" in str(err.value)
    assert "match_layer" in str(err.value)  # all problems in one error
    assert _untouched(pipe, processors)

    with pytest.raises(vwarper.ConfigError, match="warp_steps"):
        vwarper.WarpConfig(warp_steps=(19, 3))

    with pytest.raises(vwarper.VwarperError, match="Expected a diffusers video pipeline"):
        with vwarper.inject(object(), subject):
            pass

    class Other:
        transformer = nn.Linear(2, 2)
        scheduler = vae = text_encoder = tokenizer = object()

        def __call__(self):
            pass

    with pytest.raises(vwarper.AdapterNotFoundError, match="cogvideox"):
        with vwarper.inject(Other(), subject):
            pass
    assert _untouched(pipe, processors)


def test_fused_projections_are_refused(subject):
    pipe = tiny_cogvideox_pipeline(num_layers=14)
    pipe.transformer.fuse_qkv_projections()
    with pytest.raises(vwarper.ConfigError, match="unfuse_qkv_projections"):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_layers=(2, 3))):
            pass


def test_image_to_video_and_cached_transformers_are_refused(pipe, subject):
    before = hook_count(pipe)
    transformer = pipe.transformer
    channels = transformer.config.in_channels
    transformer.register_to_config(in_channels=2 * channels)  # as CogVideoX-5b-I2V: latents + image latents
    transformer._cache_config = object()  # what transformer.enable_cache(FirstBlockCacheConfig(...)) sets
    try:
        with pytest.raises(vwarper.ConfigError) as info:
            vwarper.inject(pipe, subject).__enter__()
    finally:
        transformer.register_to_config(in_channels=channels)
        transformer._cache_config = None
    text = str(info.value)
    assert "image-to-video" in text and "disable_cache()" in text
    assert hook_count(pipe) == before


def test_an_earlier_set_timesteps_wrapper_survives_inject(pipe, subject):
    scheduler = pipe.scheduler
    theirs = scheduler.set_timesteps  # bound method; stored as an instance attribute like a wrapper
    scheduler.set_timesteps = theirs
    try:
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)):
            assert scheduler.set_timesteps is not theirs
        assert scheduler.__dict__["set_timesteps"] is theirs
    finally:
        del scheduler.set_timesteps
