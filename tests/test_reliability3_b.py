"""Reliability round 3 (issue 19, items 2-5): one validation path for `inject` and `override`, the image
inputs people pass in Python, one pipeline call at a time, and stable photo choice among identical photos."""

from __future__ import annotations

import pytest

import vwarper_hooks as vwarper
from vwarper_hooks import guard
from vwarper_hooks.subject import activate

SMALL = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2))


# ----------------------------------------------------------------- item 2: one validation path
def test_override_runs_the_checks_inject_runs(pipe, clock_image):
    a = vwarper.Subject.from_images([clock_image] * 2, "<clock>", "clock")
    b = vwarper.Subject.from_images([clock_image], "<dog>", "dog")
    with vwarper.inject(pipe, [a, b], SMALL) as session:
        with pytest.raises(vwarper.ConfigError, match="injector='value_warp' with several subjects"):
            session.override(injector="kv_replace").__enter__()
        with pytest.raises(vwarper.ConfigError, match="reference_image below 2"):
            session.override(reference_image=2).__enter__()
        assert session.config.injector == "value_warp" and session.config.reference_image == 0


def test_a_photo_window_past_the_last_photo_is_refused_before_anything_runs(pipe, clock_image):
    three = vwarper.Subject.from_images([clock_image] * 3, "<clock>", "clock")
    with pytest.raises(vwarper.ConfigError, match=r"at most 1 photos from reference_image=2 on .* num_references=3"):
        vwarper.inject(pipe, three, SMALL.updated(reference_image=2, num_references=3)).__enter__()
    assert not guard.is_active(pipe)
    with vwarper.inject(pipe, three, SMALL.updated(num_references=5)) as session:  # from photo 0: all three
        with pytest.raises(vwarper.ConfigError, match="reference_image=1 on"):
            session.override(reference_image=1).__enter__()


def test_a_subjects_fit_is_checked_once_per_inject(pipe, clock_image, monkeypatch):
    embedding = pipe.text_encoder.get_input_embeddings().weight[0].detach().clone()
    subject = vwarper.Subject("<clock-vw>", "clock", [clock_image], token_embedding=embedding)
    calls = []

    def counting(pipe, subject):
        calls.append(subject.token)
        return original(pipe, subject)

    original = activate.fit_problems
    monkeypatch.setattr(activate, "fit_problems", counting)
    monkeypatch.setattr(guard, "fit_problems", counting)
    with vwarper.inject(pipe, subject, SMALL):
        pass
    assert calls == ["<clock-vw>"]
