"""Reliability round 3 (issue 19, items 1 and 6): nothing non-finite is used silently (inversion cache,
cached features, hand-edited subject.json), and the command line's files and messages."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA
from safetensors import safe_open
from safetensors.torch import save_file

import vwarper_hooks as vwarper
from vwarper_hooks.apps.cli import main
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline, tiny_pipeline

SMALL = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2), mask=False)


@pytest.fixture(scope="module")
def small():
    return tiny_cogvideox_pipeline(num_layers=6)


def _latents(pipe, subject, config=SMALL) -> torch.Tensor:
    with vwarper.inject(pipe, subject, config):
        return pipe(**tiny_call_kwargs(num_inference_steps=3, output_type="latent")).frames


def _fresh(clock_image, inversions=None) -> vwarper.Subject:
    subject = vwarper.Subject.from_images([clock_image], token="<clock>", class_word="clock")
    subject.inversion_dir = inversions
    return subject


def test_an_inversion_cache_file_holding_nan_is_discarded_and_recomputed(small, clock_image, tmp_path, caplog):
    plain = _latents(small, _fresh(clock_image, tmp_path))
    (file,) = tmp_path.glob("*.safetensors")
    with safe_open(str(file), framework="pt") as f:  # valid safetensors, the right key, NaN values
        meta, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    save_file({**tensors, "trajectory": torch.full_like(tensors["trajectory"], float("nan"))}, str(file), meta)
    subject = _fresh(clock_image, tmp_path)
    cache = vwarper.reference_cache(subject)
    with caplog.at_level(logging.WARNING, logger="vwarper_hooks"):
        again = _latents(small, subject)
    assert (cache.disk_hits, cache.misses) == (0, 1) and torch.equal(again, plain)
    assert "discarding inversion cache" in caplog.text and "NaN or inf (e.g. trajectory)" in caplog.text
    with safe_open(str(file), framework="pt") as f:
        assert torch.isfinite(f.get_tensor("trajectory")).all()  # the recomputed trajectory replaced it


def test_cached_reference_features_holding_nan_are_recomputed(small, clock_image, caplog):
    config = SMALL.updated(cache_reference_features=True)
    subject = _fresh(clock_image)
    first = _latents(small, subject, config)
    (state,) = vwarper.reference_cache(subject)._states.values()
    key = sorted(state.features)[0]
    state.features[key] = torch.full_like(state.features[key], float("inf"))
    with caplog.at_level(logging.WARNING, logger="vwarper_hooks"):
        again = _latents(small, subject, config)
    assert "cached reference feature(s) holding NaN or inf" in caplog.text
    assert torch.equal(again, first) and torch.isfinite(state.features[key]).all()


@pytest.fixture(scope="module")
def saved(small, tmp_path_factory):
    fast = vwarper.CoarseConfig(steps=1, rank=2, mixed_precision="no", gradient_checkpointing=False, height=32,
                                width=32)
    subject = vwarper.train_subject(small, sorted((DATA / "clock").glob("*.jpg")), "<sks-k>", "clock", fast,
                                    progress=False)
    return subject.save(tmp_path_factory.mktemp("subjects") / "clock")


def _edit(manifest: dict, where: str, value) -> None:
    *path, last = where.split(".")
    for part in path:
        manifest = manifest[part]
    manifest[last] = value


@pytest.mark.parametrize(("where", "value", "match"), [
    ("lora.alpha", 1e300, r"Expected a LoRA alpha between 0.0002 and 20000 at rank 2 .* got alpha 1e\+300"),
    ("lora.alpha", 3.0, r"Expected lora.alpha in subject.json to be what .* written with \(2.0\), but got 3.0"),
    ("lora.targets", "reversed", r"Expected lora.targets in subject.json to be what"),
    ("token", "<sks-j>", r"Expected token in subject.json to be the one .* \('<sks-k>'\), but got '<sks-j>'"),
    ("token_embedding_dim", 0, r"token_embedding_dim: Expected token_embedding_dim greater than or equal to 1"),
    ("token_embedding_dim", None, r"Expected token_embedding_dim in subject.json for the recorded token_embedding"),
    ("image_sha256", "short", r"Expected one image_sha256 per image, but got 3 images and 2 hashes"),
])
def test_a_hand_edited_subject_json_is_refused_at_load(saved, tmp_path, where, value, match):
    root = shutil.copytree(saved, tmp_path / "copy")
    manifest = json.loads((root / "subject.json").read_text())
    if value == "reversed":
        value = manifest["lora"]["targets"][::-1]  # the same modules: the tensors alone would not tell
    elif value == "short":
        value = manifest["image_sha256"][:2]
    _edit(manifest, where, value)
    (root / "subject.json").write_text(json.dumps(manifest))
    with pytest.raises(vwarper.SubjectIntegrityError, match=match):
        vwarper.Subject.load(root)


def test_a_lora_scale_that_overflows_the_model_dtype_is_refused(clock_image):
    from vwarper_hooks.subject.activate import fit_problems
    from vwarper_hooks.subject.lora import lora_shapes, lora_targets

    pipe = tiny_cogvideox_pipeline(num_layers=2)
    shapes = lora_shapes(pipe.transformer, lora_targets(pipe.transformer), 2)
    subject = vwarper.Subject("<clock>", "clock", [clock_image], lora_rank=2, lora_alpha=2000.0,
                              lora={key: torch.full(shape, 10.0) for key, shape in shapes.items()})
    assert fit_problems(pipe, subject) == []  # float32: B @ A x scale 1000 = 200000 fits
    pipe.transformer.to(torch.float16)
    with pytest.raises(vwarper.ConfigError, match=r"fit this model's torch.float16 \(at most 65504\), .* to 200000"):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)):
            pass
    subject.lora_alpha = 2e300  # in any dtype: no sane scale
    with pytest.raises(vwarper.SubjectError, match=r"Expected a LoRA alpha between 0.0002 and 20000 at rank 2"):
        subject.check()
    with pytest.raises(vwarper.ConfigError, match=r"Expected a LoRA alpha between 0.0002 and 20000 at rank 2"):
        vwarper.CoarseConfig(rank=2, alpha=2e300)  # refused before training, not at the save after it


@pytest.fixture(scope="module")
def fine_subject(tmp_path_factory):
    """A fine-stage-only subject (no training needed) whose token the tiny tokenizer knows."""
    folder = tmp_path_factory.mktemp("fine") / "clock"
    return vwarper.Subject.from_images([DATA / "clock" / "00.jpg"], token="<clock>", class_word="clock").save(folder)


TERMINATED = """
import os, signal, sys
from vwarper_hooks.apps import visualize as vis
from vwarper_hooks.apps.cli import main

