"""Which frame counts and sizes a video pipeline turns into exactly that video, read from the
pipeline itself (its VAE and transformer), never from a table of model families.

- Size: one video token covers ``vae_scale_factor_spatial x patch size`` pixels, so height and
  width must be multiples of that.
- Frames: the pipelines make ``(frames - 1) // t + 1`` latent frames (``t`` the VAE's temporal
  compression) and a causal VAE decodes ``L`` latent frames into ``(L - 1) * t + 1`` frames, so
  frames must be ``t k + 1``. A VAE that decodes its latents in batches of ``B`` frames
  (``num_latent_frames_batch_size``; the first batch also takes the remainder) keeps that count
  only when ``L`` is 1 + a multiple of ``B``: then frames must be ``t B k + 1``. CogVideoX
  (t 4, B 2) thus needs 8k+1 (5 frames decode to 8, 13 to 16), Wan and HunyuanVideo 4k+1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VideoUnits:
    """The steps of sizes and frame counts a pipeline reproduces exactly."""

    spatial: int  # pixels per latent cell (VAE spatial compression)
    temporal: int  # video frames per latent frame (VAE temporal compression)
    patch: tuple[int, int]  # latent cells per token, (height, width)
    decode_batch: int = 1  # latent frames the VAE decodes together (1: no batching)

    @property
    def pixels_per_token(self) -> tuple[int, int]:
        """(height, width) in pixels of one video token: sizes must be multiples of these."""
        return self.spatial * self.patch[0], self.spatial * self.patch[1]

    @property
    def frame_step(self) -> int:
        """Valid frame counts are ``1 + frame_step * k``."""
        return self.temporal * max(self.decode_batch, 1)

    def frames_ok(self, frames: int) -> bool:
        return frames >= 1 and (frames - 1) % self.frame_step == 0

    def nearest_frames(self, frames: int) -> list[int]:
        """The valid frame counts next to `frames` (one or two, ascending)."""
        below = max(1, (frames - 1) // self.frame_step * self.frame_step + 1)
        above = below + self.frame_step
        return [below] if below == frames else sorted({below, above})

    def size_ok(self, height: int, width: int) -> bool:
        unit_h, unit_w = self.pixels_per_token
        return height > 0 and width > 0 and height % unit_h == 0 and width % unit_w == 0

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of video tokens at this size: the smallest photo worth using."""
        unit_h, unit_w = self.pixels_per_token
        return max(1, height // unit_h), max(1, width // unit_w)

    def frame_rule(self) -> str:
        return f"{self.frame_step}k+1 (1, {1 + self.frame_step}, {1 + 2 * self.frame_step}, ...)"


def _patch(config: Any) -> tuple[int, int]:
    patch = getattr(config, "patch_size", None)
    if patch is None and isinstance(config, dict):
        patch = config.get("patch_size")
    if isinstance(patch, list | tuple):
        return (int(patch[-2]), int(patch[-1])) if len(patch) >= 2 else (int(patch[0]), int(patch[0]))
    return (int(patch), int(patch)) if patch else (1, 1)


def video_units(pipe: Any) -> VideoUnits:
    """The `VideoUnits` of a loaded pipeline (or of anything with the same attributes).

    Reads ``vae_scale_factor_spatial`` / ``vae_scale_factor_temporal`` (set by every diffusers
    video pipeline), the transformer's ``patch_size`` (an int, or ``(t, h, w)``) and the VAE's
    ``num_latent_frames_batch_size`` when it decodes in batches.
    """
    vae = getattr(pipe, "vae", None)
    batch = getattr(vae, "num_latent_frames_batch_size", 1) if vae is not None else 1
    return VideoUnits(
        spatial=int(getattr(pipe, "vae_scale_factor_spatial", 8)),
        temporal=int(getattr(pipe, "vae_scale_factor_temporal", 1)),
        patch=_patch(pipe.transformer.config),
        decode_batch=int(batch or 1),
    )
