"""Tiny, randomly initialised pipelines of every built-in family, by name (`tiny_pipeline("wan")`), and the
arguments of a fast, deterministic call of one (`tiny_call_kwargs`). Each family's tiny pipeline is its own
module, `porting/tiny/<family>.py`; the names come from the one family list, `families.TINY_FAMILIES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from .families import TINY_FAMILIES, unavailable
from .tiny import TINY_FRAMES, TINY_HEIGHT, TINY_TEXT_LEN, TINY_WIDTH
from .tiny.cogvideox import tiny_cogvideox_pipeline, tiny_cogvideox_transformer, tiny_cogvideox_vae
from .tiny.hunyuan_video import tiny_hunyuan_video_pipeline, tiny_hunyuan_video_transformer
from .tiny.wan import tiny_wan_pipeline, tiny_wan_transformer

__all__ = [
    "FAMILIES", "TINY_FRAMES", "TINY_HEIGHT", "TINY_TEXT_LEN", "TINY_WIDTH", "tiny_call_kwargs",
    "tiny_cogvideox_pipeline", "tiny_cogvideox_transformer", "tiny_cogvideox_vae", "tiny_hunyuan_video_pipeline",
    "tiny_hunyuan_video_transformer", "tiny_pipeline", "tiny_wan_pipeline", "tiny_wan_transformer",
]


def _builder(family: str) -> Callable[..., Any]:
    return importlib.import_module(f"{__package__}.tiny.{family}").pipeline


#: The tiny pipeline builder of each built-in family (names: `families.TINY_FAMILIES`).
FAMILIES: dict[str, Callable[..., Any]] = {family: _builder(family) for family in TINY_FAMILIES}


def tiny_pipeline(family: str, **kwargs: Any) -> Any:
    """The tiny pipeline of `family` (a key of `FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"Expected one of {sorted(FAMILIES)}, but got {family!r}. Pick one of those.")
    reason = unavailable(family)
    if reason:
        raise ImportError(f"Expected a diffusers release with the {family!r} model, but {reason}. Upgrade diffusers.")
    return FAMILIES[family](**kwargs)


def tiny_call_kwargs(**overrides: Any) -> dict[str, Any]:
    """Arguments for a fast, deterministic call of a tiny pipeline."""
    kwargs: dict[str, Any] = dict(
        prompt="a photo of a <clock> clock on the beach",
        negative_prompt="",
        height=TINY_HEIGHT,
        width=TINY_WIDTH,
        num_frames=TINY_FRAMES,
        num_inference_steps=2,
        guidance_scale=6.0,
        max_sequence_length=TINY_TEXT_LEN,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    kwargs.update(overrides)
    return kwargs
