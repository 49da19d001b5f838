"""The reference video's VAE latent, the size of the generation's latents.

A tiled VAE encode (``pipe.vae.enable_tiling()``) with small tiles can return a latent of another size
than the pipeline's own latents (tiles overlap, and the last one rounds). The reference is then encoded
once more with tiling switched off for that one call (the user's setting is restored after), and when
the sizes still differ the error says what to change.
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
        raise VwarperError(
            f"Expected the reference latent to have the generation's shape {tuple(latents.shape[1:])}, but the "
            f"VAE ({type(vae).__name__}) encoded {tuple(video.shape)} pixels to {tuple(clean.shape[1:])}. Do "
            "generate at a size and frame count the model supports (vwarper inspect), or check the adapter's "
            "encode_video."
        )
    return clean
