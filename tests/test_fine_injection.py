"""The fine stage end to end on the tiny pipeline: masks, warping, ablations, cache, inversion."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import generate, hook_count

import vwarper_hooks as vwarper
from vwarper_hooks.contract import hookimpl
from vwarper_hooks.fine.inversion import ddim_invert
from vwarper_hooks.fine.warping import ValueWarp
from vwarper_hooks.images import image_to_video
from vwarper_hooks.plugins import register_plugin, unregister_plugin


def empty_mask_config(**fields) -> vwarper.WarpConfig:
    """tau_fg above every (min-max normalised) score: an empty mask. `WarpConfig` refuses it (it switches the
    method off), so it is set past validation to test that an empty mask injects nothing."""
    return vwarper.WarpConfig(warp_steps=(1, 4), **fields).model_copy(update={"tau_fg": 1.5})


def test_empty_mask_equals_coarse_only(pipe, subject):
    coarse, _ = generate(pipe, subject, vwarper.WarpConfig(warp=False))
    empty, session = generate(pipe, subject, empty_mask_config())
    assert session.diagnostics and not any(d.mask.any() for d in session.diagnostics.values())
    assert torch.equal(empty, coarse)


def test_unmasked_warp_changes_only_video_values(pipe, subject):
    seen = []

    class Spy(ValueWarp):
        name = "spy_values"

        def attend(self, call, ref, plan):
            original = call.value.clone()
            attend = call.attend

            def check(q, k, v):
                seen.append(
                    (
                        torch.equal(v[:, :, call.text], original[:, :, call.text]),
                        not torch.equal(v[:, :, call.video], original[:, :, call.video]),
                    )
                )
                return attend(q, k, v)

            call.attend = check
            return super().attend(call, ref, plan)

    class Plugin:
        @hookimpl
        def register_injectors(self, register):
            register("spy_values", lambda config: Spy())

    plugin = Plugin()
    register_plugin(plugin, name="spy-values")
    try:
        coarse, _ = generate(pipe, subject, vwarper.WarpConfig(warp=False))
        warped, _ = generate(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 4), mask=False, injector="spy_values"))
    finally:
        unregister_plugin(plugin)
    assert not torch.equal(warped, coarse)
    assert len(seen) == 4 * 10 and all(text_same and video_changed for text_same, video_changed in seen)


def test_warping_only_at_configured_layers_and_steps(pipe, subject):
    """Counted inside the injector itself (a plugin), the step taken from the pipeline's own callback."""
    done_steps, seen = [0], []

    class Spy(ValueWarp):
        name = "spy_layers"

        def attend(self, call, ref, plan):
            seen.append((done_steps[0], call.layer))
            return super().attend(call, ref, plan)

    class SpyPlugin:
        @hookimpl
        def register_injectors(self, register):
            register(Spy.name, lambda config: Spy())

    def count_step(_pipe, i, _t, _kw):
        done_steps[0] = i + 1
        return {}

    plugin = SpyPlugin()
    register_plugin(plugin, name="spy-layers")
    config = vwarper.WarpConfig(warp_steps=(2, 3), warp_layers=(20, 22), match_layer=12, mask=False,
                                injector=Spy.name)
    try:
        _, session = generate(pipe, subject, config, callback_on_step_end=count_step)
    finally:
        unregister_plugin(plugin)
    assert sorted(seen) == [(s, layer) for s in (2, 3) for layer in (20, 21, 22)]  # each exactly once
    warps = {(s, layer) for (kind, s, layer), n in session.calls.items() if kind == "warp"}
    assert warps == set(seen)
    ref = {(s, layer) for (kind, s, layer) in session.calls if kind == "reference"}
    # reference runs at the match step before each warp step and at warp steps, never past layer 22
    assert {s for s, _ in ref} == {1, 2, 3}
    assert max(layer for _, layer in ref) == 22
    assert {layer for s, layer in ref if s == 1} == {12}


