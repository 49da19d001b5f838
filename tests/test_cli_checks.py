"""`vwarper train` / `generate` check every input before loading a model and exit 3 with one line;
a run writes all of its outputs or none; disk faults are input problems (exit 3), not bugs (exit 1)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vwarper_hooks
import vwarper_hooks as vwarper
from vwarper_hooks.apps.cli import main
from vwarper_hooks.apps.loading import probe_units
from vwarper_hooks.testing import tiny_pipeline
from vwarper_hooks.units import video_units

SAMPLES = Path(vwarper_hooks.__file__).parent / "data" / "clock"


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory) -> Path:
    """A fine-stage-only subject (no training needed) whose token the tiny tokenizer knows."""
    folder = tmp_path_factory.mktemp("subject") / "clock"
    vwarper.Subject.from_images([SAMPLES / "00.jpg"], token="<clock>", class_word="clock").save(folder)
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Expected") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("extra", "words"), [
    (["--frames", "0"], "--frames of at least 1"),
    (["--steps", "-1"], "--steps of at least 1"),
    (["--guidance", "nan"], "--guidance to be a finite number"),
    (["--guidance", "inf"], "--guidance to be a finite number"),
    (["--fps", "0"], "--fps of at least 1"),
    (["--seed", "-1"], "--seed between 0"),
    (["--seed", str(2**70)], "--seed between 0"),
    (["--height", "0", "--width", "32"], "--height of at least 1"),
    (["--device", "foo"], "torch device such as cpu"),
    (["--out", "{tmp}"], "a file name for --out"),
    (["--out", "{tmp}/file.txt/video.mp4"], "below the file"),
    (["--panels", "{tmp}/file.txt"], "a directory for --panels"),
    (["--out", "/proc/vwarper-test/video.mp4"], "a writable place for --out"),
])
def test_generate_refuses_bad_numbers_and_paths_before_loading(capsys, tmp_path, subject_dir, extra, words):
    (tmp_path / "file.txt").write_text("mine")
    model = str(tmp_path / "never-loaded")  # loading it would fail with another message
    argv = ["generate", "--model", model, "--subject", str(subject_dir), "--prompt", "a <clock> clock",
            "--out", str(tmp_path / "v.mp4"), *[a.format(tmp=tmp_path) for a in extra]]
    assert main(argv) == 3
    assert words in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_unavailable_device_is_refused(capsys, tmp_path, subject_dir):
    missing = "cuda:7" if torch.cuda.is_available() else "cuda"
    argv = ["generate", "--model", "tiny", "--subject", str(subject_dir), "--prompt", "a <clock> clock",
            "--device", missing, "--out", str(tmp_path / "v.mp4")]
    assert main(argv) == 3
    assert "available --device" in one_line_error(capsys)


@pytest.mark.parametrize(("extra", "words"), [
    (["--frames", "13"], "8k+1 (1, 9, 17, ...) for tiny, but got 13, which it would not decode to 13 frames. "
                         "Pass --frames 9 or 17"),
    (["--frames", "5"], "Pass --frames 1 or 9"),
    (["--height", "40", "--width", "32"], "divisible by 16x16 pixels"),
])
def test_generate_follows_the_model_frame_and_size_rules(capsys, tmp_path, subject_dir, extra, words):
    argv = ["generate", "--model", "tiny", "--subject", str(subject_dir), "--prompt", "a <clock> clock",
            "--out", str(tmp_path / "v.mp4"), *extra]
    assert main(argv) == 3
    assert words in one_line_error(capsys)


def test_frame_rule_is_what_each_vae_really_decodes():
    """Of the t k + 1 counts the pipelines document, frames_ok(n) <=> the VAE decodes n frames back."""
    for family in ("cogvideox", "wan"):
        pipe = tiny_pipeline(family)
        units = video_units(pipe)
        channels = getattr(pipe.vae.config, "latent_channels", None) or pipe.vae.config.z_dim
        for frames in range(1, 42):
            latent_frames = (frames - 1) // units.temporal + 1
            with torch.no_grad():
                decoded = pipe.vae.decode(torch.randn(1, channels, latent_frames, 2, 2)).sample.shape[2]
            if (frames - 1) % units.temporal == 0:
                assert units.frames_ok(frames) == (decoded == frames), (family, frames, decoded)
            else:
                assert not units.frames_ok(frames)
    assert [n for n in range(1, 42) if video_units(tiny_pipeline("cogvideox")).frames_ok(n)] == [1, 9, 17, 25, 33, 41]


def test_units_are_read_from_a_model_folder_without_weights(tmp_path):
    for family in ("cogvideox", "wan"):
        pipe = tiny_pipeline(family)
        pipe.save_pretrained(tmp_path / family)
        units, _ = probe_units(str(tmp_path / family))
        assert units == video_units(pipe)
    assert probe_units(str(tmp_path / "missing")) is None  # checked after loading instead


def _photos(folder: Path, extra: dict[str, bytes]) -> Path:
    folder.mkdir()
    for name in ("00.jpg", "01.jpg"):
        (folder / name).write_bytes((SAMPLES / name).read_bytes())
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("case", ["damaged", "bomb", "out-file", "token-lr", "resolution"])
def test_train_refuses_bad_input_before_loading(capsys, tmp_path, case):
    extra = {"damaged": {"02.jpg": (SAMPLES / "02.jpg").read_bytes()[:300]}}.get(case, {})
    if case == "bomb":
        Image.new("1", (14000, 13000)).save(tmp_path / "bomb.png")
        extra = {"02.png": (tmp_path / "bomb.png").read_bytes()}
    photos = _photos(tmp_path / "photos", extra)
    (tmp_path / "taken").write_text("a file of the user's")
    out = tmp_path / ("taken" if case == "out-file" else "subject")
    argv = ["train", "--model", str(tmp_path / "never-loaded"), "--images", str(photos), "--token", "<t>",
            "--class-word", "clock", "--out", str(out), "--overwrite"]
    argv += {"token-lr": ["--token-lr", "inf"], "resolution": ["--resolution", "0", "32"]}.get(case, [])
    assert main(argv) == 3
    err = one_line_error(capsys)
    expected = {"damaged": "02.jpg", "bomb": "sane size", "out-file": "which is a file",
                "token-lr": "--token-lr to be a finite number", "resolution": "--resolution of at least 1"}
    assert expected[case] in err
    assert (tmp_path / "taken").read_text() == "a file of the user's" and not (tmp_path / "subject").exists()


def test_damaged_image_inside_a_subject_folder_exits_3(capsys, tmp_path, subject_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in subject_dir.rglob("*"):
        if file.is_file():
            (broken / file.relative_to(subject_dir)).parent.mkdir(exist_ok=True)
            (broken / file.relative_to(subject_dir)).write_bytes(file.read_bytes())
    image = broken / "images" / "00.png"
    image.write_bytes(image.read_bytes()[:200])
    assert main(["generate", "--model", "tiny", "--subject", str(broken), "--prompt", "a <clock> clock",
                 "--out", str(tmp_path / "v.mp4")]) == 3
    assert "images/00.png" in one_line_error(capsys)


def _vwarper_with_file_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that cannot write files larger than `limit` bytes (a full disk, for real)."""
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "vwarper_hooks.apps.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit_files)


def test_panels_that_cannot_be_written_leave_no_video(tmp_path, subject_dir):
    out, panels = tmp_path / "run" / "v.mp4", tmp_path / "run" / "panels"
    done = _vwarper_with_file_limit(12_000, "generate", "--model", "tiny", "--subject", str(subject_dir),
                                    "--prompt", "a <clock> clock", "--frames", "9", "--steps", "5",
                                    "--out", str(out), "--panels", str(panels), "--quiet")
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    assert list((tmp_path / "run").iterdir()) == []  # no video, no panels, no temporary folders


def test_disk_full_while_saving_a_subject_exits_3_and_leaves_nothing(tmp_path):
    done = _vwarper_with_file_limit(20_000, "train", "--model", "tiny", "--images", str(SAMPLES), "--token",
                                    "<vw-clock>", "--class-word", "clock", "--out", str(tmp_path / "s"),
                                    "--steps", "1", "--rank", "2", "--resolution", "32", "32", "--quiet")
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Expected to write the outputs"), done.stderr
    assert list(tmp_path.iterdir()) == []
