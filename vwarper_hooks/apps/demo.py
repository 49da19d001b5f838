"""The embedded demo: tiny random CogVideoX, a briefly trained subject, one injected generation.

Everything runs offline on CPU in well under two minutes. The weights are random, so the video
is noise-like: the demo shows the machinery (coarse stage, reference branch, matching, masks,
warping) and its diagnostics, not image quality. `run_demo` is the library entry point; the
``vwarper demo`` command wraps it with progress bars.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..coarse import CoarseConfig, train_subject
from ..config import WarpConfig
from ..errors import VwarperError
from ..units import video_units
from . import visualize as vis
from .generate import generate_video
from .loading import tiny_demo_pipeline
from .panels import write_panels

logger = logging.getLogger(__name__)

DEMO_TOKEN = "<my-clock>"
DEMO_CLASS = "clock"
DEMO_PROMPT = f"a photo of a {DEMO_TOKEN} clock on the beach"
#: the subjects of the demo, in order (``--subjects 2`` adds the dog): (token, class word, photo folder)
DEMO_SUBJECTS = ((DEMO_TOKEN, DEMO_CLASS, "clock"), ("<my-dog>", "dog", "dog"))
TWO_PROMPT = "a photo of a <my-clock> clock and a <my-dog> dog on the beach"
REAL_MODEL_HINT = (
    "vwarper train --model THUDM/CogVideoX-5b --images my_photos/ --token '<my-clock>' --class-word clock "
    "--out subjects/clock && vwarper generate --model THUDM/CogVideoX-5b --subject subjects/clock "
    "--prompt 'a <my-clock> clock on the beach' --frames 25 --steps 50 --out clock.mp4"
)

Stage = Callable[[str, int, int], None]  # (stage name, done, total)


@dataclass
class DemoSettings:
    """Sizes of the demo run (the defaults take about half a minute on 2 CPU cores).

    `frames` must be a count the model decodes to exactly that many frames (CogVideoX: 8k+1).
    """

    train_steps: int = 30
    steps: int = 12
    size: int = 128
    frames: int = 17
    seed: int = 0
    fps: int = 8
    subjects: int = 1  # 1: the clock; 2: the clock and the dog in one video
    references: int = 1  # reference photos per subject matched at once (up to 3)


@dataclass
class DemoResult:
    out: Path
    video: Path
    pngs: dict[str, Path]
    summary: Path
    seconds: dict[str, float] = field(default_factory=dict)


def sample_images(name: str = "clock") -> list[Image.Image]:
    """The three photos of `name` ("clock" or "dog") shipped inside the package (CC BY 4.0, see
    data/ATTRIBUTION.md)."""
    folder = resources.files("vwarper_hooks") / "data" / name
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".jpg"))
    if not names:
        raise VwarperError(
            f"Expected the demo's sample images in {folder}, but got none. "
            "Reinstall the package (pip install --force-reinstall vwarper-hooks)."
        )
    images = []
    for name in names:
        with (folder / name).open("rb") as fh:
            images.append(Image.open(fh).convert("RGB"))
    return images


def run_demo(out: str | Path, settings: DemoSettings | None = None, stage: Stage | None = None) -> DemoResult:
    """Train, generate with injection, and write the video, PNG panels and ``demo.json`` to `out`.

    Runs on one CPU thread: the tiny model gains little from more, and OpenMP threads that spin
    while the machine is busy with other work made runs up to 30x slower (measured on 2 cores).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(Path(out), settings or DemoSettings(), stage)
    finally:
        torch.set_num_threads(threads)


def check_settings(pipe: Any, settings: DemoSettings) -> None:
    """Refuse sizes the tiny model would not reproduce exactly (its own frame and size rules)."""
    units = video_units(pipe)
    if not units.size_ok(settings.size, settings.size) or settings.steps < 3 or not units.frames_ok(settings.frames):
        raise VwarperError(
            f"Expected a size divisible by {units.pixels_per_token[0]}, at least 3 steps and {units.frame_rule()} "
            f"frames, but got size {settings.size}, {settings.steps} steps, {settings.frames} frames. "
            "Use e.g. --size 96 --steps 10 --frames 17."
        )
    if settings.subjects not in (1, 2) or not 1 <= settings.references <= 3:
        raise VwarperError(f"Expected 1 or 2 subjects and 1-3 references, but got {settings.subjects} and "
                           f"{settings.references}. Use e.g. --subjects 2 --references 3.")


def _run_demo(out: Path, settings: DemoSettings, stage: Stage | None) -> DemoResult:
    stage = stage or (lambda name, done, total: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    stage("build", 0, 1)
    pipe = tiny_demo_pipeline(settings.seed)
    check_settings(pipe, settings)
    out.mkdir(parents=True, exist_ok=True)
    seconds["build"] = time.perf_counter() - clock
    stage("build", 1, 1)

    subjects = _train(pipe, out, settings, stage)
    seconds["train"] = time.perf_counter() - clock - sum(seconds.values())

    warp = WarpConfig(warp_steps=(1, settings.steps - 2), num_references=settings.references)
    stage("generate", 0, settings.steps)
    prompt = DEMO_PROMPT if settings.subjects == 1 else TWO_PROMPT
    generation = generate_video(
        pipe, subjects, prompt, frames=settings.frames, steps=settings.steps, guidance=6.0, seed=settings.seed,
        height=settings.size, width=settings.size, config=warp,
        on_step=lambda done: stage("generate", done, settings.steps),
    )
    video, diagnostics, _ = generation
    seconds["generate"] = time.perf_counter() - clock - sum(seconds.values())

    stage("write", 0, 1)
    pngs, layout = write_panels(out, generation)
    video_path = vis.write_video(video, out / "video", fps=settings.fps)
    seconds["write"] = time.perf_counter() - clock - sum(seconds.values())
    summary = out / "demo.json"
    summary.write_text(json.dumps({
        "random_weights": True,
        "prompt": prompt,
        "settings": settings.__dict__,
        "video": video_path.name,
        # the trained subject directories: vwarper generate --model tiny --subject OUT/subject
        "subjects": ["subject"] + (["subject2"] if settings.subjects == 2 else []),
        "pngs": {k: p.name for k, p in pngs.items()},
        "warp_steps": sorted(diagnostics),
        "figure5": layout,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "real_model": REAL_MODEL_HINT,
    }, indent=2))
    stage("write", 1, 1)
    return DemoResult(out=out, video=video_path, pngs=pngs, summary=summary, seconds=seconds)


def _train(pipe: Any, out: Path, settings: DemoSettings, stage: Stage) -> list[Any]:
    """Train the demo's subject(s) briefly; each saved as OUT/subject (and OUT/subject2)."""
    coarse = CoarseConfig(
        steps=settings.train_steps, rank=4, mixed_precision="no", gradient_checkpointing=False,
        height=settings.size, width=settings.size, seed=settings.seed, lora_lr=1e-3, token_lr=5e-3,
    )
    subjects = []
    total = settings.train_steps * settings.subjects
    for i, (token, word, folder) in enumerate(DEMO_SUBJECTS[: settings.subjects]):
        done = i * settings.train_steps
        subject = train_subject(
            pipe, sample_images(folder), token=token, class_word=word, config=coarse, progress=False,
            callback=lambda step, loss, done=done: stage("train", done + step, total),
        )
        subject.save(out / ("subject" if i == 0 else f"subject{i + 1}"), overwrite=True)
        subjects.append(subject)
    return subjects
