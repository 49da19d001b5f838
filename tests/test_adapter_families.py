"""Every family of the family list besides CogVideoX runs the whole V-Warper path on tiny random pipelines,
with the identity guarantees."""

from __future__ import annotations

import pytest
import torch
from conftest import generate, hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.contract.adapter import proportional_layers
from vwarper_hooks.porting.families import OTHER_FAMILIES
from vwarper_hooks.testing import tiny_call_kwargs, tiny_pipeline

FAMILIES = list(OTHER_FAMILIES)


@pytest.fixture(scope="module", params=FAMILIES)
def fpipe(request):
    pipe = tiny_pipeline(request.param, tie_qk=True)
    pipe(**tiny_call_kwargs())  # transformers adds permanent output-capturing hooks to Llama on first use
    pipe.baseline_hooks = hook_count(pipe)
    return pipe


def test_adapter_is_found_and_depth_is_flat(fpipe):
    adapter = vwarper.get_adapter(fpipe.transformer)
    assert adapter.name in FAMILIES
    assert len(adapter.attention_layers(fpipe.transformer)) == 6  # hunyuan_video: 2 dual + 4 single; others: 6


def test_inject_off_and_after_exit_is_bit_identical(fpipe, subject):
    stock = run(fpipe)
    with vwarper.inject(fpipe, subject, vwarper.WarpConfig(warp=False)):
        assert hook_count(fpipe) > fpipe.baseline_hooks
        assert torch.equal(run(fpipe), stock)
    with vwarper.inject(fpipe, subject, vwarper.WarpConfig(warp_steps=(30, 40))) as session:
        with pytest.raises(vwarper.ConfigError, match="warp_steps"):  # a window that never fires in 2 steps
            run(fpipe)
        assert not session.diagnostics
    assert hook_count(fpipe) == fpipe.baseline_hooks
    assert "set_timesteps" not in vars(fpipe.scheduler)
    assert torch.equal(run(fpipe), stock)


def test_exceptions_restore_the_pipe(fpipe, subject):
    stock = run(fpipe)
    with pytest.raises(RuntimeError, match="boom"):
        with vwarper.inject(fpipe, subject, vwarper.WarpConfig(warp_steps=(1, 1), mask=False)):
            run(fpipe, num_inference_steps=3)
            raise RuntimeError("boom")
    assert hook_count(fpipe) == fpipe.baseline_hooks and torch.equal(run(fpipe), stock)
    with pytest.raises(vwarper.SubjectTokenError, match="<clock>"):
        with vwarper.inject(fpipe, subject, vwarper.WarpConfig(warp_steps=(1, 1))):
            run(fpipe, prompt="a photo of a dog on the beach")
    assert hook_count(fpipe) == fpipe.baseline_hooks and torch.equal(run(fpipe), stock)


def test_full_path_reference_matching_masks_warping(fpipe, subject):
    adapter = vwarper.get_adapter(fpipe.transformer)
    coarse, _ = generate(fpipe, subject, vwarper.WarpConfig(warp=False))
    unmasked, _ = generate(fpipe, subject, vwarper.WarpConfig(warp_steps=(1, 4), mask=False))
    full, session = generate(fpipe, subject, vwarper.WarpConfig(warp_steps=(1, 4)))
    # adapter defaults: the paper's layers scaled to 6 layers
    defaults = adapter.default_layers(6)
    assert (session.config.match_layer, session.config.warp_layers) == (defaults.match_layer, defaults.warp_layers)
    lo, hi = defaults.warp_layers
    warps = {(s, layer) for (kind, s, layer) in session.calls if kind == "warp"}
    assert warps == {(s, layer) for s in range(1, 5) for layer in range(lo, hi + 1)}
    assert sorted(session.diagnostics) == [1, 2, 3, 4]
    d = session.diagnostics[2]
    assert d.grid == (2, 2, 2) and d.flow.shape == d.mask.shape == (2, 2, 2)
    assert torch.equal(d.mask, d.fg_mask & d.cc_mask)
    assert 0 < int(d.fg_mask.sum()) < 8  # min-max normalised video->subject-token scores
    assert session.subject_positions == slice(4, 5)  # "a photo of a <clock>": 5th prompt token (template cropped)
    assert torch.isfinite(full).all()
    assert not torch.equal(unmasked, coarse) and not torch.equal(full, unmasked)


def test_explicit_layers_win_over_adapter_defaults(fpipe, subject):
    config = vwarper.WarpConfig(match_layer=0, warp_layers=(1, 2), warp_steps=(1, 2), mask=False)
    _, session = generate(fpipe, subject, config)
    assert {layer for (kind, _, layer) in session.calls if kind == "warp"} == {1, 2}
    with pytest.raises(vwarper.ConfigError, match="6 attention layers"):
        with vwarper.inject(fpipe, subject, vwarper.WarpConfig(warp_layers=(4, 9))):
            pass
    assert hook_count(fpipe) == fpipe.baseline_hooks


def test_proportional_defaults_keep_the_paper_at_42_layers():
    assert (proportional_layers(42).match_layer, proportional_layers(42).warp_layers) == (12, (20, 29))
    assert (proportional_layers(60).match_layer, proportional_layers(60).warp_layers) == (17, (29, 41))
    assert (proportional_layers(30).match_layer, proportional_layers(30).warp_layers) == (9, (14, 21))
    assert vwarper.WarpConfig().match_layer == 12 and vwarper.WarpConfig().warp_layers == (20, 29)
    assert vwarper.get_adapter("cogvideox").default_layers(42) is None  # CogVideoX keeps WarpConfig's


