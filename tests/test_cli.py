"""The `vwarper` command: the demo end to end, help texts, one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vwarper_hooks
from vwarper_hooks.apps import visualize as vis
from vwarper_hooks.apps.cli import EXIT_CODES, main
from vwarper_hooks.porting.families import ADAPTER_OF, FAMILY_MODELS, TINY_FAMILIES

COMMANDS = ("demo", "train", "generate", "eval", "analyze", "adapters", "inspect", "ui")
SAMPLES = Path(vwarper_hooks.__file__).parent / "data" / "clock"


def vwarper(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run the installed console script (or ``python -m vwarper_hooks.apps.cli``) in a subprocess."""
    script = Path(sys.executable).with_name("vwarper")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "vwarper_hooks.apps.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    done = vwarper("demo", "--model", "tiny", "--out", str(out), "--train-steps", "3", "--steps", "4", "--size", "64",
                   "--frames", "9")
    assert done.returncode == 0, done.stderr
    assert "RANDOM" in done.stdout and "THUDM/CogVideoX-5b" in done.stdout
    return out


def test_demo_writes_a_decodable_video_and_non_empty_pngs(demo):
    summary = json.loads((demo / "demo.json").read_text())
    video = vis.read_video(demo / summary["video"])
    assert video.shape == (9, 64, 64, 3) and video.std() > 0
    assert set(summary["pngs"]) == {"reference", "frames", "masks", "figure5", "figure5_tiles"}
    for name in summary["pngs"].values():
        with Image.open(demo / name) as png:
            assert png.format == "PNG" and png.width > 32 and png.height > 32
            assert np.asarray(png.convert("L")).std() > 0  # not blank
    assert summary["random_weights"] is True and summary["warp_steps"] == [1, 2]
    assert (demo / "subject" / "subject.json").is_file()


def test_demo_with_two_subjects_and_three_references_draws_both(tmp_path):
    done = vwarper("demo", "--model", "tiny", "--out", str(tmp_path), "--train-steps", "2", "--steps", "4",
                   "--size", "64", "--frames", "9", "--subjects", "2", "--references", "3")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert {"subjects", "references"} <= set(summary["pngs"]) and summary["subjects"] == ["subject", "subject2"]
    assert "<my-dog>" in summary["prompt"] and (tmp_path / "subject2" / "subject.json").is_file()
    for key in ("subjects", "references"):
        with Image.open(tmp_path / summary["pngs"][key]) as png:
            assert np.asarray(png.convert("L")).std() > 0
    panels = tmp_path / "panels"
    assert main(["generate", "--model", "tiny", "--subject", str(tmp_path / "subject"), "--subject",
                 str(tmp_path / "subject2"), "--prompt", summary["prompt"], "--frames", "9", "--steps", "4",
                 "--height", "32", "--width", "32", "--references", "2", "--out", str(tmp_path / "two.gif"),
                 "--panels", str(panels)]) == 0
    assert (panels / "subjects.png").is_file() and (panels / "references.png").is_file()


def test_figure5_differs_from_the_generated_frame_exactly_where_the_mask_is_on(demo):
    layout = json.loads((demo / "demo.json").read_text())["figure5"]
    figure = np.asarray(Image.open(demo / layout["file"]).convert("RGB"))  # the exact tiles of figure5.png
    size, pad = tuple(layout["tile"]), layout["pad"]
    mask = torch.tensor(layout["mask"], dtype=torch.bool)  # (F, h, w) final mask of the last warp step
    assert mask.any() and not mask.all(), "the demo should show a partial mask"
    frames, h, w = mask.shape
    ph, pw = size[0] // h, size[1] // w
    for f in range(frames):
        generated = vis.tile_at(figure, 0, f, size, pad).astype(int)
        masked = vis.tile_at(figure, 2, f, size, pad).astype(int)
        for i in range(h):
            for j in range(w):
                block = (slice(i * ph, (i + 1) * ph), slice(j * pw, (j + 1) * pw))
                changed = np.abs(masked[block] - generated[block]).sum()
                assert (changed > 0) == bool(mask[f, i, j]), (f, i, j)


def test_warp_reference_moves_patches_by_the_flow():
    reference = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 10
    reference = np.kron(reference, np.ones((3, 3, 1), np.uint8))  # 6x6 picture of 2x2 patches
    identity = torch.arange(4).reshape(1, 2, 2)
    assert np.array_equal(vis.warp_reference(reference, identity, (6, 6))[0], reference)
    swapped = torch.tensor([[[1, 0], [3, 2]]]) + 4  # frame 1 of a 2-frame grid: left <-> right
    warped = vis.warp_reference(reference, swapped, (6, 6))[0]
    assert np.array_equal(warped[:, :3], reference[:, 3:]) and np.array_equal(warped[:, 3:], reference[:, :3])


