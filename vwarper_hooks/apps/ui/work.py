"""The model work of the page, without gradio: train and save a subject; generate coarse-only and V-Warper.

Both run inside a `jobs.Job` (`ModelRunner.submit`): their step callbacks report progress and stop there
when the job is cancelled. Every check that needs no model runs first, with the library's own messages
for photos and tokens ("Expected ..., but got .... Do ..."). Outputs are written into a temporary sibling
folder and renamed into place only when complete (`files.atomic_directory`; `Subject.save` is atomic
too), so a cancelled or failed job writes nothing.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ...coarse import train_subject
from ...config import WarpConfig
from ...contract.plan import warps_nothing
from ...errors import SubjectError, SubjectTokenError, VwarperError
from ...files import atomic_directory
from ...images import load_images
from ...subject.subject import Subject
from ...subject.token import token_problems
from ...units import video_units
from .. import visualize as vis
from ..generate import generate_video
from ..panels import write_panels
from .jobs import Job
from .library import SubjectLibrary
from .profiles import PageDefaults

MAX_PHOTOS = 10
VARIANTS = ("coarse only", "V-Warper")
STEMS = {"coarse only": "coarse_only", "V-Warper": "vwarper"}  # file names of the two videos


def page_message(exc: BaseException) -> str:
    """An error as one line for the page (a `ConfigError`'s problems joined with "; "); an error that is not
    ours is named as unexpected (its traceback is in the server's log)."""
    problems = getattr(exc, "problems", None)
    text = " ".join(("; ".join(problems) if problems else str(exc)).split())
    if isinstance(exc, VwarperError):
        return text
    return f"Expected the job to finish, but got an unexpected {type(exc).__name__}: {text}. See the server's log."


def _positive(value: float, name: str, example: str, integer: bool = True) -> None:
    ok = value is not None and math.isfinite(float(value)) and float(value) > 0
    if ok and integer:
        ok = float(value) == int(value)
    if not ok:
        kind = "a whole number" if integer else "a number"
        raise VwarperError(f"Expected {kind} above 0 for {name}, but got {value!r}. Type e.g. {example}.")


@dataclass
class TrainRequest:
    """What the Subjects tab sends to train one subject."""

    photos: list[str]
    token: str
    class_word: str
    steps: int
    rank: int
    lora_lr: float
    token_lr: float
    overwrite: bool = False


@dataclass
class TrainResult:
    path: Path
    token: str
    losses: list[float]
    seconds: float


def check_train(pipe: Any, library: SubjectLibrary, request: TrainRequest) -> tuple[list[Any], Path]:
    """Everything checked before training starts: the photos (read), and the folder to save into."""
    if not request.photos or len(request.photos) > MAX_PHOTOS:
        raise SubjectError(f"Expected 1-{MAX_PHOTOS} photos of the subject (the paper uses 3-10), but got "
                           f"{len(request.photos or [])}. Upload between 1 and {MAX_PHOTOS} photos.")
    problems = token_problems(pipe.tokenizer, request.token)
    if problems:
        raise SubjectError(" ".join(problems))
    if not (request.class_word or "").strip():
        raise SubjectError("Expected a class word naming what the subject is (e.g. 'dog', 'clock'), but got none. "
                           "Type one: it starts the token's embedding.")
    for value, name, example in ((request.steps, "training steps", "150"), (request.rank, "LoRA rank", "8")):
        _positive(value, name, example)
    for value, name, example in ((request.lora_lr, "LoRA learning rate", "1e-3"),
                                 (request.token_lr, "token learning rate", "5e-3")):
        _positive(value, name, example, integer=False)
    target = library.path_for(request.token)
    if target.exists() and not request.overwrite:
        raise SubjectError(f"Expected a new subject, but {request.token!r} is already saved in {str(target)!r}. "
                           "Tick 'Replace a saved subject with this token' or choose another token.")
    return load_images(request.photos), target


def train(job: Job, pipe: Any, library: SubjectLibrary, defaults: PageDefaults, request: TrainRequest) -> TrainResult:
    """Train the subject on the photos and save it to the library (nothing saved when cancelled)."""
    start = time.perf_counter()
    photos, target = check_train(pipe, library, request)
    steps = int(request.steps)
    config = defaults.coarse_config(steps, int(request.rank), float(request.lora_lr), float(request.token_lr),
                                    cuda="cuda" in str(pipe._execution_device))
    job.report(0, steps, f"training {request.token}: preparing {len(photos)} photo(s)")
    subject = train_subject(pipe, photos, token=request.token, class_word=request.class_word.strip(), config=config,
                            progress=False, callback=lambda step, loss: job.report(
                                step, steps, f"training {request.token}: step {step}/{steps}, loss {loss:.4f}"))
    job.check()
    subject.save(target, overwrite=request.overwrite)
    return TrainResult(target, request.token, list(subject.info.get("losses") or []), time.perf_counter() - start)


@dataclass
class GenerateRequest:
    """What the Generate tab sends: subjects by saved name, the call, and the main `WarpConfig` fields."""

    subjects: list[str]
    prompt: str
    frames: int
    steps: int
    seed: int
    guidance: float
    height: int
    width: int
    match_layer: int
    warp_layers: tuple[int, int]
    warp_steps: tuple[int, int]
    tau_fg: float
    tau_cc: float
    mask: bool = True
    references: int = 1


@dataclass
class GenerateResult:
    folder: Path
    videos: dict[str, Path]
    panels: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def files(self) -> list[Path]:
        return [*self.videos.values(), *self.panels.values(), self.folder / "settings.json"]


def warp_config(request: GenerateRequest) -> WarpConfig:
    """The V-Warper settings of a request; a bad field is a `VwarperError` naming it."""
    try:
        config = WarpConfig(match_layer=int(request.match_layer), warp_layers=tuple(map(int, request.warp_layers)),
                            warp_steps=tuple(map(int, request.warp_steps)), tau_fg=float(request.tau_fg),
                            tau_cc=float(request.tau_cc), mask=bool(request.mask),
                            num_references=int(request.references) or None)
    except (ValueError, TypeError) as exc:
        lines = " ".join(str(exc).splitlines()[:3])
        raise VwarperError(f"Expected valid V-Warper settings, but got: {lines}. Fix that field.") from None
    if warps_nothing(config, int(request.steps)):
        raise VwarperError(f"Expected more steps than the first warp step ({config.warp_steps[0]}), but got "
                           f"{request.steps} steps: nothing would be warped. Raise Steps or lower the warp steps.")
    return config


def check_generate(pipe: Any, library: SubjectLibrary, request: GenerateRequest) -> tuple[list[Any], WarpConfig]:
    """Everything checked before generating; returns the loaded subjects and the warp settings."""
    if not request.subjects:
        raise SubjectError("Expected at least one subject, but got none. Pick a saved subject (train one in the "
                           "Subjects tab first).")
    for value, name, example in ((request.frames, "Frames", "9"), (request.steps, "Steps", "50"),
                                 (request.height, "Height", "480"), (request.width, "Width", "720")):
        _positive(value, name, example)
    if request.seed is None or int(request.seed) < 0 or int(request.seed) != request.seed:
        raise VwarperError(f"Expected a whole number of 0 or more as Seed, but got {request.seed!r}. Type e.g. 0.")
    most = int(getattr(pipe.scheduler.config, "num_train_timesteps", 0) or 0)
    if most and int(request.steps) > most:
        raise VwarperError(f"Expected Steps of at most {most} (the scheduler's training timesteps), but got "
                           f"{request.steps}. Type e.g. 50.")
    units = video_units(pipe)
    if not units.frames_ok(int(request.frames)):
        near = " or ".join(map(str, units.nearest_frames(int(request.frames))))
        raise VwarperError(f"Expected Frames of the form {units.frame_rule()}, but got {request.frames}, which the "
                           f"model would not decode to that many frames. Type {near}.")
    if not units.size_ok(int(request.height), int(request.width)):
        unit = units.pixels_per_token
        raise VwarperError(f"Expected Height and Width divisible by {unit[0]}x{unit[1]} pixels (one token), but got "
                           f"{request.height}x{request.width}. Type multiples of {unit[0]}.")
    config = warp_config(request)
    saved = [library.get(name) for name in request.subjects]
    for entry in saved:
        if entry.token not in request.prompt:
            raise SubjectTokenError(f"Expected the prompt to contain the subject token {entry.token!r}, but got "
                                    f"{request.prompt!r}. Write it in, e.g. 'a {entry.token} {entry.class_word} ...'.")
    subjects = [Subject.load(entry.path, pipe=pipe, cache_inversions=True) for entry in saved]
    return subjects, config


def _upscale(video: np.ndarray, scale: int) -> np.ndarray:
    return video if scale == 1 else np.repeat(np.repeat(video, scale, 1), scale, 2)


def generate(job: Job, pipe: Any, library: SubjectLibrary, defaults: PageDefaults, request: GenerateRequest,
             outputs: Path) -> GenerateResult:
    """Generate with the coarse stage only and with V-Warper (same prompt, seed and subjects), then write
    both videos, V-Warper's panels and ``settings.json`` into a new folder of `outputs`, all or nothing."""
    start = time.perf_counter()
    subjects, config = check_generate(pipe, library, request)
    steps, runs = int(request.steps), {}
    for i, variant in enumerate(VARIANTS):
        variant_config = config if variant == "V-Warper" else config.model_copy(update={"warp": False})
        job.report(i * steps, 2 * steps, f"{variant}: starting")
        runs[variant] = generate_video(
            pipe, subjects if len(subjects) > 1 else subjects[0], request.prompt, frames=int(request.frames),
            steps=steps, guidance=float(request.guidance), seed=int(request.seed), height=int(request.height),
            width=int(request.width), config=variant_config,
            on_step=lambda done, i=i, variant=variant: job.report(
                i * steps + done, 2 * steps, f"{variant}: step {done}/{steps}"))
    job.check()
    name = f"{datetime.now():%Y%m%d-%H%M%S}-seed{int(request.seed)}-job{job.id}"
    scale = defaults.display_scale
    with atomic_directory(outputs / name) as tmp:
        videos = {v: vis.write_video(_upscale(runs[v].video, scale), tmp / STEMS[v]) for v in VARIANTS}
        panels = write_panels(tmp / "panels", runs["V-Warper"])[0] if runs["V-Warper"].diagnostics else {}
        settings = {**asdict(request), "warp_config": config.model_dump(mode="json"), "display_scale": scale,
                    "warp_steps_run": sorted(runs["V-Warper"].diagnostics), "model": defaults.model}
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
        job.check()  # a cancel up to here removes the folder
    final = outputs / name
    return GenerateResult(
        folder=final, videos={v: final / p.name for v, p in videos.items()},
        panels={k: final / "panels" / p.name for k, p in panels.items() if k != "figure5_tiles"},
        seconds=time.perf_counter() - start)