def test_rope_free_capture_matches_a_shifted_copy(fpipe):
    """Tied Q/K (like trained attention): RoPE-free features of a latent shifted by one token column match it."""
    from vwarper_hooks.fine.matching import match_flows
    from vwarper_hooks.porting.conformance import case_from_pipeline
    from vwarper_hooks.porting.probes import _Recorder

    case = case_from_pipeline(fpipe)
    adapter, base = case.adapter, case.latents()
    frames, _, columns = adapter.token_grid(case.transformer, base)
    per_token = base.shape[-1] // columns  # latent pixels per token column
    shape = (1, *base.shape[1:-2], base.shape[-2] * 2, base.shape[-1] * 2)  # a 4 x 4 token grid per frame
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    shifted = torch.roll(latents, shifts=per_token, dims=-1)  # one token column
    one = {k: v[-1:] if torch.is_tensor(v) and v.ndim and v.shape[0] == base.shape[0] else v  # the conditional row
           for k, v in case.inputs.items()}
    feats = []
    for x in (latents, shifted):
        rec = _Recorder({0})
        uninstall = adapter.install(case.transformer, rec)
        try:
            case.forward(**adapter.with_latents(one, x))
        finally:
            uninstall()
        call = rec.calls[0]
        feats.append((call["q"][0, :, call["video"]], call["k"][0, :, call["video"]]))
    (qg, kg), (qr, kr) = feats[1], feats[0]
    flow, _ = match_flows(qg, kg, qr, kr, frames=frames)
    grid = torch.arange(frames * 4 * 4).reshape(frames, 4, 4)
    expected = torch.roll(grid, shifts=1, dims=-1).reshape(-1)  # generation token p reads reference p - 1 column
    assert float((flow == expected).float().mean()) == 1.0


def test_reference_kwargs_cut_batched_inputs_and_keep_the_timestep_dtype():
    from vwarper_adapters.hunyuan_video import HunyuanVideoAdapter

    generation = {
        "hidden_states": torch.zeros(2, 4, 2, 4, 4),
        "timestep": torch.tensor([999, 999], dtype=torch.bfloat16),
        "guidance": torch.tensor([6.0, 6.0]),
        "encoder_hidden_states": torch.zeros(2, 16, 32),
        "return_dict": True,
    }
    latents, text = torch.ones(1, 4, 2, 4, 4), {"encoder_hidden_states": torch.ones(1, 16, 32)}
    ref = HunyuanVideoAdapter().reference_kwargs(generation, latents, text, torch.tensor([999.0]))
    assert ref["hidden_states"] is latents and ref["encoder_hidden_states"] is text["encoder_hidden_states"]
    assert ref["guidance"].shape == (1,) and ref["timestep"].dtype == torch.bfloat16
    assert ref["return_dict"] is False and generation["guidance"].shape == (2,)  # the caller's kwargs untouched


@pytest.mark.parametrize("family", ["cogvideox", *FAMILIES])
def test_a_failing_install_is_rolled_back(family, monkeypatch):
    """If setting a processor fails half way, the layers already swapped get their originals back."""
    pipe = tiny_pipeline(family, **({"num_layers": 4} if family == "cogvideox" else {}))
    adapter = vwarper.get_adapter(pipe.transformer)
    layers = adapter.attention_layers(pipe.transformer)
    originals = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]

    def broken(processor):
        raise RuntimeError("set_processor failed")

    monkeypatch.setattr(layers[-1], "set_processor", broken)
    with pytest.raises(RuntimeError, match="set_processor failed"):
        adapter.install(pipe.transformer, router=None)
    assert adapter.is_installed(pipe.transformer) == 0
    assert [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")] == originals


@pytest.mark.parametrize("family", ["cogvideox", *FAMILIES])
def test_a_custom_attention_processor_is_refused(family, subject):
    pipe = tiny_pipeline(family, **({"num_layers": 4} if family == "cogvideox" else {}))
    layers = vwarper.get_adapter(pipe.transformer).attention_layers(pipe.transformer)
    stock = layers[1].processor

    class MyProcessor:  # e.g. a user's attention patch
        def __call__(self, *args, **kwargs):
            return stock(*args, **kwargs)

    layers[1].set_processor(MyProcessor())
    with pytest.raises(vwarper.ConfigError, match=f"layer 1 uses MyProcessor.*{type(stock).__name__}"):
        vwarper.inject(pipe, subject).__enter__()
    assert isinstance(layers[1].processor, MyProcessor) and hook_count(pipe) == 0


def test_generation_routes_only_the_layers_it_needs(fpipe, subject):
    """Joint attention (HunyuanVideo) reads text scores in every fg layer; Wan reads them in attn2, so
    its attn1 layers are routed only where match or warp features are needed."""
    config = vwarper.WarpConfig(warp_steps=(2, 3), warp_layers=(3, 4), match_layer=1)
    _, session = generate(fpipe, subject, config)
    routed = {(s, layer) for (branch, s, layer) in session.calls if branch == "generation"}
    if vwarper.get_adapter(fpipe.transformer).text_attention_outside:
        assert routed == {(1, 1), (2, 1), (2, 3), (2, 4), (3, 3), (3, 4)}  # match at 1-2, warp at 2-3
    else:
        assert {layer for s, layer in routed if s == 0} == set(range(6))  # fg scores from every layer
