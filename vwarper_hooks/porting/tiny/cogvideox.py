"""Tiny CogVideoX: 42 transformer layers (so the paper's layer indices 12 and 20-29 exist), 2 heads x
16 dims, the word-list T5 tokenizer, a tiny T5 encoder, a tiny VAE and `CogVideoXDDIMScheduler` with
v-prediction."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_text import tie_query_key, tiny_text_encoder, tiny_tokenizer
from . import TINY_FRAMES, TINY_HEIGHT, TINY_TEXT_LEN, TINY_WIDTH


def tiny_cogvideox_transformer(num_layers: int = 42, seed: int = 0, rope: bool = True, **overrides: Any) -> Any:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=32,
        num_layers=num_layers,
        sample_width=TINY_WIDTH // 8,
        sample_height=TINY_HEIGHT // 8,
        sample_frames=TINY_FRAMES,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TINY_TEXT_LEN,
        use_rotary_positional_embeddings=rope,
    )
    config.update(overrides)
    return CogVideoXTransformer3DModel(**config).eval()


def tiny_cogvideox_vae(seed: int = 0) -> Any:
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()


def tiny_cogvideox_pipeline(num_layers: int = 42, seed: int = 0, rope: bool = True, tie_qk: bool = False) -> Any:
    """A complete offline `CogVideoXPipeline` with random weights, in eval mode, on CPU."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    tokenizer = tiny_tokenizer()
    transformer = tiny_cogvideox_transformer(num_layers=num_layers, seed=seed, rope=rope)
    if tie_qk:
        tie_query_key(transformer)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed),
        vae=tiny_cogvideox_vae(seed=seed),
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


pipeline = tiny_cogvideox_pipeline
