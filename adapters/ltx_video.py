"""LTX-Video adapter (`LTXVideoTransformer3DModel`, Lightricks/LTX-Video 0.9.x, text-to-video with `LTXPipeline`).

Flat layer index i is ``transformer.transformer_blocks[i].attn1``: the self-attention over video tokens
only (ordered frame, row, column), with 3D RoPE. Text enters through the cross-attention ``attn2``
(queries: video, keys/values: T5 text, the padding masked by an additive bias); its RoPE-free video
queries and text keys go to `LayerRouter.observe_text_attention`, with the real text tokens, when the
core asks (the foreground mask's video->text scores). QK-norm is an RMS norm across all heads; RoPE-free
Q/K are taken after it, before rotary (which LTX applies over all heads before the head split: the same
arithmetic per head, since a head holds whole rotation pairs).

What is its own: the transformer takes packed tokens (B, F*H*W, C) plus the grid (``num_frames``,
``height``, ``width``) and returns packed tokens. The latents the core sees are the VAE's channel-first
(B, C, F, H, W); `with_latents` packs them into a forward call, `latents` and `model_output` unpack (patch
size 1, as every release; other patch sizes are refused). Latents are normalised as the pipeline does,
``(x - mean) * scaling_factor / std`` with the VAE's own mean/std buffers. CFG runs as one batch of 2.

Default layers: the paper's 12 and 20-29 of 42 scaled to the depth (`proportional_layers`: 28 layers, 2B:
match 8, warp 13-19). NOT validated on real weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vwarper_hooks.contract import hookimpl
from vwarper_hooks.contract.adapter import Adapter, LayerDefaults, call_default, proportional_layers
from vwarper_hooks.contract.processors import heads, merge_heads
from vwarper_hooks.contract.separate_text import TextObserverProcessor, VideoSelfAttentionProcessor

logger = logging.getLogger(__name__)

STOCK_PROCESSOR = "LTXVideoAttnProcessor"


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) latents -> (B, F*H*W, C) tokens ordered (frame, row, column), patch size 1."""
    return latents.flatten(2).transpose(1, 2)


