"""Tiny Wan: UMT5 text encoder, `AutoencoderKLWan`, `UniPCMultistepScheduler` with flow sigmas (Wan's own
default), separate CFG passes (conditional first). SkyReels-V2 is the same architecture: ``family="SkyReelsV2"``
builds its classes with the same sizes (`tiny.skyreels_v2`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_text import TEXT_DIM, tie_query_key, tiny_text_encoder, tiny_tokenizer


def tiny_wan_transformer(num_layers: int = 6, seed: int = 0, family: str = "Wan", **overrides: Any) -> Any:
    """`<family>Transformer3DModel`: 2 heads x 16 dims, `num_layers` blocks (self-attention + cross-attention)."""
    import diffusers

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
    return getattr(diffusers, f"{family}Transformer3DModel")(**config).eval()


def tiny_wan_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False, family: str = "Wan",
                      flow_shift: float = 3.0) -> Any:
    """A complete offline Wan (or `family`) text-to-video pipeline with random weights, in eval mode, on CPU."""
    import diffusers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

    tokenizer = tiny_tokenizer()
    transformer = tiny_wan_transformer(num_layers, seed=seed, family=family)
    if tie_qk:
        tie_query_key(transformer)
    torch.manual_seed(seed)
    encoder = tiny_text_encoder(len(tokenizer), seed=seed, umt5=True)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)
    pipe = getattr(diffusers, f"{family}Pipeline")(tokenizer=tokenizer, text_encoder=encoder, vae=vae,
                                                   scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


pipeline = tiny_wan_pipeline