def test_full_run_diagnostics_and_ablation_rows(pipe, subject):
    config = vwarper.WarpConfig(warp_steps=(1, 4))
    coarse, _ = generate(pipe, subject, vwarper.WarpConfig(warp=False))
    unmasked, _ = generate(pipe, subject, config.model_copy(update={"mask": False}))
    full, session = generate(pipe, subject, config)
    assert sorted(session.diagnostics) == [1, 2, 3, 4]
    d = session.diagnostics[2]
    assert d.grid == (2, 2, 2) and d.flow.shape == d.mask.shape == d.fg_mask.shape == d.cc_mask.shape == (2, 2, 2)
    assert d.flow.device.type == "cpu" and d.flow.dtype == torch.int32
    assert torch.equal(d.mask, d.fg_mask & d.cc_mask)
    assert 0 < int(d.fg_mask.sum()) < 8  # min-max normalised scores: the max token is in, the min out
    assert not torch.equal(unmasked, coarse) and not torch.equal(full, unmasked)


@pytest.mark.parametrize("injector", ["kv_replace", "concat"])
def test_alternative_injectors_run(pipe, subject, injector):
    coarse, _ = generate(pipe, subject, vwarper.WarpConfig(warp=False))
    out, session = generate(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 4), mask=False, injector=injector))
    assert out.shape == coarse.shape and torch.isfinite(out).all()
    assert not torch.equal(out, coarse)
    assert sum(n for (kind, _, _), n in session.calls.items() if kind == "warp") == 4 * 10
    empty, _ = generate(pipe, subject, empty_mask_config(injector=injector))
    if injector == "kv_replace":
        assert torch.equal(empty, coarse)  # an empty mask injects nothing
    else:  # the paper's token-concatenation baseline has no correspondence and no mask (appendix B.2)
        assert torch.equal(empty, out)


def test_inversion_cached_across_calls_and_sessions(pipe, subject):
    config = vwarper.WarpConfig(warp_steps=(1, 2), mask=False)
    first, _ = generate(pipe, subject, config)
    assert (vwarper.reference_cache(subject).misses, vwarper.reference_cache(subject).hits) == (1, 0)
    second, _ = generate(pipe, subject, config)
    assert (vwarper.reference_cache(subject).misses, vwarper.reference_cache(subject).hits) == (1, 1)
    assert torch.equal(first, second)
    generate(pipe, subject, config, prompt="a <clock> clock in the snow")  # prompt does not matter
    assert vwarper.reference_cache(subject).misses == 1
    generate(pipe, subject, config.model_copy(update={"inversion_prompt": "a red clock"}))
    assert vwarper.reference_cache(subject).misses == 2


def _invert_and_regenerate(pipe, image, steps, refine):
    adapter = vwarper.get_adapter(pipe.transformer)
    pipe.scheduler.set_timesteps(steps)
    with torch.no_grad():
        clean = adapter.encode_video(pipe, image_to_video(image, 5, 32, 32))
        kwargs = {"encoder_hidden_states": torch.zeros(1, 16, 32)}
        text = adapter.encode_text(pipe, "a <clock> clock", kwargs)["encoder_hidden_states"]
        rope = pipe._prepare_rotary_positional_embeddings(32, 32, clean.shape[1], torch.device("cpu"))

        def denoise(x, t):
            return pipe.transformer(
                hidden_states=x,
                encoder_hidden_states=text,
                timestep=t.expand(x.shape[0]),
                image_rotary_emb=rope,
                return_dict=False,
            )[0]

        trajectory = ddim_invert(
            denoise,
            clean,
            pipe.scheduler.timesteps,
            pipe.scheduler.alphas_cumprod,
            float(pipe.scheduler.final_alpha_cumprod),
            "v_prediction",
            refine=refine,
        )
        rebuilt = pipe(
            prompt_embeds=text,
            guidance_scale=1.0,
            num_inference_steps=steps,
            height=32,
            width=32,
            num_frames=5,
            latents=trajectory[0].clone(),
            output_type="latent",
        ).frames
    assert trajectory.shape == (steps, *clean.shape)
    assert (trajectory[0] - clean).abs().max() > 0.5  # the noisiest latent is far from the clean one
    return float((rebuilt - clean).abs().max() / clean.abs().max())


