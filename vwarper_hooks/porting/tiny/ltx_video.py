"""Tiny LTX-Video: 6 blocks of 2 heads x 16 dims (patch size 1, as released), the word-list T5 tokenizer and a
tiny T5 encoder, an `AutoencoderKLLTXVideo` compressing 16x in space and 4x in time (the release: 32x, 8x) so
that the shared tiny size gives the shared 2 x 2 x 2 token grid, `FlowMatchEulerDiscreteScheduler` with
the pipeline's resolution-dependent shift, CFG as one batch of 2 (unconditional first), as `LTXPipeline`
runs it."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_text import TEXT_DIM, tie_query_key, tiny_text_encoder, tiny_tokenizer

#: one latent pixel is one token (patch size 1): 16 channels (the release: 128) keep tokens of different
#: content apart, as the other families' 2 x 2 patches of 4 channels do
LATENT_CHANNELS = 16


def tiny_ltx_video_transformer(num_layers: int = 6, seed: int = 0, **overrides: Any) -> Any:
    """`LTXVideoTransformer3DModel`: 2 heads x 16 dims, `num_layers` blocks (self-attention + cross-attention)."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=num_layers,
        caption_channels=TEXT_DIM,
    )
    config.update(overrides)
    return LTXVideoTransformer3DModel(**config).eval()


def tiny_ltx_video_vae(seed: int = 0) -> Any:
    """`AutoencoderKLLTXVideo` with 16 latent channels: 16x spatial (patch 4, two scalings), 4x temporal."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    scaling = (True, True, False, False)
    return AutoencoderKLLTXVideo(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
        layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5, spatio_temporal_scaling=scaling,
        decoder_spatio_temporal_scaling=scaling, decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4, patch_size=4, patch_size_t=1,
    ).eval()


def tiny_ltx_video_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False) -> Any:
    """A complete offline LTX-Video text-to-video pipeline with random weights, in eval mode, on CPU."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    tokenizer = tiny_tokenizer()
    transformer = tiny_ltx_video_transformer(num_layers, seed=seed)
    if tie_qk:
        tie_query_key(transformer)
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=tiny_ltx_video_vae(seed=seed),
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


pipeline = tiny_ltx_video_pipeline
