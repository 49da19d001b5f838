"""The user's LoRAs are theirs: each case either works with the pipe as it was afterwards, or is refused
up front (decided per case; README, "Your own LoRAs")."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.subject.lora import lora_layer_count
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

WARP_OFF = vwarper.WarpConfig(warp=False)  # the coarse stage alone exercises the LoRA handling


@pytest.fixture(scope="module")
def setup():
    pipe = tiny_cogvideox_pipeline(num_layers=4)
    coarse = vwarper.CoarseConfig(steps=1, rank=2, mixed_precision="no", gradient_checkpointing=False,
                                  height=32, width=32)
    image = Image.new("RGB", (32, 32), (200, 80, 40))
    subject = vwarper.train_subject(pipe, [image] * 3, token="<vw-t>", class_word="clock", config=coarse,
                                    progress=False)
    return pipe, subject


def _user_lora(transformer, targets, name="user"):
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=targets, init_lora_weights=False),
                            adapter_name=name)


def _state(transformer):
    return {k: v.clone() for k, v in transformer.state_dict().items()}


def _frames(pipe):
    return pipe(**tiny_call_kwargs(num_inference_steps=2)).frames


def _clean(transformer):
    if getattr(transformer, "peft_config", None):
        transformer.unload_lora()
    assert lora_layer_count(transformer) == 0


def _inject_once(pipe, subject, inside=None):
    with vwarper.inject(pipe, subject, WARP_OFF):
        if inside is not None:
            inside(pipe.transformer)
        return pipe(**tiny_call_kwargs(num_inference_steps=2, prompt="a <vw-t> clock")).frames


def test_a_lora_on_some_projections_leaves_no_empty_wrappers(setup):
    pipe, subject = setup
    _user_lora(pipe.transformer, ["to_q"])  # ours goes on to_k, to_v, to_out.0
    try:
        before, frames = _state(pipe.transformer), _frames(pipe)
        _inject_once(pipe, subject)
        after = _state(pipe.transformer)
        assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
        assert torch.equal(_frames(pipe), frames)
    finally:
        _clean(pipe.transformer)


def test_a_disabled_lora_stays_off_and_the_subjects_is_on(setup):
    pipe, subject = setup
    plain = _inject_once(pipe, subject)
    _user_lora(pipe.transformer, ["to_k", "to_v"])
    pipe.transformer.disable_lora()
    try:
        before, frames = _state(pipe.transformer), _frames(pipe)
        assert torch.equal(_inject_once(pipe, subject), plain)  # ours active, theirs still off
        after = _state(pipe.transformer)
        assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
        assert torch.equal(_frames(pipe), frames)  # still disabled afterwards
    finally:
        _clean(pipe.transformer)


def test_a_lora_loaded_inside_the_block_survives_it(setup):
    pipe, subject = setup
    try:
        _inject_once(pipe, subject, inside=lambda t: _user_lora(t, ["to_q"]))
        assert list(pipe.transformer.peft_config) == ["user"]
        assert lora_layer_count(pipe.transformer) == 4  # to_q of each of the 4 layers, nothing of ours
    finally:
        _clean(pipe.transformer)


def test_a_fused_lora_is_refused_up_front(setup):
    pipe, subject = setup
    _user_lora(pipe.transformer, ["to_k"])
    pipe.transformer.fuse_lora()
    try:
        before = _state(pipe.transformer)
        with pytest.raises(vwarper.ConfigError, match="unfuse_lora"):
            _inject_once(pipe, subject)
        after = _state(pipe.transformer)
        assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    finally:
        pipe.transformer.unfuse_lora()
        _clean(pipe.transformer)
