"""Tiny SkyReels-V2: Wan's tiny pipeline (`tiny.wan`: 2 heads x 16 dims, 6 blocks, UMT5 text encoder,
`AutoencoderKLWan`, `UniPCMultistepScheduler` with flow sigmas) with SkyReels-V2's classes and its shift of 8,
separate CFG passes (conditional first), as `SkyReelsV2Pipeline` runs them."""

from __future__ import annotations

from typing import Any

from .wan import tiny_wan_pipeline, tiny_wan_transformer


def tiny_skyreels_v2_transformer(num_layers: int = 6, seed: int = 0, **overrides: Any) -> Any:
    """`SkyReelsV2Transformer3DModel` with Wan's tiny sizes."""
    return tiny_wan_transformer(num_layers, seed, family="SkyReelsV2", **overrides)


def tiny_skyreels_v2_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False) -> Any:
    """A complete offline SkyReels-V2 text-to-video pipeline with random weights, in eval mode, on CPU."""
    return tiny_wan_pipeline(num_layers, seed, tie_qk, family="SkyReelsV2", flow_shift=8.0)


pipeline = tiny_skyreels_v2_pipeline
