"""The learned world model's parts, all stock diffusers / transformers classes but one VAE stand-in.

- `PixelShuffleVAE`: an exact, weight-free stand-in for a video VAE. Encode keeps every 4th frame
  (frames 0, 4, 8, ...: 4x temporal compression, as CogVideoX's VAE) and space-to-depths 2x2 pixels
  into 12 channels; decode does the inverse and fills the frames in between by linear interpolation.
  It has the `encode`/`decode` interface and the config fields `CogVideoXPipeline` reads.
- a word-list T5 tokenizer for the world's grammar and a frozen random tiny T5 encoder (32 dims);
- `CogVideoXTransformer3DModel` with 3D RoPE, trained (`vwarper_hooks.world.train`);
- `CogVideoXDDIMScheduler` with CogVideoX-5B's settings (v-prediction, zero terminal SNR, trailing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from ..porting.tiny_text import tiny_text_encoder, tiny_tokenizer
from .scene import PIX, TOKEN, WORDS

__all__ = ["ModelMixin", "ConfigMixin", "PixelShuffleVAE", "build_pipeline", "transformer_config", "TEXT_LEN"]

TEXT_LEN = 24  # text tokens (max_text_seq_length): the grammar's longest caption fits
SPACE_TO_DEPTH = 2


@dataclass
class ExactLatents:
    """A `latent_dist` with no noise: `mode()` and `sample()` both give the latents."""

    latents: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.latents

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latents

    @property
    def mean(self) -> torch.Tensor:
        return self.latents


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """Exact pixel (un)shuffle "VAE": (B, 3, 4k+1, H, W) in [-1, 1] <-> (B, 12, k+1, H/2, W/2)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 3 * SPACE_TO_DEPTH**2,
        block_out_channels: tuple[int, ...] = (12, 12),  # read by the pipeline: spatial factor 2 ** (len - 1)
        temporal_compression_ratio: int = 4,
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
        invert_scale_latents: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("identity", torch.ones(1))  # so that the weights file is not empty; unused
        self.use_tiling = False
        self.use_slicing = False

    @property
    def factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def enable_tiling(self, *args: Any, **kwargs: Any) -> None:
        self.use_tiling = True  # exact per pixel block: tiling changes nothing

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[ExactLatents]:
        r = self.config.temporal_compression_ratio
        kept = x[:, :, ::r]  # (B, 3, L, H, W), L = (F - 1) // r + 1
        b, c, frames, h, w = kept.shape
        flat = kept.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
        z = F.pixel_unshuffle(flat, self.factor)  # (B*L, 12, H/2, W/2)
        z = z.reshape(b, frames, *z.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, 12, L, H/2, W/2)
        dist = ExactLatents(z)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs: Any) -> DecoderOutput | tuple[torch.Tensor]:
        b, c, frames, h, w = z.shape
        flat = z.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
        x = F.pixel_shuffle(flat, self.factor)
        x = x.reshape(b, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, 3, L, H, W)
        r = self.config.temporal_compression_ratio
        if frames > 1:  # linear in time between kept frames: (B, 3, r(L-1)+1, H, W)
            steps = torch.arange(r * (frames - 1) + 1, device=z.device, dtype=z.dtype) / r
            lo = steps.floor().long().clamp(max=frames - 2)
            weight = (steps - lo).view(1, 1, -1, 1, 1)
            x = x[:, :, lo] * (1 - weight) + x[:, :, lo + 1] * weight
        return DecoderOutput(sample=x) if return_dict else (x,)


def transformer_config(layers: int = 12, heads: int = 2, head_dim: int = 32, time_dim: int = 64) -> dict[str, Any]:
    """The transformer's config: patch 2 on 16x16 latents -> 8x8 tokens per frame, 3D RoPE."""
    latent = PIX // SPACE_TO_DEPTH
    return dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=3 * SPACE_TO_DEPTH**2,
        out_channels=3 * SPACE_TO_DEPTH**2,
        time_embed_dim=time_dim,
        text_embed_dim=32,
        num_layers=layers,
        sample_width=latent,
        sample_height=latent,
        sample_frames=9,
        patch_size=TOKEN // SPACE_TO_DEPTH,
        temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=True,
    )


def scheduler() -> CogVideoXDDIMScheduler:
    """CogVideoX-5B's scheduler config."""
    return CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        snr_shift_scale=1.0,
    )


def build_pipeline(transformer: CogVideoXTransformer3DModel | None = None, seed: int = 0, **config: Any) -> Any:
    """A `CogVideoXPipeline` of the world's parts (a fresh random transformer unless one is given)."""
    tokenizer = tiny_tokenizer(WORDS)
    if transformer is None:
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**transformer_config(**config))
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed).requires_grad_(False),
        vae=PixelShuffleVAE(),
        transformer=transformer.eval(),
        scheduler=scheduler(),
    )
    return pipe


@torch.no_grad()
def encode_captions(pipe: Any, captions: list[str]) -> torch.Tensor:
    """(B, TEXT_LEN, 32) T5 embeddings exactly as the pipeline computes them (padded, no attention mask)."""
    ids = pipe.tokenizer(captions, padding="max_length", max_length=TEXT_LEN, truncation=True,
                         add_special_tokens=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


def to_latents(video: torch.Tensor) -> torch.Tensor:
    """(B, F, PIX, PIX, 3) in [0, 1] at latent times -> (B, F, 12, 16, 16) in [-1, 1] (the transformer layout)."""
    b, frames = video.shape[:2]
    x = video.permute(0, 1, 4, 2, 3).reshape(b * frames, 3, PIX, PIX) * 2 - 1
    z = F.pixel_unshuffle(x, SPACE_TO_DEPTH)
    return z.reshape(b, frames, *z.shape[1:])