real = vis.write_video

def write_then_terminated(*args, **kwargs):  # SIGTERM while the video sits in its staging folder
    path = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return path

vis.write_video = write_then_terminated
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_generate_leaves_no_temporary_folders(tmp_path, fine_subject):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for stale in (f".v.tmp-{dead.stdout.strip()}-k1ll3d", ".v.tmp-0ld4vers"):  # a killed run's, an older version's
        (run / stale).mkdir()
        (run / stale / "v.gif").write_bytes(b"partial")
    args = ["generate", "--model", "tiny", "--subject", str(fine_subject), "--prompt", "a <clock> clock",
            "--frames", "9", "--steps", "5", "--out", str(run / "v.mp4"), "--quiet"]
    done = subprocess.run([sys.executable, "-c", TERMINATED, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: interrupted (SIGTERM)"
    assert list(run.iterdir()) == []  # neither this run's staging folder nor the stale ones


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Expected") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("flag", "inside"), [("--out", "images/v.mp4"), ("--out", "v.mp4"),
                                              ("--panels", "images/panels")])
def test_generate_refuses_outputs_inside_a_subject(capsys, tmp_path, fine_subject, flag, inside):
    subject = shutil.copytree(fine_subject, tmp_path / "clock")
    files = sorted(p.relative_to(subject).as_posix() for p in subject.rglob("*"))
    argv = ["generate", "--model", str(tmp_path / "never-loaded"), "--subject", str(subject), "--prompt",
            "a <clock> clock", "--out", str(tmp_path / "v.mp4"), flag, str(subject / inside)]
    assert main(argv) == 3
    assert f"Expected {flag} outside the subject directory" in _one_line_error(capsys)
    assert sorted(p.relative_to(subject).as_posix() for p in subject.rglob("*")) == files


def test_a_height_alone_off_a_local_models_token_grid_is_refused_before_loading(capsys, tmp_path, fine_subject,
                                                                                 monkeypatch):
    tiny_pipeline("cogvideox").save_pretrained(tmp_path / "model")  # a local pipeline folder
    capsys.readouterr()
    monkeypatch.setattr("vwarper_hooks.apps.cli.common.load_pipeline", lambda *a, **k: pytest.fail("loaded"))
    argv = ["generate", "--model", str(tmp_path / "model"), "--subject", str(fine_subject), "--prompt",
            "a <clock> clock", "--height", "30", "--out", str(tmp_path / "v.mp4")]
    assert main(argv) == 3
    err = _one_line_error(capsys)
    assert "divisible by 16x16 pixels (one token of" in err and "but got 30xdefault. Pass e.g. 16xdefault." in err


def test_user_latents_with_the_wrong_channel_count_name_the_latents_argument(small, clock_image):
    channels = small.vae.config.latent_channels
    latents = torch.randn(1, 2, channels + 1, 4, 4)  # 5 frames of 32 x 32: 2 latent frames of 4 x 4
    want = rf"Expected the pipeline's latents argument to have shape \(1, 2, {channels}, 4, 4\) .* but got latents"
    with pytest.raises(vwarper.VwarperError, match=want):
        with vwarper.inject(small, _fresh(clock_image), SMALL):
            small(**tiny_call_kwargs(num_inference_steps=3, output_type="latent", latents=latents))


def test_frames_and_reference_panels_are_numbered_and_captioned(small, clock_image, tmp_path, monkeypatch):
    from vwarper_hooks.apps import figures
    from vwarper_hooks.apps.generate import generate_video
    from vwarper_hooks.apps.panels import write_panels

    drawn, save = {}, figures.save

    def record(fig, path):
        ax = fig.axes[0]
        drawn[Path(path).name] = (ax.get_title(), [t.get_text() for t in ax.texts],
                                  [t.get_text() for t in ax.get_xticklabels()])
        return save(fig, path)

    monkeypatch.setattr(figures, "save", record)
    generation = generate_video(small, _fresh(clock_image), "a <clock> clock", frames=9, steps=3, guidance=6.0,
                                seed=0, height=32, width=32, config=SMALL)
    pngs, _ = write_panels(tmp_path, generation)
    title, numbers, _ = drawn["frames.png"]
    assert title == "Generated video: 9 frames of 32x32 px" and numbers == [str(i) for i in range(9)]
    title, _, photos = drawn["reference.png"]
    assert title.startswith("Reference photos read: 1,") and photos == ["<clock>\nphoto 0"]
    assert all(pngs[name].is_file() for name in ("frames", "reference"))
