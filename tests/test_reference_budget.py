"""The reference branch costs only what V-Warper uses: needed steps, layers up to the deepest needed."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import run

import vwarper_hooks as vwarper


def test_reference_forward_runs_only_needed_steps_and_layers(pipe, subject):
    config = vwarper.WarpConfig(warp_steps=(3, 5), warp_layers=(20, 29), match_layer=12, mask=False)
    counts: Counter[tuple[str, int | None, int]] = Counter()
    with vwarper.inject(pipe, subject, config) as session:

        def route():
            return session.router.route

        handles = [
            block.attn1.register_forward_pre_hook(
                lambda module, args, i=i: counts.update([(route().branch or "other", route().step, i)])
            )
            for i, block in enumerate(pipe.transformer.transformer_blocks)
        ]
        try:
            run(pipe, num_inference_steps=8)
        finally:
            for handle in handles:
                handle.remove()
    reference = {(step, layer) for (branch, step, layer) in counts if branch == "reference"}
    # match features at steps 2..4 (t-1 for t in 3..5), values at 3..5
    assert {step for step, _ in reference} == {2, 3, 4, 5}
    assert max(layer for step, layer in reference if step == 2) == 12  # only the match layer needed
    assert max(layer for _, layer in reference) == 29  # layers 30-41 never run for the reference
    assert all(n == 1 for (branch, _, _), n in counts.items() if branch == "reference")
    generation = Counter(step for (branch, step, _) in counts if branch == "generation")
    assert generation == {step: 42 for step in range(8)}
    # inversion ran once, before the first step, full depth, up to step 2 only: steps 0-1 are never read
    assert sum(n for (branch, _, _), n in counts.items() if branch == "internal") == 6 * 42


def test_no_reference_branch_without_warping(pipe, subject):
    seen = []
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)) as session:
        handle = pipe.transformer.register_forward_pre_hook(lambda *a: seen.append(session.router.route.branch))
        try:
            out = run(pipe, num_inference_steps=4)
        finally:
            handle.remove()
    assert seen == ["generation"] * 4 and torch.isfinite(out).all()  # no reference or inversion pass
    assert vwarper.reference_cache(subject).misses == 0


def test_diagnostics_leave_the_device_only_when_read(pipe, subject, monkeypatch):
    """No device-to-host copy of flows or masks inside the denoising loop: copied when first read."""
    from vwarper_hooks.fine.diagnostics import StepDiagnostics

    copies: list[int] = []
    original = StepDiagnostics.to_cpu
    monkeypatch.setattr(StepDiagnostics, "to_cpu", lambda self: copies.append(self.step) or original(self))
    config = vwarper.WarpConfig(warp_steps=(1, 3))
    with vwarper.inject(pipe, subject, config) as session:
        run(pipe, num_inference_steps=5)
        assert copies == []
        first = session.diagnostics
        assert sorted(copies) == [1, 2, 3] and all(d.flow.dtype == torch.int32 for d in first.values())
        session.diagnostics  # noqa: B018 - a second read copies nothing again
        assert sorted(copies) == [1, 2, 3]
        assert first[2].mask.shape == first[2].grid


def test_reference_features_are_freed_after_their_last_use(pipe, subject):
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2))) as session:
        run(pipe, num_inference_steps=5)
        # steps 3-4 need no reference values or match features: nothing of them stays alive
        run_state = session.router.run
        mine = run_state.subjects[0]
        assert run_state.warp_values == {} and run_state.gen_match is None
        assert mine.ref_values == {} and mine.ref_match == []


def test_a_clipped_warp_window_is_logged(pipe, subject, caplog):
    with caplog.at_level("WARNING", logger="vwarper_hooks.fine.session"):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(0, 6), mask=False)):
            run(pipe, num_inference_steps=4)
            run(pipe, num_inference_steps=4)
    assert "warp steps 0, 4-6 dropped" in caplog.text  # ranges, not every step number
    assert caplog.text.count("dropped") == 1  # once per inject, not once per call


def test_prompt_embeds_after_a_prompt_do_not_reuse_old_token_positions(pipe, subject):
    """The text encoder does not run for prompt_embeds: the subject token cannot be located."""
    embeds, negative = pipe.encode_prompt("a photo of a <clock> clock", "", device="cpu",
                                          max_sequence_length=pipe.transformer.config.max_text_seq_length)
    kwargs = dict(prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2))):
        run(pipe, num_inference_steps=3)  # finds the token in the prompt
        with pytest.raises(vwarper.SubjectTokenError, match="prompt_embeds"):
            run(pipe, num_inference_steps=3, **kwargs)


def test_two_prompts_without_guidance_are_not_taken_for_a_cfg_pair(pipe, subject):
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2), mask=False)):
        with pytest.raises(vwarper.VwarperError, match="one video per call"):
            run(pipe, prompt=["a <clock> clock", "a <clock> clock at night"], negative_prompt=None,
                guidance_scale=1.0, num_inference_steps=3)
