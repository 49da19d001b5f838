"""A CogVideoX-5B-shaped pipeline with random weights (nothing downloaded), for GPU measurements.

The transformer has the 5B's exact config (42 layers, 48 heads x 64, 3D RoPE, text width 4096)
and the VAE the released architecture. The text encoder has T5-XXL's width (4096) but only
`t5_layers` layers unless `full_t5=True` (24 layers, 4.7B parameters, as released): in
generation its cost is identical with and without V-Warper, in coarse training it runs every
step (the token row is learned), so the training estimate uses the full one.
"""

from __future__ import annotations

from typing import Any

import torch


def full_shape_cogvideox_pipeline(
    device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, full_t5: bool = False, t5_layers: int = 2
) -> Any:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vwarper_hooks.testing import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    with torch.device(device):
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=48,
            attention_head_dim=64,
            in_channels=16,
            out_channels=16,
            num_layers=42,
            use_rotary_positional_embeddings=True,
            text_embed_dim=4096,
        ).to(dtype)
        vae = AutoencoderKLCogVideoX().to(dtype)
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24 if full_t5 else t5_layers,
                num_heads=64,
                feed_forward_proj="gated-gelu",
            )
        ).to(dtype)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe
