"""The reference video's VAE latent, the size of the generation's latents.

A tiled VAE encode (``pipe.vae.enable_tiling()``) with small tiles can return a latent of another size
than the pipeline's own latents (tiles overlap, and the last one rounds). The reference is then encoded
once more with tiling switched off for that one call (the user's setting is restored after), and when
the sizes still differ the error says what to change: latents passed to the pipeline (``latents=``) with
another channel count than the VAE's are named as such, with the shape they must have.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import VwarperError

logger = logging.getLogger(__name__)


def encode_reference(adapter: Any, pipe: Any, video: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """`adapter.encode_video` of `video`, in `latents`' dtype, with `latents`' shape past the batch."""
    clean = adapter.encode_video(pipe, video).to(latents.dtype)
    vae = getattr(pipe, "vae", None)
    if clean.shape[1:] != latents.shape[1:] and getattr(vae, "use_tiling", False):
        logger.info("the tiled VAE encoded the reference to %s, not %s: encoding it without tiling",
                    tuple(clean.shape[1:]), tuple(latents.shape[1:]))
        vae.use_tiling = False
        try:
            clean = adapter.encode_video(pipe, video).to(latents.dtype)
        finally:
            vae.use_tiling = True
    if clean.shape[1:] != latents.shape[1:]:
        raise VwarperError(_mismatch(vae, video, clean, latents))
    return clean


def _latent_channels(vae: Any) -> int | None:
    config = getattr(vae, "config", None)
    value = getattr(config, "latent_channels", None) or getattr(config, "z_dim", None)
    return int(value) if isinstance(value, int) else None


def _mismatch(vae: Any, video: torch.Tensor, clean: torch.Tensor, latents: torch.Tensor) -> str:
    """Why the generation's latents and the reference latent differ: latents passed to the pipeline with
    another channel count than the VAE's, else a size the VAE does not round-trip (or latents of another size)."""
    want, got = (1, *clean.shape[1:]), (1, *latents.shape[1:])  # inject makes one video per call
    differ = [i for i, (a, b) in enumerate(zip(clean.shape[1:], latents.shape[1:], strict=False)) if a != b]
    channel = clean.ndim == latents.ndim and len(differ) == 1 and differ[0] < clean.ndim - 3  # not height, width
    if channel and clean.shape[1 + differ[0]] == _latent_channels(vae):
        return (
            f"Expected the pipeline's latents argument to have shape {want} ({want[1 + differ[0]]} latent "
            f"channels, as {type(vae).__name__} encodes), but got latents of shape {got}. Do pass "
            f"latents of shape {want}, or leave latents out."
        )
    return (
        f"Expected the reference latent to have the generation's shape {tuple(latents.shape[1:])}, but the "
        f"VAE ({type(vae).__name__}) encoded {tuple(video.shape)} pixels to {tuple(clean.shape[1:])}. Do "
        f"generate at a size and frame count the model supports (vwarper inspect), pass the pipeline's latents "
        f"argument with shape {want} or none, or check the adapter's encode_video."
    )
