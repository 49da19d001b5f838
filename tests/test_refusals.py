"""Settings that would silently do the wrong thing are refused (issue 13, items 3 and 6): a subject
trained for another transformer config (with an explicit escape hatch), thresholds that switch the
method off, a warp window outside the run, and a subject token only in the negative prompt."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch
from conftest import DATA, hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.apps.cli import main
from vwarper_hooks.subject.lora import lora_layer_count
from vwarper_hooks.testing import tiny_cogvideox_pipeline, tiny_cogvideox_transformer

FAST = dict(rank=2, mixed_precision="no", gradient_checkpointing=False, height=32, width=32)
IMAGES = sorted((DATA / "clock").glob("*.jpg"))
SMALL = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2), mask=False)


def other_config_pipeline():
    """The tiny pipeline with a transformer of another config whose weights have the very same shapes."""
    other = tiny_cogvideox_pipeline()
    other.transformer = tiny_cogvideox_transformer(norm_eps=1e-6)
    return other


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    subject = vwarper.train_subject(pipe, IMAGES, "<sks-m>", "clock", vwarper.CoarseConfig(steps=1, **FAST),
                                    progress=False)
    return subject.save(tmp_path_factory.mktemp("subjects") / "clock")


def test_a_subject_for_another_config_is_refused_naming_both_configs(saved):
    other = other_config_pipeline()
    stock = run(other)
    with pytest.raises(vwarper.SubjectMismatchError, match=r"norm_eps 1e-05 there, 1e-06 here") as info:
        vwarper.Subject.load(saved, pipe=other)
    assert "allow_config_mismatch=True" in str(info.value)
    subject = vwarper.Subject.load(saved)  # without a pipe only the files are checked
    with pytest.raises(vwarper.ConfigError, match=r"trained for another config .* norm_eps 1e-05 there"):
        with vwarper.inject(other, subject, SMALL):
            pass
    assert lora_layer_count(other.transformer) == 0 and hook_count(other) == 0
    assert torch.equal(run(other), stock)


def test_allow_config_mismatch_only_warns(saved, caplog):
    other = other_config_pipeline()
    with caplog.at_level(logging.WARNING, logger="vwarper_hooks"):
        subject = vwarper.Subject.load(saved, pipe=other, allow_config_mismatch=True)
        with vwarper.inject(other, subject, SMALL, allow_config_mismatch=True) as session:
            frames = run(other, prompt="a <sks-m> clock", num_inference_steps=3)
    assert torch.isfinite(frames).all() and session.calls
    warnings = [r for r in caplog.records if "allow_config_mismatch=True" in r.getMessage()]
    assert len(warnings) == 2 and "norm_eps" in warnings[0].getMessage()


def test_an_older_subject_without_its_config_is_named_by_hash(saved, tmp_path):
    root = shutil.copytree(saved, tmp_path / "old")
    manifest = json.loads((root / "subject.json").read_text())
    del manifest["transformer_config"]  # written before the config itself was recorded
    (root / "subject.json").write_text(json.dumps(manifest))
    with pytest.raises(vwarper.SubjectMismatchError, match=r"sha256 [0-9a-f]{12}\), but got one .* only their hashes"):
        vwarper.Subject.load(root, pipe=other_config_pipeline())
    vwarper.Subject.load(root, pipe=tiny_cogvideox_pipeline())  # its own config: the hashes agree


@pytest.fixture(scope="module")
def other_saved(tmp_path_factory):
    """A subject trained on the other-config pipeline, saved: the tiny model (`--model tiny`) is not its own."""
    subject = vwarper.train_subject(other_config_pipeline(), IMAGES, "<sks-o>", "clock",
                                    vwarper.CoarseConfig(steps=1, **FAST), progress=False)
    return subject.save(tmp_path_factory.mktemp("subjects") / "other")


def _generate_other(other_saved, out, *extra: str) -> int:
    return main(["generate", "--model", "tiny", "--subject", str(other_saved), "--prompt", "a <sks-o> clock",
                 "--frames", "9", "--steps", "4", "--height", "32", "--width", "32", "--out", str(out), "--quiet",
                 *extra])


def test_generate_refuses_a_subject_for_another_config_with_one_line(other_saved, tmp_path, capsys):
    out = tmp_path / "video.gif"
    assert _generate_other(other_saved, out) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "norm_eps 1e-06 there, 1e-05 here" in err
    assert "--allow-config-mismatch" in err and not out.exists()


def test_generate_with_allow_config_mismatch_warns_once(other_saved, tmp_path, capsys):
    assert _generate_other(other_saved, tmp_path / "video.gif", "--no-warp", "--allow-config-mismatch") == 0
    assert list(tmp_path.glob("video.*"))  # the container write_video picks
    assert capsys.readouterr().err.count("Used anyway") == 1


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


def test_generate_refuses_too_few_steps_for_warping_before_loading(capsys, tmp_path, saved):
    argv = ["generate", "--model", "no/such-model", "--subject", str(saved), "--prompt", "a <sks-m> clock",
            "--steps", "3", "--out", str(tmp_path / "v.gif")]
    assert main(argv) == 3
    assert "--steps of at least 4" in capsys.readouterr().err
    from vwarper_hooks.apps import benchmark

    assert benchmark.main(["--spec", str(tmp_path / "spec.json"), "--model", "no/such-model", "--out",
                           str(tmp_path / "run"), "--steps", "3"]) == 3
    err = capsys.readouterr().err  # the runner's own flags, not WarpConfig fields
    assert "--steps of at least 4" in err and "--no-warp" in err and "WarpConfig" not in err
    assert not (tmp_path / "run").exists()


def test_a_subject_token_only_in_the_negative_prompt_is_refused(pipe, subject):
    with vwarper.inject(pipe, subject, SMALL.updated(mask=True)):
        with pytest.raises(vwarper.SubjectTokenError, match="only in the negative prompt"):
            run(pipe, prompt="a photo of a clock on the beach", negative_prompt="a <clock> clock",
                num_inference_steps=3)
    assert hook_count(pipe) == 0