def test_ddim_inversion_reconstructs_the_reference_latent(pipe, clock_image):
    """Invert 10 steps, regenerate with the pipeline's own DDIM from the inverted noise, same prompt.

    Measured on the tiny random model (max |error| / max |latent|): plain DDIM 0.49 (0.16 at 50
    steps: a random network is far less smooth than a trained one), 8 fixed-point refinements 0.02.
    """
    plain = _invert_and_regenerate(pipe, clock_image, steps=10, refine=0)
    refined = _invert_and_regenerate(pipe, clock_image, steps=10, refine=8)
    print(f"DDIM inversion round trip, 10 steps: plain {plain:.3f}, refined x8 {refined:.3f}")
    assert refined < 0.05
    assert refined < plain / 5


def test_ddim_inversion_is_exact_for_a_consistent_model():
    """With a denoiser whose noise prediction never changes, DDIM inversion is exact (no approximation)."""
    from diffusers import CogVideoXDDIMScheduler

    scheduler = CogVideoXDDIMScheduler(prediction_type="epsilon", timestep_spacing="trailing")
    scheduler.set_timesteps(8)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(1, 2, 4, 4, 4, generator=g), torch.randn(1, 2, 4, 4, 4, generator=g)
    trajectory = ddim_invert(
        lambda x, t: noise,
        clean,
        scheduler.timesteps,
        scheduler.alphas_cumprod,
        float(scheduler.final_alpha_cumprod),
        "epsilon",
    )
    latent = trajectory[0]
    for i, t in enumerate(scheduler.timesteps):
        assert torch.allclose(latent, trajectory[i], atol=1e-5)
        latent = scheduler.step(noise, t, latent, return_dict=False)[0]
    assert torch.allclose(latent, clean, atol=1e-5)


def test_bad_reference_inputs(pipe, clock_image, caplog):
    with pytest.raises(vwarper.ConfigError, match="convert"):
        with vwarper.inject(pipe, vwarper.Subject("<clock>", "clock", [clock_image.convert("L")])):
            pass
    assert hook_count(pipe) == 0
    big = clock_image.resize((96, 64))
    with caplog.at_level(logging.INFO, logger="vwarper_hooks.images"):
        subject = vwarper.Subject.from_images([big], "<clock>", "clock")
        generate(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 1), mask=False))
    assert "resized" in caplog.text and "96x64" in caplog.text


def test_inversion_cache_on_disk_is_opt_in_and_checked(pipe, clock_image, tmp_path):

    config = vwarper.WarpConfig(warp_steps=(1, 2), mask=False)
    first = vwarper.Subject.from_images([clock_image], "<clock>", "clock")
    first.inversion_dir = tmp_path / "inversions"
    out_first, _ = generate(pipe, first, config)
    files = list((tmp_path / "inversions").glob("*.safetensors"))
    assert len(files) == 1 and vwarper.reference_cache(first).misses == 1

    second = vwarper.Subject.from_images([clock_image], "<clock>", "clock")
    second.inversion_dir = tmp_path / "inversions"
    out_second, _ = generate(pipe, second, config)
    assert (vwarper.reference_cache(second).disk_hits, vwarper.reference_cache(second).misses) == (1, 0)
    assert torch.equal(out_first, out_second)

    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated: recomputed, not trusted
    third = vwarper.Subject.from_images([clock_image], "<clock>", "clock")
    third.inversion_dir = tmp_path / "inversions"
    out_third, _ = generate(pipe, third, config)
    assert (vwarper.reference_cache(third).disk_hits, vwarper.reference_cache(third).misses) == (0, 1)
    assert torch.equal(out_first, out_third)


