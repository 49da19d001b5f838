"""One V-Warper generation as the command line, the demo and the benchmark runner make it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from ..config import WarpConfig
from ..contract.plan import warps_nothing
from ..inject import inject
from ..prepare import prepare
from .exits import CliError
from .visualize import to_uint8


def check_warp_window(steps: int, no_warp: bool) -> None:
    """Refuse, before loading, a command-line run too short for the default warp window (steps 3-19):
    it would warp nothing. Names the flags (`--steps`, `--no-warp`) of `vwarper generate` and the
    benchmark runner, where `inject` would name `WarpConfig` fields."""
    first = WarpConfig().warp_steps[0]
    if not no_warp and warps_nothing(WarpConfig(), steps):
        raise CliError(f"Expected --steps of at least {first + 1} for value warping (it warps from step {first}), "
                       f"but got {steps}: nothing would be warped. Pass e.g. --steps 50 (the paper's), or --no-warp "
                       "for the coarse stage alone.")


class Generation(NamedTuple):
    """What `generate_video` returns."""

    video: np.ndarray  # (T, H, W, 3) uint8
    diagnostics: dict[int, Any]  # step -> StepDiagnostics (several subjects: step -> {token: ...})
    photos: dict[str, list[Any]]  # subject token -> the reference photos read, in flow order


def shape_kwargs(
    pipe: Any, *, frames: int, steps: int, height: int | None, width: int | None, guidance: float
) -> dict[str, Any]:
    """The pipeline arguments that decide what the reference branch computes (size, steps, text
    length, guidance), the same for a generation and for `prepare_subject`."""
    call: dict[str, Any] = dict(num_frames=frames, num_inference_steps=steps, guidance_scale=guidance)
    if height:
        call["height"] = height
    if width:
        call["width"] = width
    if hasattr(pipe.transformer.config, "max_text_seq_length"):  # CogVideoX: the length the model was built for
        call["max_sequence_length"] = pipe.transformer.config.max_text_seq_length
    return call


def prepare_subject(
    pipe: Any, subject: Any, *, frames: int, steps: int, height: int, width: int, guidance: float,
    config: WarpConfig | None = None,
) -> None:
    """`vwarper.prepare` for one shape with the arguments `generate_video` will use."""
    call = shape_kwargs(pipe, frames=frames, steps=steps, height=height, width=width, guidance=guidance)
    named = {name: call.pop(name) for name in ("num_frames", "num_inference_steps", "height", "width")}
    prepare(pipe, subject, config=config, **named, **call)


def generate_video(
    pipe: Any,
    subject: Any,
    prompt: str,
    *,
    frames: int,
    steps: int,
    guidance: float,
    seed: int,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str = "",
    config: WarpConfig | None = None,
    on_step: Callable[[int], None] | None = None,
    allow_config_mismatch: bool = False,
) -> Generation:
    """Generate inside `inject` (`subject`: one or a list); returns the ``(T, H, W, 3)`` uint8 frames,
    the per-step diagnostics and the reference photos each subject read.

    :param height, width: pixels; None keeps the pipeline's default size.
    :param on_step: called with the number of finished denoising steps (progress bars).
    :param allow_config_mismatch: use a subject trained for another transformer config (`inject`).
    """
    call = dict(prompt=prompt, negative_prompt=negative_prompt, output_type="np",
                generator=torch.Generator().manual_seed(seed),
                **shape_kwargs(pipe, frames=frames, steps=steps, height=height, width=width, guidance=guidance))
    if on_step is not None:

        def callback(_pipe: Any, step: int, _t: Any, _kwargs: dict) -> dict:
            on_step(step + 1)
            return {}

        call["callback_on_step_end"] = callback
    with inject(pipe, subject, config=config, allow_config_mismatch=allow_config_mismatch) as session:
        frames_out = pipe(**call).frames
        diagnostics = dict(session.diagnostics)
    photos = {s.token: [s.images[i] for i in session.photos[s.token]] for s in session.subjects}
    return Generation(to_uint8(frames_out), diagnostics, photos)