def test_top_level_help_lists_commands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
    for code in EXIT_CODES:
        assert f"  {code} " in text


@pytest.mark.parametrize(("command", "words"), [
    ("demo", ["learned", "RANDOM", "--out", "comparison.png"]),
    ("train", ["--images", "--token", "--class-word", "--steps", "LoRA"]),
    ("generate", ["--subject", "--no-warp", "--no-mask", "--cpu-offload", "--vae-tiling", "--vae-slicing", "--dtype"]),
    ("eval", ["CLIP-I", "DINO-I", "CLIP-T", "references", "--clip-model"]),
    ("analyze", ["PCK", "RoPE-free", "--video", "pck.png"]),
    ("adapters", ["plugin", "--json"]),
    ("inspect", ["--tiny", "hunyuan_video"]),
    ("ui", ["--model", "learned", "--host", "--port", "--subjects", 'pip install "vwarper-hooks[ui]"', "Compare"]),
])
def test_each_subcommand_explains_itself(capsys, command, words):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in [*words, "exit codes", "--debug"]:
        assert word in text, word
    assert "--train-steps" not in text  # hidden test flags stay hidden


def test_missing_subject_is_a_one_line_error_without_traceback(tmp_path):
    done = vwarper("generate", "--model", "tiny", "--subject", str(tmp_path / "nope"), "--prompt", "a <x> dog")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Expected a subject directory"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [
    ["train", "--model", "tiny", "--images", "{tmp}/none", "--token", "<t>", "--class-word", "dog", "--out", "{tmp}/s"],
    ["generate", "--model", "tiny", "--subject", "{tmp}", "--prompt", "a dog"],  # a folder without subject.json
    ["generate", "--model", "{tmp}/no-model", "--subject", "{demo}/subject", "--prompt", "a <my-clock> clock"],
    ["eval", "{tmp}/no-run"],
    ["eval", "{tmp}"],  # exists, but has no videos/
    ["analyze", "--reference", "{tmp}/missing.jpg"],
    ["analyze", "--reference", "{demo}/demo.json"],  # exists, but is not an image
])
def test_bad_paths_exit_3_with_one_line(capsys, tmp_path, demo, argv):
    argv = [a.format(tmp=tmp_path, demo=demo) for a in argv]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Expected") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("ablation", [[], ["--no-warp"], ["--no-mask"]])
def test_prompt_without_the_subject_token_is_refused_before_loading_the_model(capsys, demo, ablation):
    """The coarse stage's LoRA was trained on the token: without it the subject is silently lost."""
    argv = ["generate", "--model", "no/such-model", "--subject", str(demo / "subject"), "--prompt", "a clock"]
    assert main(argv + ablation) == 3
    assert "subject token '<my-clock>'" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", "tiny"])
    assert exit_info.value.code == 2


def test_debug_shows_the_traceback(tmp_path):
    from vwarper_hooks.apps.cli import CliError

    with pytest.raises(CliError):
        main(["eval", str(tmp_path / "no-run"), "--debug"])


def test_train_then_generate_with_the_tiny_model(tmp_path, capsys):
    subject = tmp_path / "subject"
    argv = ["train", "--model", "tiny", "--images", str(SAMPLES), "--token", "<vw-clock>", "--class-word", "clock",
            "--out", str(subject), "--steps", "2", "--rank", "2", "--resolution", "32", "32"]
    assert main(argv) == 0
    assert json.loads((subject / "subject.json").read_text())["token"] == "<vw-clock>"
    assert main(argv) == 3  # exists: refuses without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    for extra in ([], ["--no-mask"]):
        out = tmp_path / f"video{len(extra)}.v1.mp4"  # a dotted name stays whole
        assert main(["generate", "--model", "tiny", "--subject", str(subject), "--prompt",
                     "a photo of a <vw-clock> clock on the beach", "--frames", "9", "--steps", "4", "--height", "32",
                     "--width", "32", "--out", str(out), "--panels", str(tmp_path / "panels"), *extra]) == 0
        written = next(tmp_path.glob(f"video{len(extra)}.v1.*"))
        assert vis.read_video(written).shape == (9, 32, 32, 3)  # 8k+1 frames decode to as many
    assert (tmp_path / "panels" / "figure5.png").is_file()


def test_train_prepare_stores_the_inversion_that_generate_then_reads(tmp_path, capsys):
    subject = tmp_path / "subject"
    argv = ["train", "--model", "tiny", "--images", str(SAMPLES), "--token", "<vw-clock>", "--class-word", "clock",
            "--out", str(subject), "--steps", "1", "--rank", "2", "--resolution", "32", "32"]
    assert main([*argv, "--prepare", "9", "32", "32", "0"]) == 3  # checked before any model loads
    assert "--prepare STEPS" in capsys.readouterr().err and not subject.exists()
    assert main([*argv, "--prepare", "9", "32", "32", "4"]) == 0
    stored = list((subject / "inversions").glob("*.safetensors"))
    assert len(stored) == 1
    stamp = stored[0].stat().st_mtime_ns
    out = tmp_path / "video.gif"
    assert main(["generate", "--model", "tiny", "--subject", str(subject), "--prompt", "a <vw-clock> clock",
                 "--frames", "9", "--steps", "4", "--height", "32", "--width", "32", "--out", str(out)]) == 0
    assert list((subject / "inversions").glob("*.safetensors")) == stored  # read, not made again
    assert stored[0].stat().st_mtime_ns == stamp


