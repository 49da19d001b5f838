"""A learned world: procedural clips with exact ground truth, and the tiny text-to-video model trained on them.

Not imported by the library. ``import vwarper_hooks.world`` before
``CogVideoXPipeline.from_pretrained(LEARNED_MODEL)``: diffusers loads the stand-in VAE class
(`components.PixelShuffleVAE`) only from a module that is already imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .components import PixelShuffleVAE, build_pipeline

#: the shipped pipeline folder (`vwarper_hooks/data/world`, see its README.md)
LEARNED_MODEL = Path(__file__).resolve().parent.parent / "data" / "world"

__all__ = ["LEARNED_MODEL", "PixelShuffleVAE", "build_pipeline", "learned_layers", "learned_pipeline"]


def learned_pipeline(path: str | Path = LEARNED_MODEL, **kwargs: Any) -> Any:
    """The learned world's `CogVideoXPipeline`, loaded offline from `path` (default: the shipped weights)."""
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(str(path), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def learned_layers(path: str | Path = LEARNED_MODEL) -> dict[str, Any]:
    """The match / warp layers measured for the model (its training.json "vwarper" entry, see the model card);
    empty where none was recorded (the adapter's defaults then apply)."""
    chosen = json.loads((Path(path) / "training.json").read_text()).get("vwarper", {})
    return {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if k in ("match_layer", "warp_layers")}
