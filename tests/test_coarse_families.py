"""Stage 1 is family-free: every family besides CogVideoX (all flow matching) trains with the flow-matching
objective, exactly like CogVideoX with its DDPM one, and what they train works inside `inject`."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import DATA, hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.coarse.objective import DdpmObjective, FlowMatchingObjective, objective_for
from vwarper_hooks.porting.families import OTHER_FAMILIES
from vwarper_hooks.subject.lora import lora_layer_count
from vwarper_hooks.testing import tiny_call_kwargs, tiny_pipeline

TOKEN = "<sks-fam>"
IMAGES = sorted((DATA / "clock").glob("*.jpg"))
FAST = dict(rank=2, height=32, width=32, mixed_precision="no", gradient_checkpointing=False)


def _requires_grad(pipe) -> list[bool]:
    return [p.requires_grad for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()]


@pytest.fixture(scope="module", params=OTHER_FAMILIES)
def trained(request):
    """(family, pipe, subject, stock output before training, requires_grad flags before, tokenizer before)."""
    pipe = tiny_pipeline(request.param)
    stock = run(pipe)  # also lets transformers add its permanent hooks to Llama before we count
    hooks, grads, tokenizer = hook_count(pipe), _requires_grad(pipe), pipe.tokenizer
    subject = vwarper.train_subject(pipe, IMAGES, TOKEN, "clock", vwarper.CoarseConfig(steps=2, **FAST),
                                    progress=False)
    return request.param, pipe, subject, stock, (hooks, grads, tokenizer)


def test_lora_on_key_value_and_output_of_every_attention_layer_never_the_query(trained):
    _, pipe, subject, *_ = trained
    adapter = vwarper.get_adapter(pipe.transformer)
    names = {id(m): n for n, m in pipe.transformer.named_modules()}
    expected = set()
    for attn in adapter.attention_layers(pipe.transformer):
        projections = ["to_k", "to_v"] + (["to_out.0"] if getattr(attn, "to_out", None) is not None else [])
        expected |= {f"{names[id(attn)]}.{p}" for p in projections}
    touched = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in subject.lora}
    assert touched == expected and not any("to_q" in name for name in touched)
    assert all(v.shape[0 if ".lora_A." in k else 1] == 2 for k, v in subject.lora.items())
    assert subject.token_embedding.shape == (pipe.text_encoder.get_input_embeddings().embedding_dim,)


def test_losses_are_finite_and_the_pipe_is_left_as_found(trained):
    _, pipe, subject, stock, (hooks, grads, tokenizer) = trained
    losses = subject.info["losses"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert subject.info["training"]["height"] == subject.info["training"]["width"] == 32
    assert pipe.tokenizer is tokenizer and TOKEN not in tokenizer.get_vocab()
    assert lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == hooks
    assert _requires_grad(pipe) == grads and not pipe.transformer.training
    assert all(p.grad is None for p in pipe.transformer.parameters())
    assert torch.equal(run(pipe), stock)


def test_the_trained_subject_runs_inside_inject(trained):
    _, pipe, subject, stock, (hooks, *_) = trained
    kwargs = tiny_call_kwargs(prompt=f"a photo of a {TOKEN} clock", num_inference_steps=3)
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2))) as session:
        frames = pipe(**kwargs).frames
        assert lora_layer_count(pipe.transformer) == len(subject.lora) // 2
    assert torch.isfinite(frames).all() and sorted(session.diagnostics) == [1, 2]
    assert hook_count(pipe) == hooks and torch.equal(run(pipe), stock)


def test_the_objective_follows_the_scheduler_not_the_family():
    assert isinstance(objective_for(tiny_pipeline("wan").scheduler), FlowMatchingObjective)  # UniPC, flow sigmas
    assert isinstance(objective_for(tiny_pipeline("hunyuan_video").scheduler), FlowMatchingObjective)
    ddpm = objective_for(tiny_pipeline("cogvideox", num_layers=1).scheduler)
    assert isinstance(ddpm, DdpmObjective) and ddpm.prediction_type == "v_prediction"


def test_flow_matching_interpolates_and_targets_the_velocity():
    objective = FlowMatchingObjective(num_train_timesteps=1000)
    t = objective.draw(3, torch.Generator().manual_seed(0))
    s = torch.rand(3, generator=torch.Generator().manual_seed(0))  # s ~ U(0, 1) from the run's generator
    assert torch.equal(t, s * 1000) and bool(((t >= 0) & (t < 1000)).all())
    x0, noise = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    noisy, target = objective.noisy_and_target(x0, noise, t)
    level = (t / 1000).view(-1, 1, 1, 1, 1)
    assert torch.allclose(noisy, (1 - level) * x0 + level * noise) and torch.equal(target, noise - x0)
    clean, _ = objective.noisy_and_target(x0, noise, torch.tensor([0.0, 1000.0, 500.0]))
    assert torch.equal(clean[0], x0[0]) and torch.equal(clean[1], noise[1])


def test_a_scheduler_without_a_known_objective_is_refused_by_capability():
    from diffusers import EulerDiscreteScheduler

    pipe = tiny_pipeline("cogvideox", num_layers=2)
    pipe.scheduler = EulerDiscreteScheduler(prediction_type="sample")
    with pytest.raises(vwarper.ConfigError) as info:
        vwarper.train_subject(pipe, IMAGES, TOKEN, "clock", vwarper.CoarseConfig(steps=1, **FAST), progress=False)
    message = str(info.value)
    assert "EulerDiscreteScheduler" in message and "'sample'" in message and "flow matching" in message
    assert "CogVideoX" not in message and "cogvideox" not in message  # a capability, not a family
    assert lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0


def test_progress_is_the_pipelines_own_bar():
    pipe = tiny_pipeline("wan")
    out = io.StringIO()
    pipe.set_progress_bar_config(file=out, disable=False, ascii=True)
    vwarper.train_subject(pipe, IMAGES, TOKEN, "clock", vwarper.CoarseConfig(steps=2, **FAST))
    shown = out.getvalue()
    assert "coarse stage" in shown and "2/2" in shown and "loss=" in shown
