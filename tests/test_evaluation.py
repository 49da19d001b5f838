"""CLIP-I / DINO-I / CLIP-T: formulas on hand-made embeddings, and a run folder scored end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vwarper_hooks.apps.evaluation import (
    clip_i,
    clip_prompt,
    clip_t,
    dino_i,
    evaluate,
    find_videos,
    tiny_clip_embedder,
    tiny_dino_embedder,
)
from vwarper_hooks.apps.visualize import read_video, write_video
from vwarper_hooks.errors import VwarperError


def test_image_metrics_on_hand_made_embeddings():
    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    refs = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    # every (frame, reference) cosine by hand: 1, 0.6 | 0, 0.8 | 1/sqrt2, 7/(5 sqrt2)
    want = (1 + 0.6 + 0 + 0.8 + 1 / math.sqrt(2) + 7 / (5 * math.sqrt(2))) / 6
    assert clip_i(frames, refs) == pytest.approx(want, abs=1e-12)
    assert dino_i(frames * 7.0, refs * 0.1) == pytest.approx(want, abs=1e-12)  # cosine: scale-free


def test_clip_t_on_hand_made_embeddings():
    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[0.0, 2.0]])
    assert clip_t(frames, text) == pytest.approx((0 + 1 + 1 / math.sqrt(2)) / 3, abs=1e-12)
    assert clip_t(frames[:2], torch.tensor([-1.0, 0.0])) == pytest.approx(-0.5, abs=1e-12)


def test_clip_prompt_drops_the_subject_token():
    assert clip_prompt("a <my-dog> dog  on the beach", "<my-dog>") == "a dog on the beach"
    assert clip_prompt("a dog", None) == "a dog"


def _noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two subjects, three videos, written in the documented layout."""
    root = tmp_path_factory.mktemp("run")
    for s, subject in enumerate(("clock", "dog")):
        refs = root / "references" / subject
        refs.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_noise(10 * s + i, (40, 48, 3))).save(refs / f"{i:02d}.png")
    jobs = [("clock", "beach", "a <my-clock> clock on the beach"), ("clock", "snow", "a <my-clock> clock in snow"),
            ("dog", "park", "a <my-dog> dog in the park")]
    for j, (subject, name, prompt) in enumerate(jobs):
        folder = root / "videos" / subject
        folder.mkdir(parents=True, exist_ok=True)
        write_video(_noise(100 + j, (3, 32, 32, 3)), folder / name)
        token = prompt.split()[1]
        (folder / f"{name}.json").write_text(json.dumps({"prompt": prompt, "token": token}))
    return root


def test_run_folder_scores_equal_hand_computation(run_dir):
    clip, dino = tiny_clip_embedder(), tiny_dino_embedder()
    report = evaluate(run_dir, clip=clip, dino=dino)
    assert [(v["subject"], v["video"]) for v in report.videos] == [("clock", "beach"), ("clock", "snow"),
                                                                    ("dog", "park")]

    def cos_mean(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.double().numpy(), b.double().numpy()
        return float(np.mean([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a]))

    for row, entry in zip(report.videos, find_videos(run_dir), strict=True):
        frames = [Image.fromarray(f) for f in read_video(entry.path)]
        refs = [Image.open(p).convert("RGB") for p in sorted((run_dir / "references" / entry.subject).glob("*.png"))]
        assert row["frames"] == 3 and "<" not in row["prompt"]
        assert row["clip_i"] == pytest.approx(cos_mean(clip.images(frames), clip.images(refs)), abs=1e-6)
        assert row["dino_i"] == pytest.approx(cos_mean(dino.images(frames), dino.images(refs)), abs=1e-6)
        assert row["clip_t"] == pytest.approx(cos_mean(clip.images(frames), clip.texts([row["prompt"]])), abs=1e-6)
    clock = [v for v in report.videos if v["subject"] == "clock"]
    assert report.subjects["clock"]["dino_i"] == pytest.approx((clock[0]["dino_i"] + clock[1]["dino_i"]) / 2)
    assert report.overall["clip_t"] == pytest.approx(sum(v["clip_t"] for v in report.videos) / 3)
    assert json.loads(json.dumps(report.to_dict()))["overall"] == report.overall


def test_eval_command_writes_json_from_local_model_folders(run_dir, tmp_path, capsys):
    from vwarper_hooks.apps.cli import main

    clip, dino = tiny_clip_embedder(), tiny_dino_embedder()
    clip.model.save_pretrained(tmp_path / "clip")
    clip.processor.save_pretrained(tmp_path / "clip")
    dino.model.save_pretrained(tmp_path / "dino")
    dino.processor.save_pretrained(tmp_path / "dino")
    out = tmp_path / "metrics.json"
    code = main(["eval", str(run_dir), "--clip-model", str(tmp_path / "clip"), "--dino-model",
                 str(tmp_path / "dino"), "--out", str(out), "--json"])
    assert code == 0
    saved = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out)["overall"] == saved["overall"]  # progress went to stderr
    direct = evaluate(run_dir, clip=clip, dino=dino)
    assert saved["overall"] == pytest.approx(direct.overall, abs=1e-5)


def test_bad_run_folders_fail_with_a_message(tmp_path):
    with pytest.raises(VwarperError, match="Expected a folder"):
        find_videos(tmp_path)
    (tmp_path / "videos" / "dog").mkdir(parents=True)
    write_video(_noise(0, (2, 16, 16, 3)), tmp_path / "videos" / "dog" / "a")
    with pytest.raises(VwarperError, match=r"Expected a\.json"):
        find_videos(tmp_path)
    (tmp_path / "videos" / "dog" / "a.json").write_text("{not json")
    with pytest.raises(VwarperError, match="JSON object with a string"):
        find_videos(tmp_path)
    (tmp_path / "videos" / "dog" / "a.json").write_text('{"token": "<x>"}')
    with pytest.raises(VwarperError, match="KeyError"):
        find_videos(tmp_path)
