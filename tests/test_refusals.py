"""Settings that would silently do the wrong thing are refused (issue 13, item 6): thresholds that switch
the method off, a warp window outside the run, and a subject token only in the negative prompt."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.apps.cli import main

SMALL = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2), mask=False)


@pytest.mark.parametrize(("fields", "name"), [
    (dict(tau_fg=1.0), "tau_fg"), (dict(tau_fg=1.5), "tau_fg"), (dict(tau_fg=-0.1), "tau_fg"),
    (dict(tau_fg=math.nan), "tau_fg"), (dict(tau_cc=0.0), "tau_cc"), (dict(tau_cc=-1.0), "tau_cc"),
])
def test_thresholds_that_switch_the_method_off_are_refused(fields, name):
    with pytest.raises(vwarper.ConfigError) as info:
        vwarper.WarpConfig(**fields)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(f"{name}: Expected {name}")
    vwarper.WarpConfig(tau_fg=0.0, tau_cc=1e-6)  # the edges that still warp
    with pytest.raises(vwarper.ConfigError, match="tau_cc: Expected a finite tau_cc, but got inf"):
        vwarper.WarpConfig(tau_cc=math.inf)


def test_a_warp_window_entirely_outside_the_run_is_refused_at_its_start(pipe, subject):
    stock = run(pipe, num_inference_steps=5)
    with vwarper.inject(pipe, subject, SMALL.updated(warp_steps=(6, 8))) as session:
        with pytest.raises(vwarper.ConfigError, match=r"warp_steps: Expected warp_steps to overlap this run's "
                                                      r"steps 1-4 .* but got \(6, 8\)"):
            run(pipe, num_inference_steps=5)
        with session.override(warp_steps=(0, 0)), pytest.raises(vwarper.ConfigError, match="warp_steps"):
            run(pipe, num_inference_steps=5)  # step 0 alone: nothing to match from
        with session.override(warp_steps=(3, 9)):
            run(pipe, num_inference_steps=5)  # partly inside: warps 3-4 (and warns)
    assert hook_count(pipe) == 0 and torch.equal(run(pipe, num_inference_steps=5), stock)


def test_generate_refuses_too_few_steps_for_warping_before_loading(capsys, tmp_path):
    argv = ["generate", "--model", "no/such-model", "--subject", str(tmp_path), "--prompt", "a <sks-m> clock",
            "--steps", "3", "--out", str(tmp_path / "v.gif")]
    assert main(argv) == 3
    assert "--steps of at least 4" in capsys.readouterr().err
    from vwarper_hooks.apps import benchmark

    assert benchmark.main(["--spec", str(tmp_path / "spec.json"), "--model", "no/such-model", "--out",
                           str(tmp_path / "run"), "--steps", "3"]) == 3
    assert "warp_steps" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_subject_token_only_in_the_negative_prompt_is_refused(pipe, subject):
    with vwarper.inject(pipe, subject, SMALL.updated(mask=True)):
        with pytest.raises(vwarper.SubjectTokenError, match="only in the negative prompt"):
            run(pipe, prompt="a photo of a clock on the beach", negative_prompt="a <clock> clock",
                num_inference_steps=3)
    assert hook_count(pipe) == 0
