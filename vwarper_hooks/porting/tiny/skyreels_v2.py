"""Tiny SkyReels-V2: Wan's tiny sizes (2 heads x 16 dims, 6 blocks), UMT5 text encoder, `AutoencoderKLWan`,
`UniPCMultistepScheduler` with flow sigmas and SkyReels-V2's shift of 8, separate CFG passes (conditional
first), as `SkyReelsV2Pipeline` runs them."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_text import TEXT_DIM, tie_query_key, tiny_text_encoder, tiny_tokenizer


def tiny_skyreels_v2_transformer(num_layers: int = 6, seed: int = 0, **overrides: Any) -> Any:
    """`SkyReelsV2Transformer3DModel`: 2 heads x 16 dims, `num_layers` blocks (self-attention + cross-attention)."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=num_layers,
        rope_max_seq_len=32,
    )
    config.update(overrides)
    return SkyReelsV2Transformer3DModel(**config).eval()


def tiny_skyreels_v2_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False) -> Any:
    """A complete offline SkyReels-V2 text-to-video pipeline with random weights, in eval mode, on CPU."""
    from diffusers import AutoencoderKLWan, SkyReelsV2Pipeline, UniPCMultistepScheduler

    tokenizer = tiny_tokenizer()
    transformer = tiny_skyreels_v2_transformer(num_layers, seed=seed)
    if tie_qk:
        tie_query_key(transformer)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    pipe = SkyReelsV2Pipeline(tokenizer=tokenizer, text_encoder=tiny_text_encoder(len(tokenizer), seed=seed, umt5=True),
                              transformer=transformer, vae=vae.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


pipeline = tiny_skyreels_v2_pipeline
