"""Wan 2.2 A14B's two experts: both routed, the reference branch and its inversion run the expert the
pipeline runs at each timestep (also when the warp window crosses the boundary), stage 1 trains the first."""

from __future__ import annotations

import pytest
import torch

import vwarper_hooks as vwarper
from vwarper_hooks.contract.experts import expert_for, experts
from vwarper_hooks.fine.capture import Branch
from vwarper_hooks.porting.tiny_models import tiny_pipeline, tiny_wan_transformer
from vwarper_hooks.testing import tiny_call_kwargs

BOUNDARY = 875.0  # 0.875 x 1000: of 5 steps, 0-1 run transformer, 2-4 transformer_2
CONFIG = vwarper.WarpConfig(warp_steps=(1, 3), match_layer=1, warp_layers=(3, 4))  # crosses the boundary


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("wan22")


@pytest.fixture()
def subject(clock_image):
    return vwarper.Subject.from_images([clock_image], token="<clock>", class_word="clock")


def _record(pipe, session_box):
    """Pre-hooks on both experts: (expert, timestep, branch) of every forward. They run before the session's
    own pre-hook, so the pipeline's forwards show no branch (None) and ours show theirs."""
    seen = []

    def hook(name):
        def record(module, args, kwargs):
            session = session_box[0]
            branch = session.router.route.branch if session is not None else None
            seen.append((name, float(kwargs["timestep"].flatten()[0]), branch))

        return record

    handles = [pipe.transformer.register_forward_pre_hook(hook("high"), with_kwargs=True),
               pipe.transformer_2.register_forward_pre_hook(hook("low"), with_kwargs=True)]
    return seen, handles


def test_the_adapter_reads_the_pipelines_boundary(pipe):
    adapter = vwarper.get_adapter(pipe.transformer)
    assert adapter.expert_boundary(pipe) == BOUNDARY
    assert experts(adapter, pipe) == [pipe.transformer, pipe.transformer_2]
    assert expert_for(adapter, pipe, 875.0) is pipe.transformer
    assert expert_for(adapter, pipe, 874.9) is pipe.transformer_2
    assert adapter.expert_boundary(tiny_pipeline("wan")) is None


def test_every_forward_of_every_branch_runs_the_pipelines_expert(pipe, subject):
    box = [None]
    seen, handles = _record(pipe, box)
    try:
        with vwarper.inject(pipe, subject, CONFIG) as session:
            box[0] = session
            pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent"))
    finally:
        for handle in handles:
            handle.remove()
    assert seen and all((name == "high") == (t >= BOUNDARY) for name, t, _ in seen)
    for branch in (None, Branch.REFERENCE, Branch.INTERNAL):  # None: the pipeline's own; INTERNAL: the inversion
        assert {name for name, _, b in seen if b is branch} == {"high", "low"}, branch
    reference_steps = {t for _, t, b in seen if b is Branch.REFERENCE}
    assert len(reference_steps) == 4  # steps 0-3: the match steps 0-2 and the warp steps 1-3
    assert sorted(session.diagnostics) == [1, 2, 3]  # step 1 on the high-noise expert, 2-3 on the low-noise one
    warped = {step for (kind, step, _), n in session.calls.items() if kind == "warp" and n}
    assert warped == {1, 2, 3}


def test_both_experts_are_stock_again_after_the_block(pipe, subject):
    before = pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent")).frames
    with vwarper.inject(pipe, subject, CONFIG):
        warped = pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent")).frames
    after = pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent")).frames
    assert torch.equal(before, after) and not torch.equal(before, warped)
    for expert in (pipe.transformer, pipe.transformer_2):
        assert not expert._forward_pre_hooks and not expert._forward_hooks
        assert vwarper.get_adapter(expert).is_installed(expert) == 0


def test_another_low_noise_expert_is_another_inversion(pipe, subject):
    other = tiny_pipeline("wan22")
    other.transformer = pipe.transformer  # the same first expert, another second one
    other.transformer_2 = tiny_wan_transformer(6, seed=7)
    for each in (pipe, other):
        with vwarper.inject(each, subject, CONFIG):
            each(**tiny_call_kwargs(num_inference_steps=5, output_type="latent"))
    assert vwarper.reference_cache(subject).misses == 2


def test_stage_one_trains_the_first_expert_on_its_own_timesteps(pipe, clock_image):
    box = [None]
    seen, handles = _record(pipe, box)
    low_weights = {k: v.clone() for k, v in pipe.transformer_2.state_dict().items()}
    try:
        subject = vwarper.train_subject(pipe, [clock_image] * 3, token="<sks>", class_word="clock",
                                        config=vwarper.CoarseConfig(steps=4, rank=2, batch_size=2, height=32, width=32))
    finally:
        for handle in handles:
            handle.remove()
    assert seen and all(name == "high" and t >= BOUNDARY for name, t, _ in seen)
    assert subject.lora and all(k.startswith("transformer.") for k in subject.lora)
    assert all(torch.equal(v, pipe.transformer_2.state_dict()[k]) for k, v in low_weights.items())
