"""HunyuanVideo specifics: flat index over dual then single blocks, text after video, flow-matching inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from vwarper_adapters.hunyuan_video import HunyuanVideoAdapter

import vwarper_hooks as vwarper
from vwarper_hooks.fine.capture import Router
from vwarper_hooks.fine.inversion import flow_invert, flow_sigmas, invert_reference, is_flow_matching
from vwarper_hooks.images import image_to_video
from vwarper_hooks.porting.conformance import case_from_pipeline
from vwarper_hooks.porting.probes import _Recorder
from vwarper_hooks.testing import tiny_call_kwargs, tiny_hunyuan_video_pipeline


@pytest.fixture(scope="module")
def hpipe():
    return tiny_hunyuan_video_pipeline()


def test_flat_index_is_dual_then_single_and_text_follows_video(hpipe):
    t = hpipe.transformer
    layers = HunyuanVideoAdapter().attention_layers(t)
    assert layers[:2] == [b.attn for b in t.transformer_blocks]
    assert layers[2:] == [b.attn for b in t.single_transformer_blocks]
    case = case_from_pipeline(hpipe)
    rec = _Recorder({1, 2})  # last dual-stream and first single-stream layer
    uninstall = case.adapter.install(t, rec)
    try:
        case.forward()
    finally:
        uninstall()
    text_len = case.inputs["encoder_hidden_states"].shape[1]
    for layer in (1, 2):
        call = rec.calls[layer]
        assert call["video"] == slice(0, 8) and call["text"] == slice(8, 8 + text_len)
        assert call["q"].shape == (1, 2, 8 + text_len, 16)


def test_subject_positions_account_for_the_cropped_template():
    adapter = HunyuanVideoAdapter()
    kwargs = {"encoder_hidden_states": torch.zeros(1, 16, 32)}
    assert adapter.text_positions(slice(6, 7), 18, kwargs) == slice(4, 5)  # 2 template ids cropped


def test_flow_inversion_is_exact_for_a_constant_velocity():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    assert is_flow_matching(scheduler)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    trajectory = invert_reference(scheduler, lambda x, t: noise - clean, clean)
    sigmas = flow_sigmas(scheduler)
    for i in range(6):  # x_t = (1 - sigma) x0 + sigma * noise along the straight path
        expected = (1 - sigmas[i].item()) * clean + sigmas[i].item() * noise
        assert torch.allclose(trajectory[i], expected, atol=1e-5)


def _round_trip(pipe, image, steps: int, refine: int) -> float:
    adapter = vwarper.get_adapter(pipe.transformer)
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])  # as the pipeline does
    with torch.no_grad():
        clean = adapter.encode_video(pipe, image_to_video(image, 5, 32, 32))
        text = adapter.encode_text(pipe, "a <clock> clock", {"encoder_hidden_states": torch.zeros(1, 16, 32)})
        guidance = torch.tensor([6000.0])

        def denoise(x, t):
            return pipe.transformer(
                hidden_states=x, timestep=t.expand(x.shape[0]), guidance=guidance, return_dict=False, **text
            )[0]

        trajectory = flow_invert(denoise, clean, pipe.scheduler.timesteps, flow_sigmas(pipe.scheduler), refine=refine)
        rebuilt = pipe(
            prompt_embeds=text["encoder_hidden_states"],
            prompt_attention_mask=text["encoder_attention_mask"],
            pooled_prompt_embeds=text["pooled_projections"],
            num_inference_steps=steps,
            height=32,
            width=32,
            num_frames=5,
            latents=trajectory[0].clone(),
            output_type="latent",
        ).frames
    assert trajectory.shape == (steps, *clean.shape)
    assert (trajectory[0] - clean).abs().max() > 0.5
    return float((rebuilt - clean).abs().max() / clean.abs().max())


def test_flow_inversion_reconstructs_the_reference_latent(clock_image):
    """Invert, then regenerate with the pipeline's own Euler sampler from the inverted noise.

    Measured on the tiny random model (max |error| / max |latent|, 10 steps, shift 1): plain 0.88,
    4 fixed-point refinements 4e-4, 8 refinements 1e-6. With the pipeline's shift 7 the last step
    spans sigma 0.44 -> 0 and the fixed point converges slowly on a random net (8: 0.22, 30: 0.002).
    """
    pipe = tiny_hunyuan_video_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    plain = _round_trip(pipe, clock_image, steps=10, refine=0)
    refined = _round_trip(pipe, clock_image, steps=10, refine=4)
    print(f"flow inversion round trip, 10 steps: plain {plain:.4f}, refined x4 {refined:.5f}")
    assert refined < 0.01
    assert refined < plain / 20


def test_bf16_timesteps_that_round_alike_still_get_their_own_steps():
    """HunyuanVideo casts the timestep to the latent dtype; close timesteps (997.05 and 995.0) round to the
    same bf16 value. The step clock counts scheduler steps, so it never compares timestep values."""
    pipe = tiny_hunyuan_video_pipeline().to(torch.bfloat16)
    subject = vwarper.Subject.from_images([Image.new("RGB", (32, 32), (200, 80, 40))], token="<clock>",
                                          class_word="clock")
    seen = []
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)) as session:
        handle = pipe.transformer.register_forward_pre_hook(lambda *a: seen.append(session.router.route.step))
        try:
            pipe(**tiny_call_kwargs(num_inference_steps=4, sigmas=[1.0, 0.9975, 0.995, 0.5]))
        finally:
            handle.remove()
    timesteps = pipe.scheduler.timesteps
    assert timesteps[1].to(torch.bfloat16) == timesteps[2].to(torch.bfloat16)  # they do collide
    assert seen == [0, 1, 2, 3]


def test_custom_processor_is_refused(hpipe, subject):
    attn = hpipe.transformer.single_transformer_blocks[0].attn
    original = attn.processor

    class Custom:
        def __call__(self, *args, **kwargs):
            return original(*args, **kwargs)

    attn.set_processor(Custom())
    try:
        with pytest.raises(vwarper.ConfigError, match="HunyuanVideoAttnProcessor2_0"):
            with vwarper.inject(hpipe, subject, vwarper.WarpConfig(warp_steps=(1, 2))):
                pass
    finally:
        attn.set_processor(original)


def test_foreground_score_sees_only_the_unpadded_text_keys(hpipe):
    """HunyuanVideo masks padded prompt tokens out of attention; the fg softmax must do the same."""
    seen, masks = [], []
    original = Router.observe_text_attention

    def spy(self, layer, query_video, key_text, text_valid=None):
        seen.append(text_valid)
        return original(self, layer, query_video, key_text, text_valid)

    def keep_mask(module, args, kwargs):
        if session.router.route.branch == "generation":  # not the inversion or the reference branch
            masks.append(kwargs["encoder_attention_mask"])

    subject = vwarper.Subject.from_images([Image.new("RGB", (32, 32), (200, 80, 40))], token="<clock>",
                                          class_word="clock")
    Router.observe_text_attention = spy
    try:
        with vwarper.inject(hpipe, subject, vwarper.WarpConfig(warp_steps=(1, 2), fg_softmax="text")) as session:
            handle = hpipe.transformer.register_forward_pre_hook(keep_mask, with_kwargs=True)
            try:
                hpipe(**tiny_call_kwargs(num_inference_steps=3, max_sequence_length=24))
            finally:
                handle.remove()
    finally:
        Router.observe_text_attention = original
    assert len(masks) == 3 and all(torch.equal(m, masks[0]) for m in masks)  # one pass per step (no true CFG)
    prompt_mask = masks[0][-1].bool()
    assert seen and all(v is not None for v in seen)
    assert 0 < int(prompt_mask.sum()) < prompt_mask.numel()  # the prompt really is padded
    assert all(torch.equal(v[-1].cpu(), prompt_mask.cpu()) for v in seen)