def test_unwritable_inversion_cache_does_not_fail_the_generation(pipe, clock_image, tmp_path, monkeypatch, caplog):
    from vwarper_hooks.fine.reference_cache import ReferenceCache

    def disk_full(self, key, state):
        raise OSError("No space left on device")

    monkeypatch.setattr(ReferenceCache, "_save", disk_full)
    subject = vwarper.Subject.from_images([clock_image], "<clock>", "clock")
    subject.inversion_dir = tmp_path / "inversions"
    config = vwarper.WarpConfig(warp_steps=(1, 2), mask=False)
    with caplog.at_level("WARNING"):
        generate(pipe, subject, config)
    assert "kept in memory only" in caplog.text
    generate(pipe, subject, config)
    assert (vwarper.reference_cache(subject).hits, vwarper.reference_cache(subject).misses) == (1, 1)


def test_cache_key_follows_conditioning_values(pipe, clock_image):
    from vwarper_hooks.files import tensor_digest
    from vwarper_hooks.fine.reference_cache import cache_key

    image, steps = clock_image, torch.tensor([999, 500])
    kwargs = {"hidden_states": torch.zeros(1, 2, 4, 4, 4), "guidance": torch.tensor([6000.0])}

    def key(guidance: float) -> tuple:
        extra = (("guidance", tensor_digest(torch.tensor([guidance]))),)
        return cache_key(image, "a <clock> clock", steps, kwargs, pipe.transformer, extra=extra)

    assert key(6000.0) == key(6000.0) and key(6000.0) != key(3500.0)


@pytest.mark.parametrize("injector", ["kv_replace", "concat"])
def test_baseline_injectors_respect_the_models_text_padding_mask(injector):
    """Padded text keys that the model masks out (HunyuanVideo) stay masked in the baselines too."""
    from vwarper_hooks.contract import AttentionCall, ReferenceFeatures, TokenMap
    from vwarper_hooks.fine.baselines import BASELINES

    g = torch.Generator().manual_seed(0)
    n_video, n_text = 4, 3
    q, k, v = (torch.randn(1, 2, n_video + n_text, 8, generator=g) for _ in range(3))
    valid = torch.tensor([[True, True, False]])  # the last text token is padding

    def run_with(padding_value: float) -> torch.Tensor:
        value = v.clone()
        value[:, :, -1] = padding_value
        call = AttentionCall(
            layer=0, query=q.clone(), key=k.clone(), value=value, text=slice(n_video, n_video + n_text),
            video=slice(0, n_video), rotate_=lambda a, b: None, rope=lambda x: x,
            attend=lambda a, b, c: torch.nn.functional.scaled_dot_product_attention(
                a, b, c, attn_mask=torch.cat([torch.ones(1, n_video, dtype=torch.bool), valid], 1)[:, None, None]),
            text_valid=valid,
        )
        ref = ReferenceFeatures(value=v[:, :, :n_video].flip(2), key=k[:, :, :n_video].flip(2))
        plan = TokenMap(flow=torch.arange(n_video), mask=torch.ones(n_video, dtype=torch.bool),
                        ref_mask=torch.ones(n_video, dtype=torch.bool))
        return BASELINES[injector]().attend(call, ref, plan)

    assert torch.allclose(run_with(0.0), run_with(1e4), atol=1e-5)


def test_inversion_cache_keeps_the_most_recently_used_states():
    from vwarper_hooks.fine.reference_cache import ReferenceCache, ReferenceState

    cache = ReferenceCache(max_entries=2)
    made = []

    def make(name, first=0):
        return lambda: made.append(name) or ReferenceState({}, torch.zeros(1), torch.zeros(4 - first, 1), first)

    for name in ("a", "b", "a", "c", "a", "b"):  # "b" is evicted by "c" (a was used more recently)
        cache.get_or_make((name,), make(name))
    assert made == ["a", "b", "c", "b"] and (cache.hits, cache.misses) == (2, 4)
    made.clear()
    cache.get_or_make(("d",), make("d", first=2), first=2)
    assert cache.get_or_make(("d",), make("d", first=3), first=3).first == 2  # reaches step 3 too
    assert cache.get_or_make(("d",), make("d", first=1), first=1).first == 1  # not noisy enough: made again
    assert made == ["d", "d"]
    with pytest.raises(ValueError, match="max_entries"):
        ReferenceCache(max_entries=0)
