"""Wan 2.2 A14B in small: the tiny Wan pipeline with a second expert (``transformer_2``, other random weights)
for the timesteps below ``boundary_ratio * 1000``. With A14B's 0.875, of 5 steps at flow shift 3, steps 0-1 run
``transformer`` and steps 2-4 ``transformer_2``."""

from __future__ import annotations

from typing import Any

from ..tiny_text import tie_query_key
from .wan import tiny_wan_pipeline, tiny_wan_transformer


def tiny_wan22_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False, boundary_ratio: float = 0.875) -> Any:
    """A complete offline two-expert `WanPipeline` with random weights, in eval mode, on CPU."""
    from diffusers import WanPipeline

    one = tiny_wan_pipeline(num_layers, seed=seed, tie_qk=tie_qk)
    second = tiny_wan_transformer(num_layers, seed=seed + 1)
    if tie_qk:
        tie_query_key(second)
    pipe = WanPipeline(tokenizer=one.tokenizer, text_encoder=one.text_encoder, vae=one.vae, scheduler=one.scheduler,
                       transformer=one.transformer, transformer_2=second, boundary_ratio=boundary_ratio)
    pipe.set_progress_bar_config(disable=True)
    return pipe


pipeline = tiny_wan22_pipeline