def test_adapters_lists_plugins(capsys):
    assert main(["adapters", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"adapter": "cogvideox", "plugin": "cogvideox"} in rows


def test_reading_mp4_without_imageio_exits_4(monkeypatch, capsys, tmp_path):
    """imageio is optional: without it, mp4 videos cannot be scored, and the CLI says what to install."""
    run_dir = tmp_path / "run"
    (run_dir / "videos" / "dog").mkdir(parents=True)
    (run_dir / "videos" / "dog" / "a.mp4").write_bytes(b"not decoded")
    (run_dir / "videos" / "dog" / "a.json").write_text('{"prompt": "a <t> dog"}')
    (run_dir / "references" / "dog").mkdir(parents=True)
    (run_dir / "references" / "dog" / "0.jpg").write_bytes(
        (SAMPLES / sorted(p.name for p in SAMPLES.glob("*.jpg"))[0]).read_bytes())
    from vwarper_hooks.apps import evaluation

    clip, dino = evaluation.tiny_clip_embedder(), evaluation.tiny_dino_embedder()  # no downloads
    monkeypatch.setattr(evaluation, "ClipEmbedder", lambda *a, **k: clip)
    monkeypatch.setattr(evaluation, "DinoEmbedder", lambda *a, **k: dino)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    assert main(["eval", str(run_dir)]) == 4
    err = capsys.readouterr().err.strip()
    assert "pip install imageio imageio-ffmpeg" in err and len(err.splitlines()) == 1


def test_ui_without_gradio_exits_4_with_the_install_line_before_loading_a_model(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the ui extra were not installed
    assert main(["ui", "--model", "/nowhere/at/all"]) == 4  # a bad model would be exit 3: gradio is checked first
    err = capsys.readouterr().err.strip()
    assert 'pip install "vwarper-hooks[ui]"' in err and len(err.splitlines()) == 1


def test_ui_help_answers_and_the_library_loads_without_importing_gradio():
    code = ("import sys\nimport vwarper_hooks\nfrom vwarper_hooks.apps.cli import main\n"
            "try:\n    main(['ui', '--help'])\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
            "print('GRADIO', 'gradio' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "EXIT 0" in done.stdout and "GRADIO False" in done.stdout, done.stderr


def test_inspect_renders_any_report_dict(monkeypatch, capsys):
    data = {"model": "tiny", "layers": [{"index": 0, "name": "blocks.0.attn1"}], "text": {"position": "first"}}
    seen = {}

    def inspect_model(target=None, tiny=None):
        seen.update(target=target, tiny=tiny)
        return types.SimpleNamespace(to_dict=lambda: data)

    module = types.ModuleType("vwarper_hooks.porting.inspection")
    module.inspect_model = inspect_model
    monkeypatch.setitem(sys.modules, "vwarper_hooks.porting.inspection", module)
    assert main(["inspect", "--tiny", "wan", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == data and seen == {"target": None, "tiny": "wan"}
    assert main(["inspect", "some/model"]) == 0
    text = capsys.readouterr().out
    assert "blocks.0.attn1" in text and "first" in text and seen["target"] == "some/model"
    assert main(["inspect"]) == 3


def test_train_checks_settings_and_output_before_loading_the_model(capsys, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((SAMPLES / sorted(p.name for p in SAMPLES.glob("*.jpg"))[0]).read_bytes())
    base = ["train", "--model", "no/such-model", "--images", str(photos), "--token", "<t>", "--class-word", "dog"]
    assert main([*base, "--out", str(photos), "--overwrite"]) == 3  # never replaces a folder of user files
    assert "holds other files" in capsys.readouterr().err and [p.name for p in photos.iterdir()] == ["a.jpg"]
    assert main([*base, "--out", str(tmp_path / "s"), "--steps", "0"]) == 3
    assert "steps" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "s"), "--resume"]) == 3
    assert "--checkpoint-dir" in capsys.readouterr().err


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_inspect_the_real_tiny_model(capsys, family):
    assert main(["inspect", "--tiny", family, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["adapter"], report["model_class"]) == (ADAPTER_OF.get(family, family), FAMILY_MODELS[family])
    if family == "cogvideox":
        assert report["depth"] == 42 and "text tokens [0, 16) then video tokens" in report["token_layout"]