def unpack(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, F*H*W, C) tokens -> (B, C, F, H, W) latents of the token `grid` (F, H, W)."""
    return tokens.transpose(1, 2).unflatten(2, grid)


def _rope(image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None, n_heads: int) -> Callable | None:
    """A rotated copy of (B, H, N, D) queries/keys with the stock arithmetic (rotation pairs are adjacent
    channels: the (B, N, H*D) rotation LTX does before the head split, head by head)."""
    if image_rotary_emb is None:
        return None
    cos, sin = (f.unflatten(2, (n_heads, -1)).transpose(1, 2) for f in image_rotary_emb)  # (B, H, N, D)

    def rope(x: torch.Tensor) -> torch.Tensor:
        real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, N, D/2) each
        turned = torch.stack([-imag, real], dim=-1).flatten(-2)  # (B, H, N, D)
        return (x.float() * cos + turned.float() * sin).to(x.dtype)

    return rope


class VwarperLTXSelfAttnProcessor(VideoSelfAttentionProcessor):
    """Stock LTX-Video self-attention (``attn1``) with the core's router in the middle."""

    def routed(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self.attend_video(attn, hidden_states, _rope(image_rotary_emb, attn.heads), attention_mask)


class VwarperLTXCrossAttnProcessor(TextObserverProcessor):
    """Stock LTX-Video text cross-attention (``attn2``); shows the core video queries and text keys."""

    def routed(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        batch, n_text = encoder_hidden_states.shape[:2]
        valid = None
        if attention_mask is not None:  # (B, 1, T) additive bias: 0 for real text tokens, -10000 for padding
            valid = attention_mask.reshape(batch, n_text) == 0  # (B, T)
            attention_mask = attn.prepare_attention_mask(attention_mask, n_text, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        q = heads(attn, hidden_states, "to_q", "norm_q", "across_heads").transpose(1, 2)  # (B, H, N, D)
        k = heads(attn, encoder_hidden_states, "to_k", "norm_k", "across_heads").transpose(1, 2)  # (B, H, T, D)
        v = heads(attn, encoder_hidden_states, "to_v", None, "across_heads").transpose(1, 2)
        self.router.observe_text_attention(self.layer, q, k, valid)
        out = merge_heads(self.attend(attention_mask)(q, k, v)).to(q.dtype)  # (B, N, H*D), computed once
        return attn.to_out[1](attn.to_out[0](out))


class LTXVideoAdapter(Adapter):
    """Adapter for `LTXVideoTransformer3DModel` (text-to-video; image- and condition-to-video are refused)."""

    name = "ltx_video"
    processor = VwarperLTXSelfAttnProcessor
    stock_processor = STOCK_PROCESSOR
    text_attention_outside = True

    def matches(self, transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "LTXVideoTransformer3DModel"

    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def text_attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        """The cross-attention of each layer (same flat index)."""
        return [block.attn2 for block in transformer.transformer_blocks]

    def processor_groups(self, transformer: nn.Module) -> list[tuple[list[nn.Module], type]]:
        """The self-attentions (routed) and the cross-attentions (observed for video->text scores)."""
        return [
            (self.attention_layers(transformer), VwarperLTXSelfAttnProcessor),
            (self.text_attention_layers(transformer), VwarperLTXCrossAttnProcessor),
        ]

    def default_layers(self, depth: int) -> LayerDefaults:
        """The paper's layers scaled to the depth; not validated on real LTX-Video weights."""
        return proportional_layers(depth)

    def problems(self, transformer: nn.Module) -> list[str]:
        config = transformer.config
        if (config.patch_size, config.patch_size_t) != (1, 1):
            return [f"Expected an LTX-Video transformer with patch size 1 (every release), but got patch_size="
                    f"{config.patch_size}, patch_size_t={config.patch_size_t}. Use a released LTX-Video checkpoint."]
        return super().problems(transformer)

    def pipeline_problems(self, pipe: Any) -> list[str]:
        """Image- and condition-to-video pipelines (conditioning frames, per-token timesteps) are refused."""
        kind = type(pipe).__name__
        if "ImageToVideo" in kind or "Condition" in kind:
            return [f"Expected the text-to-video LTXPipeline, but got {kind}, whose conditioning frames the "
                    "reference branch does not build. Use LTXPipeline."]
        return []

    # ------------------------------------------------------------------ packed tokens <-> (B, C, F, H, W)
    def latents(self, kwargs: dict[str, Any]) -> torch.Tensor:
        """The packed ``hidden_states`` as (B, C, F, H, W) latents (the grid from ``num_frames/height/width``)."""
        return unpack(kwargs["hidden_states"], (kwargs["num_frames"], kwargs["height"], kwargs["width"]))

    def with_latents(self, kwargs: dict[str, Any], latents: torch.Tensor) -> dict[str, Any]:
        """(B, C, F, H, W) latents packed into ``hidden_states``, with their grid."""
        frames, height, width = latents.shape[2:]
        return {**kwargs, "hidden_states": pack(latents), "num_frames": frames, "height": height, "width": width}

    def model_output(self, output: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The packed prediction as (B, C, F, H, W)."""
        return unpack(output, (kwargs["num_frames"], kwargs["height"], kwargs["width"]))

    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        return tuple(latents.shape[2:])  # patch size 1: one token per latent pixel

    # ------------------------------------------------------------------ the pipeline around it
    def encode_text(self, pipe: Any, prompt: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T5 embeddings and their mask, padded to the generation's text length."""
        generation = kwargs["encoder_hidden_states"]
        embeds, mask, _, _ = pipe.encode_prompt(
            prompt, do_classifier_free_guidance=False, num_videos_per_prompt=1,
            max_sequence_length=generation.shape[1], device=generation.device, dtype=generation.dtype,
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def forward_kwargs(
        self, pipe: Any, latents: torch.Tensor, timestep: torch.Tensor, text: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Adds the RoPE interpolation scale the pipeline passes (VAE compression over the frame rate)."""
        kwargs = super().forward_kwargs(pipe, latents, timestep, text)
        rate = call_default(pipe, "frame_rate") or 25
        spatial = pipe.vae_spatial_compression_ratio
        kwargs["rope_interpolation_scale"] = (pipe.vae_temporal_compression_ratio / rate, spatial, spatial)
        return kwargs

    def encode_video(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) latents normalised as the pipeline does, with the VAE's mean/std buffers."""
        vae = pipe.vae
        latents = vae.encode(video.to(vae.device, vae.dtype)).latent_dist.mode()  # (B, C, F, H, W)
        shape = (1, latents.shape[1], 1, 1, 1)
        mean, std = (b.view(shape).to(latents.device, latents.dtype) for b in (vae.latents_mean, vae.latents_std))
        return ((latents - mean) * vae.config.scaling_factor / std).to(pipe.transformer.dtype)

    def video_shape(self, pipe: Any, latents: torch.Tensor) -> tuple[int, int, int]:
        frames = (latents.shape[2] - 1) * pipe.vae_temporal_compression_ratio + 1
        spatial = pipe.vae_spatial_compression_ratio
        return frames, latents.shape[3] * spatial, latents.shape[4] * spatial

    def size_multiple(self, pipe: Any) -> int:
        """The VAE's spatial compression (patch size 1)."""
        return int(pipe.vae_spatial_compression_ratio)


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(LTXVideoAdapter())
